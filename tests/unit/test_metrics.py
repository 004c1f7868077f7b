"""The value warmer delivers, as metrics: Cinder's volume creates against
warm and cold images, its image-volume cache, the copy backlog; counted
once per event and read from cached state only."""

from __future__ import annotations

import asyncio
import dataclasses
import datetime as dt
import uuid

from prometheus_client import generate_latest

from tests.unit.fakes import FakeCeph, FakeGlance, FakeRbdImage
from tests.unit.test_engine import (
    FakeCopyTarget,
    build,
    copy_engine,
    demand,
    info,
    two_sites,
    with_copies,
)
from warmer.events import ImageCacheUsed, VolumeCreatedFromImage
from warmer.glance.client import LocationConflict
from warmer.glance.stores import StoreCatalog
from warmer.metrics import Metrics
from warmer.popularity import Policy
from warmer.tracker import Tracker, Weights
from warmer.warming.engine import Engine
from warmer.warming.target import Target, TargetConfig

NOW = dt.datetime.now(dt.UTC)
FSID = "fsid-central"


def creates(engine: Engine, target: str, state: str) -> float:
    return engine.metrics.registry.get_sample_value(
        "warmer_volume_creates_total", {"target": target, "image_state": state}) or 0.0


def cache(engine: Engine, target: str, kind: str) -> float:
    return engine.metrics.registry.get_sample_value(
        "warmer_cinder_image_cache_total", {"target": target, "kind": kind}) or 0.0


def volume(image_id: str, host: str = "cinder-1@ceph#ceph",
           volume_id: str | None = None) -> VolumeCreatedFromImage:
    return VolumeCreatedFromImage(volume_id or str(uuid.uuid4()), image_id, host, "raw", 10,
                                  dt.datetime.now(dt.UTC))


def feed(engine: Engine, *events: VolumeCreatedFromImage | ImageCacheUsed) -> None:
    async def go() -> None:
        for event in events:
            await engine.handle(event)
    asyncio.run(go())


def test_volume_creates_count_cold_until_the_image_is_warm_then_warm() -> None:
    engine, glance, ceph = build()
    glance.add(info("a"), f"rbd://{FSID}/images/a/snap")
    ceph.images[("images", "a")] = FakeRbdImage({"snap": True})
    feed(engine, volume("a"), volume("a"), volume("a"))
    # Never looked at yet: this daemon cannot tell what Cinder found.
    assert creates(engine, "central", "unknown") == 3
    assert (creates(engine, "central", "cold"), creates(engine, "central", "warm")) == (0, 0)
    asyncio.run(engine.evaluate("a"))
    assert engine.status("a")[0].state == "warm"
    feed(engine, volume("a"))
    assert (creates(engine, "central", "cold"), creates(engine, "central", "warm")) == (0, 1)


def test_a_volume_cinder_created_before_the_image_was_warm_counts_cold() -> None:
    """Cinder chose to download when it created the volume: a copy that
    became warm while it downloaded does not make that volume a hit."""
    engine, glance, ceph = build()
    glance.add(info("a"), f"rbd://{FSID}/images/a/snap")
    ceph.images[("images", "a")] = FakeRbdImage({"snap": True})
    created = dt.datetime.now(dt.UTC) - dt.timedelta(minutes=5)
    asyncio.run(engine.evaluate("a"))  # warm from now on
    feed(engine, dataclasses.replace(volume("a"), created_at=created))
    assert (creates(engine, "central", "cold"), creates(engine, "central", "warm")) == (1, 0)


def test_a_redelivered_volume_create_counts_once() -> None:
    engine, _, _ = build()
    event = volume("a", volume_id="v-1")
    feed(engine, event, event, event)
    assert creates(engine, "central", "unknown") == 1


def test_a_volume_counts_in_the_target_its_backend_maps_to() -> None:
    engine, _, _, _ = two_sites()
    asyncio.run(engine.evaluate("a"))  # nothing wanted yet: not warm anywhere
    feed(engine, *(volume("a", "cinder-1@ceph-edge#rbd") for _ in range(3)))
    asyncio.run(engine.evaluate("a"))
    assert {r.target: r.state for r in engine.status("a")} == {
        "central": "not_wanted", "edge": "warm"}
    feed(engine, volume("a", "cinder-1@ceph-edge#rbd"), volume("a", "cinder-1@ceph-central#rbd"))
    assert creates(engine, "edge", "cold") == 3 and creates(engine, "edge", "warm") == 1
    assert creates(engine, "central", "cold") == 1 and creates(engine, "central", "warm") == 0
    assert creates(engine, "", "cold") == 0  # every event had one target


