"""The tracker's incremental wanted sets, per site: the same verdicts as the
batch rule (:func:`~warmer.popularity.decide`), scores that match their
definition whatever the order of events, sites kept apart, remote demand,
and forgetting cold images."""

from __future__ import annotations

import datetime as dt
import math
import random
from dataclasses import dataclass, field

import pytest

from warmer.events import (
    Event,
    ImageCacheUsed,
    ImageDeleted,
    ImageInfo,
    ImageSent,
    VolumeCreatedFromImage,
)
from warmer.popularity import Policy, decide
from warmer.ranking import Rankings
from warmer.state.store import REBASE_AFTER
from warmer.tracker import Tracker, Weights

HOUR = 3600.0
T0 = 1_764_000_000.0
SITES = ("central", "edge-1", "edge-2")


def at(hours: float) -> dt.datetime:
    return dt.datetime.fromtimestamp(T0 + hours * HOUR, dt.UTC)


def tracker(sites: tuple[str, ...] = SITES, **over: object) -> Tracker:
    args: dict[str, object] = {"half_life": HOUR, "weights": Weights(), "policy": Policy(),
                               "threshold": 2.0, "top_k": 0, "dedup_window": 100_000,
                               "sites": sites}
    args.update(over)
    return Tracker(**args)  # type: ignore[arg-type]


def raw(image_id: str, **over: object) -> ImageInfo:
    fields: dict[str, object] = {"id": image_id, "status": "active", "disk_format": "raw",
                                 "size": 1 << 30, "visibility": "public"}
    fields.update(over)
    return ImageInfo(**fields)  # type: ignore[arg-type]


def volume(n: int, image_id: str, hours: float) -> VolumeCreatedFromImage:
    return VolumeCreatedFromImage(f"vol-{n}", image_id, "h@b#p", "raw", 1 << 30, at(hours))


# -- a reference for demand: every event kept, summed by definition -------------------


@dataclass
class Reference:
    """What each site's score must be: sum(w * 2**((t - now) / h)), plus the
    remote value, computed from scratch."""

    events: dict[str, list[tuple[float, float, tuple[str, ...]]]] = field(default_factory=dict)
    remote: dict[tuple[str, str], tuple[float, float]] = field(default_factory=dict)

    def score(self, image_id: str, site: str, now: float) -> float:
        terms = [w * 2 ** ((t - now) / HOUR)
                 for w, t, sites in self.events.get(image_id, []) if site in sites]
        value, epoch = self.remote.get((site, image_id), (0.0, now))
        terms.append(value * 2 ** ((epoch - now) / HOUR))
        return math.fsum(terms)

    def forget(self, image_id: str) -> None:
        self.events.pop(image_id, None)
        for key in [k for k in self.remote if k[1] == image_id]:
            del self.remote[key]


POLICIES = (Policy(), Policy(max_image_size=2 << 30), Policy(pin_tag="", pin_property=""))


def random_image(rng: random.Random, image_id: str) -> ImageInfo:
    return raw(image_id,
               status=rng.choice(["active"] * 4 + ["queued", "deactivated"]),
               disk_format=rng.choice(["raw"] * 4 + ["qcow2"]),
               size=rng.choice([1 << 30, 4 << 30]),
               tags=frozenset({"warmer-pin"}) if rng.random() < 0.1 else frozenset())


def run_workload(seed: int, span_hours: int) -> tuple[Tracker, Reference, float]:
    """Random events at whole hours (out of order, some duplicated), with
    eligibility changes, deletions, forgetting and remote demand. Whole
    hours make every epoch and evaluation instant a whole number of
    half-lives apart, so values scale exactly and ties stay ties."""
    rng = random.Random(seed)
    t = tracker()
    ref = Reference()
    images = [f"img-{n:02d}" for n in range(40)]
    newest = 0
    for step in range(800):
        image_id = rng.choice(images)
        hours = rng.randint(0, span_hours)
        roll = rng.random()
        event: Event | None = None
        if roll < 0.55:
            # Demand: sometimes a redelivery of an earlier volume.
            n = rng.randint(0, step) if rng.random() < 0.1 else step
            kind = rng.choice(["volume", "send", "miss"])
            if kind == "volume":
                event = volume(n, image_id, hours)
            elif kind == "send":
                event = ImageSent(image_id, f"msg-{step}", at(hours))
            else:
                event = ImageCacheUsed("miss", image_id, "h@b#p", f"msg-{step}", at(hours))
            sites = None if rng.random() < 0.3 else rng.sample(SITES, rng.randint(1, 2))
            applied = t.apply(event, sites=sites)
            if applied.outcome == "handled":
                weight = {"volume": 1.0, "send": 0.5, "miss": 0.5}[kind]
                counted = SITES if sites is None else tuple(sites)
                ref.events.setdefault(image_id, []).append(
                    (weight, T0 + hours * HOUR, counted))
                newest = max(newest, hours)
        elif roll < 0.80:
            t.observe(random_image(rng, image_id), authoritative=True)
        elif roll < 0.90:
            value, epoch = rng.choice([0.0, 0.5, 1.0, 3.0]), T0 + hours * HOUR
            site = rng.choice(SITES)
            t.set_remote(site, image_id, value, epoch)
            if t.image(image_id) is not None and value > 0:
                ref.remote[(site, image_id)] = (value, epoch)
            else:
                ref.remote.pop((site, image_id), None)
            newest = max(newest, hours)
        elif roll < 0.94:
            t.forget(image_id)
            ref.forget(image_id)
        elif roll < 0.96:
            t.apply(ImageDeleted(image_id, at(hours)))
            ref.forget(image_id)
        elif roll < 0.97:
            t.policy = rng.choice(POLICIES)
        else:
            t.keep(image_id)
    return t, ref, T0 + newest * HOUR


