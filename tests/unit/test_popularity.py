"""The popularity model: decay, order independence, ranking and policy.

Demand is kept by :class:`~warmer.ranking.Rankings` (one site here);
:func:`~warmer.popularity.decide` is the rule over all images at once."""

from __future__ import annotations

import math

import pytest
from hypothesis import given
from hypothesis import strategies as st

from warmer.events import ImageInfo
from warmer.popularity import DedupWindow, Policy, decide
from warmer.ranking import Rankings

HOUR = 3600.0


class Scores:
    """One site's demand, read the way the tests need it."""

    def __init__(self, half_life: float) -> None:
        self.rankings = Rankings(("*",), half_life)

    def add(self, image_id: str, weight: float, at: float) -> None:
        self.rankings.add(image_id, weight, at)

    def score(self, image_id: str, now: float) -> float:
        return self.rankings.score(image_id, "*", now)

    def all(self, now: float) -> dict[str, float]:
        return self.rankings.scores("*", now)


def raw(image_id: str, **over: object) -> ImageInfo:
    fields: dict[str, object] = {"id": image_id, "status": "active", "disk_format": "raw",
                                 "size": 1 << 30, "visibility": "public"}
    fields.update(over)
    return ImageInfo(**fields)  # type: ignore[arg-type]


def test_score_halves_every_half_life() -> None:
    s = Scores(HOUR)
    s.add("a", 4.0, at=0.0)
    assert s.score("a", 0.0) == pytest.approx(4.0)
    assert s.score("a", HOUR) == pytest.approx(2.0)
    assert s.score("a", 3 * HOUR) == pytest.approx(0.5)


def test_old_events_count_less_than_new_ones() -> None:
    s = Scores(HOUR)
    s.add("old", 1.0, at=0.0)
    s.add("new", 1.0, at=2 * HOUR)
    assert s.score("new", 2 * HOUR) > s.score("old", 2 * HOUR)


events_strategy = st.lists(
    st.tuples(st.sampled_from(["a", "b", "c"]), st.floats(0.1, 5.0), st.floats(0, 10 * HOUR)),
    min_size=1, max_size=30)


@given(events=events_strategy, seed=st.randoms())
def test_scores_do_not_depend_on_arrival_order(events: list[tuple[str, float, float]],
                                               seed: object) -> None:
    in_order, shuffled = Scores(HOUR), Scores(HOUR)
    for image, weight, at in events:
        in_order.add(image, weight, at)
    mixed = list(events)
    seed.shuffle(mixed)  # type: ignore[attr-defined]
    for image, weight, at in mixed:
        shuffled.add(image, weight, at)
    now = 11 * HOUR
    for image in "abc":
        assert math.isclose(in_order.score(image, now), shuffled.score(image, now),
                            rel_tol=1e-9, abs_tol=1e-12)


@given(events=events_strategy)
def test_score_equals_sum_of_individually_decayed_events(
        events: list[tuple[str, float, float]]) -> None:
    s = Scores(HOUR)
    for image, weight, at in events:
        s.add(image, weight, at)
    now = 11 * HOUR
    for image in "abc":
        expected = sum(w * 2 ** (-(now - t) / HOUR) for i, w, t in events if i == image)
        assert math.isclose(s.score(image, now), expected, rel_tol=1e-9, abs_tol=1e-12)


@given(scores=st.dictionaries(st.sampled_from([f"i{n}" for n in range(12)]),
                              st.floats(0.0, 100.0), min_size=1), k=st.integers(0, 12))
def test_top_k_wants_exactly_the_k_best_positive_scores(scores: dict[str, float],
                                                         k: int) -> None:
    s = Scores(HOUR)
    for image_id, value in scores.items():
        s.add(image_id, value, at=0.0)
    images = {i: raw(i) for i in scores}
    verdicts = decide(images, s.all(0.0), Policy(pin_tag="", pin_property=""),
                      threshold=1e9, top_k=k)
    wanted = {i for i, v in verdicts.items() if v.wanted}
    positive = sorted((i for i in scores if scores[i] > 0), key=lambda i: (-scores[i], i))
    assert wanted == set(positive[:k])


def test_threshold_and_pins_make_images_wanted() -> None:
    s = Scores(HOUR)
    s.add("hot", 5.0, 0.0)
    s.add("cold", 1.0, 0.0)
    images = {"hot": raw("hot"), "cold": raw("cold"),
              "pinned-tag": raw("pinned-tag", tags=frozenset({"warmer-pin"})),
              "pinned-prop": raw("pinned-prop", properties={"warmer_pin": "True"}),
              "not-pinned": raw("not-pinned", properties={"warmer_pin": "no"})}
    v = decide(images, s.all(0.0), Policy(), threshold=3.0, top_k=0)
    assert (v["hot"].wanted, v["hot"].reason) == (True, "threshold")
    assert (v["cold"].wanted, v["cold"].reason) == (False, "below_threshold")
    assert (v["pinned-tag"].wanted, v["pinned-tag"].reason) == (True, "pinned")
    assert (v["pinned-prop"].wanted, v["pinned-prop"].reason) == (True, "pinned")
    assert v["not-pinned"].wanted is False


@pytest.mark.parametrize("image,reason", [
    (raw("q", disk_format="qcow2"), "disk_format_not_raw"),
    (raw("s", status="queued"), "not_active"),
    (raw("big", size=10 << 30), "too_large"),
    (raw("nosize", size=None), "too_large"),
    (raw("v", visibility="shared"), "visibility"),
])
def test_policy_refuses_ineligible_images_even_when_pinned_or_hot(image: ImageInfo,
                                                                 reason: str) -> None:
    policy = Policy(max_image_size=2 << 30, visibilities=frozenset({"public"}))
    pinned = ImageInfo(**{**image.__dict__, "tags": frozenset({"warmer-pin"})})
    s = Scores(HOUR)
    s.add(image.id, 100.0, 0.0)
    verdict = decide({image.id: pinned}, s.all(0.0), policy, threshold=1.0,
                     top_k=10)[image.id]
    assert (verdict.wanted, verdict.reason) == (False, reason)


def test_dedup_window_counts_a_key_once_and_forgets_the_oldest() -> None:
    d = DedupWindow(2)
    assert d.first_time("a") and d.first_time("b")
    assert not d.first_time("a")
    assert d.first_time("c")  # evicts b, the least recently seen
    assert d.first_time("b")