def test_without_a_site_map_several_targets_count_under_no_target_warm_only_if_warm_in_all(
        ) -> None:
    glance = FakeGlance()
    clusters = {"central": FakeCeph("fsid-central"), "edge": FakeCeph("fsid-edge")}
    targets = [Target(TargetConfig(name, "volumes", name, True, copy_images=False), ceph,  # type: ignore[arg-type]
                      stores=StoreCatalog(glance))  # type: ignore[arg-type]
               for name, ceph in clusters.items()]
    tracker = Tracker(half_life=3600, weights=Weights(), policy=Policy(), threshold=2.0,
                      top_k=0, dedup_window=100)
    engine = Engine(tracker, glance, targets, Metrics(), workers=1,  # type: ignore[arg-type]
                    reconcile_interval=3600, retry_delay=0.05)
    glance.add(info("a"), "rbd://fsid-central/images/a/snap")  # no location at edge
    clusters["central"].images[("images", "a")] = FakeRbdImage({"snap": True})
    feed(engine, volume("a"), volume("a"), volume("a"))
    asyncio.run(engine.evaluate("a"))
    assert {r.target: r.state for r in engine.status("a")} == {"central": "warm", "edge": "cold"}
    feed(engine, volume("a"))
    assert creates(engine, "", "unknown") == 3  # before any row
    assert creates(engine, "", "cold") == 1 and creates(engine, "", "warm") == 0
    assert creates(engine, "central", "warm") == 0 and creates(engine, "edge", "cold") == 0
    clusters["edge"].images[("images", "a")] = FakeRbdImage({"snap": True})
    glance.add(info("a"), "rbd://fsid-central/images/a/snap", "rbd://fsid-edge/images/a/snap")
    engine.views.drop("a")
    asyncio.run(engine.evaluate("a"))
    feed(engine, volume("a"))
    assert creates(engine, "", "warm") == 1


def test_cinder_image_cache_hits_and_misses_count_once_by_target() -> None:
    engine, _, _, _ = two_sites()
    hit = ImageCacheUsed("hit", "a", "cinder-1@ceph-edge#rbd", "m-1", NOW)
    miss = ImageCacheUsed("miss", "a", "cinder-1@ceph-central#rbd", "m-2", NOW)
    feed(engine, hit, hit, miss)
    assert cache(engine, "edge", "hit") == 1 and cache(engine, "central", "miss") == 1
    assert cache(engine, "edge", "miss") == 0 and cache(engine, "central", "hit") == 0


def test_per_target_series_exist_at_zero_before_any_event_and_no_created_series() -> None:
    engine, _, _, _ = two_sites()
    text = generate_latest(engine.metrics.registry).decode()
    for line in ('warmer_volume_creates_total{image_state="warm",target="edge"} 0.0',
                 'warmer_cinder_image_cache_total{kind="miss",target="central"} 0.0',
                 'warmer_glance_refusals_total{kind="publish_refused",target="edge"} 0.0',
                 'warmer_leader_changes_total{change="became_leader"} 0.0'):
        assert line in text
    for result in ("verified", "mismatch", "skipped_verified", "unverified"):
        assert f'warmer_copy_verifications_total{{result="{result}",target="edge"}} 0.0' \
            in text
    # With a site map, every Cinder event has one target: no target="" series.
    assert not [line for line in text.splitlines()
                if line.startswith("warmer_volume_creates_total") and 'target=""' in line]
    assert "_created" not in text


def test_copy_backlog_counts_wanted_images_neither_warm_nor_under_way() -> None:
    metrics = Metrics()
    rows = [("a", "edge", "images", "cold", "over_budget"),
            ("b", "edge", "images", "error", "ceph_unavailable"),
            ("c", "edge", "images", "busy", "copying"),
            ("d", "edge", "images", "warm", "cloneable"),
            ("e", "edge", "", "not_wanted", "below_threshold"),
            ("f", "edge", "images", "cold", "target_full")]  # size unknown
    sizes = {"a": info("a", size=100), "b": info("b", size=20), "c": info("c", size=7)}
    metrics.add_state_collector(lambda: rows, lambda: 6, image=sizes.get,
                                targets=["central", "edge"])
    value = metrics.registry.get_sample_value
    assert value("warmer_copy_backlog_images", {"target": "edge"}) == 3
    assert value("warmer_copy_backlog_bytes", {"target": "edge"}) == 120
    assert value("warmer_copy_backlog_images", {"target": "central"}) == 0
    assert value("warmer_copy_backlog_bytes", {"target": "central"}) == 0


def test_images_let_go_after_a_location_conflict_stay_counted_until_restart() -> None:
    """The gauge follows the engine's hands-off book, which only a restart
    empties: an alert on it lasts as long as the images stay hands-off
    (a counter's increase() would clear after its window)."""
    target = ConflictingTarget(capacity_images=1)
    engine, glance = copy_engine(target)
    engine.metrics.add_hands_off(lambda: engine.hands_off)

    def hands_off() -> float | None:
        return engine.metrics.registry.get_sample_value(
            "warmer_hands_off_images", {"reason": "location_conflict"})
    assert hands_off() == 0  # exported before any conflict
    with_copies(engine, glance, target, {"low": 1})
    demand(engine, "new", 5)
    asyncio.run(engine.budget.admit(target, "new", 10))  # type: ignore[arg-type]
    assert engine.hands_off == {"low": "location_conflict"}
    for _ in range(3):  # later scrapes: still there, not a one-off
        assert hands_off() == 1
    asyncio.run(engine.evaluate("low"))
    assert hands_off() == 1


class ConflictingTarget(FakeCopyTarget):
    """Removing any copy changes the image's Glance locations under warmer."""

    async def evict(self, image_id: str) -> str:
        raise LocationConflict(image_id, f"rbd://fsid-edge/images/{image_id}/snap",
                               ["a", "b"], ["b"])