@pytest.mark.parametrize("span_hours", [12, int(3 * REBASE_AFTER)])
@pytest.mark.parametrize("seed", range(12))
def test_incremental_verdicts_equal_the_batch_rule(seed: int, span_hours: int) -> None:
    t, ref, newest = run_workload(seed, span_hours)
    images = {i: info for i in t.image_ids() if (info := t.image(i)) is not None}
    for now in (newest, newest + HOUR, newest + 4 * HOUR):
        for site in SITES:
            scores = {i: t.score(i, now, site) for i in images}
            for image_id, score in scores.items():
                assert math.isclose(score, ref.score(image_id, site, now),
                                    rel_tol=1e-9, abs_tol=1e-300), (image_id, site)
            for threshold, top_k in ((2.0, 0), (1.0, 3), (1e9, 5), (0.0, 0), (0.3, 40)):
                t.threshold, t.top_k = threshold, top_k
                expected = decide(images, scores, t.policy, threshold=threshold, top_k=top_k)
                for image_id in images:
                    assert t.verdict(image_id, now, site) == expected[image_id], (
                        image_id, site, threshold, top_k)
                wanted = {i for i, v in expected.items() if v.wanted}
                chosen = t.wanted(site, now)
                assert sorted(chosen) == sorted(wanted) and len(set(chosen)) == len(chosen)
                assert t.verdicts(now, site) == expected
    # The default site is the first one.
    some = next(iter(images), None)
    if some is not None:
        assert t.verdict(some, newest) == t.verdict(some, newest, SITES[0])


def test_scores_do_not_depend_on_arrival_order_in_any_site() -> None:
    rng = random.Random(3)
    events = [(volume(n, f"img-{rng.randint(0, 9)}", rng.uniform(0, 30)),
               rng.sample(SITES, rng.randint(1, 3))) for n in range(300)]
    first, second = tracker(), tracker()
    for event, sites in events:
        first.apply(event, sites=sites)
    rng.shuffle(events)
    for event, sites in events:
        second.apply(event, sites=sites)
    now = T0 + 31 * HOUR
    for image_id in first.image_ids():
        for site in SITES:
            assert math.isclose(first.score(image_id, now, site),
                                second.score(image_id, now, site), rel_tol=1e-9)


def test_demand_at_one_site_does_not_make_another_want_the_image() -> None:
    t = tracker()
    t.observe(raw("img"), authoritative=True)
    for n in range(5):
        t.apply(volume(n, "img", 0), sites=["central"])
    now = T0
    central, edge = t.verdict("img", now, "central"), t.verdict("img", now, "edge-1")
    assert central is not None and (central.wanted, central.reason) == (True, "threshold")
    assert edge is not None and (edge.wanted, edge.reason, edge.score) == (
        False, "below_threshold", 0.0)
    assert t.wanted("central", now) == ["img"] and t.wanted("edge-1", now) == []


def test_demand_without_sites_counts_everywhere() -> None:
    t = tracker()
    t.observe(raw("img"), authoritative=True)
    t.apply(volume(1, "img", 0))
    assert [t.score("img", T0, site) for site in SITES] == [1.0, 1.0, 1.0]


def test_pinned_eligible_images_are_wanted_in_every_site() -> None:
    t = tracker()
    t.observe(raw("pinned", tags=frozenset({"warmer-pin"})), authoritative=True)
    t.observe(raw("pinned-qcow2", disk_format="qcow2", tags=frozenset({"warmer-pin"})),
              authoritative=True)
    for site in SITES:
        assert t.wanted(site, T0) == ["pinned"]
    verdict = t.verdict("pinned-qcow2", T0)
    assert verdict is not None and verdict.reason == "disk_format_not_raw"


def test_eligibility_changes_move_images_in_and_out_of_the_wanted_set() -> None:
    t = tracker(top_k=1, threshold=100.0)
    t.apply(volume(1, "img", 0), sites=["edge-1"])
    assert t.wanted("edge-1", T0) == []  # known from Cinder only: not eligible yet
    t.observe(raw("img"), authoritative=True)
    assert t.wanted("edge-1", T0) == ["img"]
    t.observe(raw("img", status="deactivated"), authoritative=True)
    assert t.wanted("edge-1", T0) == []
    t.observe(raw("img"), authoritative=True)
    t.policy = Policy(disk_formats=frozenset({"qcow2"}))
    assert t.wanted("edge-1", T0) == []
    t.policy = Policy()
    assert t.wanted("edge-1", T0) == ["img"]
    t.apply(ImageDeleted("img", at(1)))
    assert t.wanted("edge-1", T0) == [] and t.verdict("img", T0) is None


