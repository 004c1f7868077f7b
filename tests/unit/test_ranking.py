"""Per-site demand and rankings: values relative to an epoch, re-basing,
local and remote parts, and ranks that follow events and eligibility."""

from __future__ import annotations

import math
import random

import pytest

from warmer.ranking import Rankings
from warmer.state.store import REBASE_AFTER

HOUR = 3600.0
T0 = 1_764_000_000.0


def test_ranks_follow_value_then_image_id() -> None:
    r = Rankings(("*",), HOUR)
    for image_id in ("b", "a", "c"):
        r.set_eligible(image_id, True)
    r.add("b", 1.0, T0)
    r.add("a", 1.0, T0)
    r.add("c", 2.0, T0)
    assert [i for i, _ in r.ranked("*")] == ["c", "a", "b"]
    assert [r.position(i, "*") for i in ("c", "a", "b")] == [0, 1, 2]
    r.add("b", 2.0, T0 - HOUR)  # a late event, worth 1 at T0: b ties c, and wins by id
    assert [i for i, _ in r.ranked("*")] == ["b", "c", "a"]


def test_only_eligible_images_with_demand_are_ranked() -> None:
    r = Rankings(("*",), HOUR)
    r.add("a", 1.0, T0)
    r.set_eligible("b", True)  # eligible, no demand
    assert r.position("a", "*") is None and r.position("b", "*") is None
    r.set_eligible("a", True)
    assert r.position("a", "*") == 0
    r.set_eligible("a", False)
    assert list(r.ranked("*")) == []
    assert r.score("a", "*", T0) == pytest.approx(1.0)  # demand is kept meanwhile


def test_sites_count_only_what_happened_there() -> None:
    r = Rankings(("central", "edge"), HOUR)
    r.set_eligible("img", True)
    r.add("img", 1.0, T0, sites=["central"])
    r.add("img", 2.0, T0, sites=["edge", "elsewhere", "edge"])  # unknown and repeated sites
    r.add("img", 4.0, T0)  # every site
    assert r.score("img", "central", T0) == pytest.approx(5.0)
    assert r.score("img", "edge", T0) == pytest.approx(6.0)
    assert r.warm(T0, 5.5) == {"img"} and r.warm(T0, 6.5) == set()


def test_remote_demand_adds_to_local_and_replaces_itself() -> None:
    r = Rankings(("*",), HOUR)
    r.set_eligible("img", True)
    r.add("img", 1.0, T0)
    # Another daemon's value relative to its own epoch, an hour earlier:
    # 4 then is worth 2 at T0.
    r.set_remote("*", "img", 4.0, T0 - HOUR)
    assert r.score("img", "*", T0) == pytest.approx(3.0)
    r.set_remote("*", "img", 1.0, T0)
    assert r.score("img", "*", T0) == pytest.approx(2.0)
    r.set_remote("*", "img", 0.0, T0)
    assert r.score("img", "*", T0) == pytest.approx(1.0)
    assert [i for i, _ in r.ranked("*")] == ["img"]


def test_remote_demand_alone_ranks_an_image() -> None:
    r = Rankings(("*",), HOUR)
    r.set_eligible("img", True)
    r.set_remote("*", "img", 3.0, T0)
    assert r.position("img", "*") == 0
    r.set_remote("*", "img", 0.0, T0)
    assert r.position("img", "*") is None


def test_an_event_far_ahead_rebases_and_keeps_every_score() -> None:
    r = Rankings(("*",), HOUR)
    images = [f"i{n}" for n in range(50)]
    rng = random.Random(7)
    for image_id in images:
        r.set_eligible(image_id, True)
        r.add(image_id, rng.uniform(0.1, 5.0), T0 + rng.uniform(0, 10 * HOUR))
    later = T0 + (REBASE_AFTER + 20) * HOUR
    before = {i: r.score(i, "*", later) for i in images}
    order = [i for i, _ in r.ranked("*")]
    first_epoch = r.epoch
    r.add("new", 1.0, later)
    assert r.epoch is not None and first_epoch is not None and r.epoch > first_epoch
    for image_id in images:
        assert math.isclose(r.score(image_id, "*", later), before[image_id], rel_tol=1e-9)
    assert [i for i, _ in r.ranked("*")] == order  # ranked again, same order
    assert r.score("new", "*", later) == pytest.approx(1.0)


def test_values_stay_finite_across_many_rebases() -> None:
    r = Rankings(("*",), HOUR)
    r.set_eligible("img", True)
    for step in range(20):
        r.add("img", 1.0, T0 + step * REBASE_AFTER * 2 * HOUR)
    now = T0 + 19 * REBASE_AFTER * 2 * HOUR
    assert r.score("img", "*", now) == pytest.approx(1.0)
    assert r.position("img", "*") == 0


def test_a_new_half_life_keeps_scores_at_that_instant() -> None:
    r = Rankings(("*",), HOUR)
    r.set_eligible("img", True)
    r.add("img", 4.0, T0)
    r.set_half_life(2 * HOUR, T0 + HOUR)
    assert r.score("img", "*", T0 + HOUR) == pytest.approx(2.0)
    assert r.score("img", "*", T0 + 3 * HOUR) == pytest.approx(1.0)


def test_best_is_the_threshold_or_top_k_prefix() -> None:
    r = Rankings(("*",), HOUR)
    for n, weight in enumerate((8.0, 4.0, 2.0, 1.0)):
        r.set_eligible(f"i{n}", True)
        r.add(f"i{n}", weight, T0)
    assert r.best("*", T0, threshold=3.0, top_k=0) == ["i0", "i1"]
    assert r.best("*", T0, threshold=3.0, top_k=3) == ["i0", "i1", "i2"]
    assert r.best("*", T0 + HOUR, threshold=3.0, top_k=0) == ["i0"]
    assert r.best("*", T0, threshold=0.0, top_k=0) == ["i0", "i1", "i2", "i3"]


def test_forget_drops_local_and_remote_everywhere() -> None:
    r = Rankings(("a", "b"), HOUR)
    r.set_eligible("img", True)
    r.add("img", 1.0, T0)
    r.set_remote("b", "img", 1.0, T0)
    r.forget("img")
    assert r.warm(T0, 0.0) == set()
    assert list(r.ranked("a")) == list(r.ranked("b")) == []
    assert r.scores("a", T0) == r.scores("b", T0) == {}


def test_sites_must_be_distinct_and_present() -> None:
    with pytest.raises(ValueError):
        Rankings((), HOUR)
    with pytest.raises(ValueError):
        Rankings(("a", "a"), HOUR)