def test_remote_demand_adds_to_local_counts_and_can_be_replaced() -> None:
    t = tracker()
    t.observe(raw("img"), authoritative=True)
    t.apply(volume(1, "img", 0), sites=["edge-1"])
    t.set_remote("edge-1", "img", 4.0, T0 - HOUR)  # worth 2 at T0
    assert t.score("img", T0, "edge-1") == pytest.approx(3.0)
    verdict = t.verdict("img", T0, "edge-1")
    assert verdict is not None and verdict.reason == "threshold"
    t.set_remote("edge-1", "img", 0.5, T0)
    assert t.score("img", T0, "edge-1") == pytest.approx(1.5)
    assert t.score("img", T0, "edge-2") == 0.0


def test_remote_demand_tracks_a_new_image_but_not_a_deleted_one() -> None:
    t = tracker()
    t.set_remote("central", "new", 5.0, T0)
    assert t.image_ids() == ["new"] and t.is_stale("new")
    t.apply(ImageDeleted("gone", at(0)))
    t.set_remote("central", "gone", 5.0, T0)
    t.set_remote("central", "nothing", 0.0, T0)
    assert t.image_ids() == ["new"]


def test_sweep_forgets_cold_images_without_a_copy() -> None:
    t = tracker()
    names = ("cold", "cold-copied", "cold-pinned", "warm-at-edge", "cold-deleted")
    for n, image_id in enumerate(names):
        t.observe(raw(image_id, tags=frozenset({"warmer-pin"}) if "pinned" in image_id
                      else frozenset()), authoritative=True)
        t.apply(volume(n, image_id, 0), sites=["central"])
    t.apply(volume(99, "warm-at-edge", 10), sites=["edge-2"])
    t.keep("unknown-copy")
    t.apply(ImageDeleted("cold-deleted", at(1)))
    now = T0 + 10 * HOUR  # the events at hour 0 are worth 2**-10 now
    dropped = t.sweep(now, 0.01, keep=lambda i: i in {"cold-copied", "unknown-copy"})
    assert dropped == 1
    assert sorted(t.image_ids()) == ["cold-copied", "cold-pinned", "unknown-copy",
                                     "warm-at-edge"]
    assert t.score("cold", now, "central") == 0.0 and t.verdict("cold", now) is None
    assert t.is_deleted("cold-deleted")  # tombstones stay
    # Gone from the rankings too: with top_k, nothing is left to rank but the warm one.
    t.top_k = 10
    assert "cold" not in t.wanted("central", now)


def test_a_new_half_life_keeps_todays_scores() -> None:
    t = tracker()
    t.observe(raw("img"), authoritative=True)
    t.apply(volume(1, "img", 0))
    t.set_half_life(2 * HOUR, T0 + HOUR)
    assert t.half_life == 2 * HOUR
    assert t.score("img", T0 + HOUR) == pytest.approx(0.5)
    assert t.score("img", T0 + 3 * HOUR) == pytest.approx(0.25)


def test_a_rebase_keeps_verdicts() -> None:
    t = tracker(top_k=2, threshold=1e9)
    for n, image_id in enumerate(("a", "b", "c")):
        t.observe(raw(image_id), authoritative=True)
        t.apply(volume(n, image_id, n))
    later = REBASE_AFTER + 10
    t.observe(raw("d"), authoritative=True)
    t.apply(volume(10, "d", later))  # far ahead: the epoch moves
    now = T0 + later * HOUR
    assert t.wanted("central", now) == ["d", "c"]
    verdict = t.verdict("b", now)
    assert verdict is not None and (verdict.wanted, verdict.reason) == (False, "below_threshold")


def test_unknown_sites_in_events_are_ignored() -> None:
    t = tracker()
    t.apply(volume(1, "img", 0), sites=["nowhere"])
    assert t.image_ids() == ["img"]
    assert all(t.score("img", T0, site) == 0.0 for site in SITES)


def test_asking_about_an_unknown_site_is_an_error() -> None:
    t = tracker()
    t.observe(raw("img"), authoritative=True)
    with pytest.raises(KeyError):
        t.verdict("img", T0, "nowhere")
    with pytest.raises(KeyError):
        t.wanted("nowhere", T0)
    t.set_remote("nowhere", "img", 1.0, T0)  # another daemon's site: ignored
    assert all(t.score("img", T0, site) == 0.0 for site in SITES)


def test_rankings_hold_each_site_apart() -> None:
    r = Rankings(SITES, HOUR)
    r.set_eligible("img", True)
    r.add("img", 1.0, T0, sites=["edge-2"])
    assert r.position("img", "edge-2") == 0
    assert r.position("img", "central") is None and r.position("img", "edge-1") is None
