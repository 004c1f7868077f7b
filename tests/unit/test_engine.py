"""The engine with fake Glance and Ceph behind the real interfaces."""

from __future__ import annotations

import asyncio
import datetime as dt
from typing import Any

import pytest

from tests.unit.fakes import FakeCeph, FakeGlance, FakeRbdImage
from warmer.events import ImageChanged, ImageDeleted, ImageInfo, VolumeCreatedFromImage
from warmer.glance.stores import StoreCatalog
from warmer.metrics import Metrics
from warmer.popularity import Policy
from warmer.tracker import Tracker, Weights
from warmer.warming.engine import Engine
from warmer.warming.reconciler import NotLeader
from warmer.warming.target import Target, TargetConfig, TargetResult

FSID = "fsid-central"
NOW = dt.datetime.now(dt.UTC)


def info(image_id: str, **over: Any) -> ImageInfo:
    fields: dict[str, Any] = {"id": image_id, "status": "active", "disk_format": "raw",
                              "size": 10, "visibility": "public"}
    fields.update(over)
    return ImageInfo(**fields)


def build(repair: bool = True, glance: FakeGlance | None = None
          ) -> tuple[Engine, FakeGlance, FakeCeph]:
    glance, ceph = glance or FakeGlance(), FakeCeph(FSID)
    tracker = Tracker(half_life=3600, weights=Weights(), policy=Policy(), threshold=2.0,
                      top_k=0, dedup_window=100)
    config = TargetConfig("central", "volumes", "central", repair, copy_images=False)
    target = Target(config, ceph, stores=StoreCatalog(glance))  # type: ignore[arg-type]
    engine = Engine(tracker, glance, [target], Metrics(), workers=2,  # type: ignore[arg-type]
                    reconcile_interval=3600, retry_delay=0.05,
                    stores=StoreCatalog(glance))  # type: ignore[arg-type]
    return engine, glance, ceph


def demand(engine: Engine, image_id: str, n: int) -> None:
    for i in range(n):
        engine.tracker.apply(VolumeCreatedFromImage(f"{image_id}-v{i}", image_id, "h", "raw",
                                                    10, NOW))


def run(coro: Any) -> Any:
    return asyncio.run(coro)


def only_status(engine: Engine, image_id: str) -> tuple[str, str]:
    [row] = engine.status(image_id)
    return row.state, row.reason


def test_popular_image_with_unprotected_snapshot_is_protected_and_warm() -> None:
    engine, glance, ceph = build()
    glance.add(info("a"), f"rbd://{FSID}/images/a/snap")
    ceph.images[("images", "a")] = FakeRbdImage({"snap": False})
    demand(engine, "a", 3)
    run(engine.evaluate("a"))
    assert only_status(engine, "a") == ("warm", "cloneable")
    assert ceph.images[("images", "a")].snapshots == {"snap": True}
    assert engine.status("a")[0].actions == ("protected_snapshot",)


def test_without_repair_nothing_changes_and_the_reason_is_reported() -> None:
    engine, glance, ceph = build(repair=False)
    glance.add(info("a"), f"rbd://{FSID}/images/a/snap")
    ceph.images[("images", "a")] = FakeRbdImage({})
    demand(engine, "a", 3)
    run(engine.evaluate("a"))
    assert only_status(engine, "a") == ("cold", "snapshot_missing")
    assert ceph.images[("images", "a")].snapshots == {}


def test_unpopular_and_ineligible_images_never_touch_ceph() -> None:
    engine, glance, ceph = build()
    glance.add(info("q", disk_format="qcow2"), f"rbd://{FSID}/images/q/snap")
    glance.add(info("cold"), f"rbd://{FSID}/images/cold/snap")
    engine.tracker.observe(info("q", disk_format="qcow2"))
    engine.tracker.observe(info("cold"))
    demand(engine, "q", 5)
    demand(engine, "cold", 1)
    run(engine.evaluate("q"))
    run(engine.evaluate("cold"))
    assert only_status(engine, "q") == ("not_wanted", "disk_format_not_raw")
    assert only_status(engine, "cold") == ("not_wanted", "below_threshold")
    assert ceph.calls == []


def test_location_in_another_cluster_is_cold_with_a_reason() -> None:
    engine, glance, ceph = build()
    glance.add(info("a"), "rbd://other-fsid/images/a/snap", "file:///var/lib/glance/a")
    demand(engine, "a", 3)
    run(engine.evaluate("a"))
    assert only_status(engine, "a") == ("cold", "no_location_in_cluster")
    assert not any(c.startswith("ensure") for c in ceph.calls)


def test_cinder_user_that_cannot_read_makes_it_cold() -> None:
    engine, glance, ceph = build()
    glance.add(info("a"), f"rbd://{FSID}/images/a/snap")
    ceph.images[("images", "a")] = FakeRbdImage({"snap": True})
    ceph.readable = False
    demand(engine, "a", 3)
    run(engine.evaluate("a"))
    assert only_status(engine, "a") == ("cold", "cinder_user_cannot_read")


def test_image_gone_from_glance_is_forgotten_once_confirmed() -> None:
    engine, glance, ceph = build()
    demand(engine, "gone", 3)
    run(engine.evaluate("gone"))  # no control image: a 404 proves nothing yet
    assert engine.tracker.image("gone") is not None
    assert {s.reason for s in engine.status("gone")} == {"glance_404_unconfirmed"}
    glance.add(info("ctl"), f"rbd://{FSID}/images/ctl/snap")  # our copy of another image
    engine._copied.add("ctl")
    run(engine.evaluate("gone"))
    assert engine.tracker.image("gone") is None and engine.status("gone") == []
    assert ceph.calls == []


def test_ceph_outage_is_reported_and_retried_until_it_works() -> None:
    async def scenario() -> None:
        engine, glance, ceph = build()
        glance.add(info("a"), f"rbd://{FSID}/images/a/snap")
        ceph.images[("images", "a")] = FakeRbdImage({"snap": True})
        demand(engine, "a", 3)
        ceph.down = True
        runner = asyncio.create_task(engine.run())
        engine.enqueue("a")
        await engine.idle()
        assert only_status(engine, "a") == ("error", "ceph_unavailable")
        ceph.down = False
        for _ in range(100):
            await asyncio.sleep(0.02)
            if only_status(engine, "a")[0] == "warm":
                break
        assert only_status(engine, "a") == ("warm", "cloneable")
        runner.cancel()
    run(scenario())


def test_events_queue_work_and_delete_drops_status() -> None:
    async def scenario() -> None:
        engine, glance, ceph = build()
        pinned = info("p", tags=frozenset({"warmer-pin"}))
        glance.add(pinned, f"rbd://{FSID}/images/p/snap")
        ceph.images[("images", "p")] = FakeRbdImage({"snap": True})
        runner = asyncio.create_task(engine.run())
        assert await engine.handle(ImageChanged("image.update", pinned, NOW)) == "handled"
        await engine.idle()
        assert only_status(engine, "p") == ("warm", "cloneable")
        await engine.handle(ImageDeleted("p", NOW))
        assert engine.status("p") == [] and engine.tracker.is_deleted("p")
        assert ceph.images[("images", "p")].snapshots == {"snap": True}  # Glance's data stays
        runner.cancel()
    run(scenario())


def test_reconcile_discovers_pinned_images_missed_while_down() -> None:
    async def scenario() -> None:
        engine, glance, ceph = build()
        glance.add(info("p", properties={"warmer_pin": "true"}), f"rbd://{FSID}/images/p/snap")
        ceph.images[("images", "p")] = FakeRbdImage({"snap": False})
        runner = asyncio.create_task(engine.run())
        await engine.reconciler.reconciled.wait()
        await engine.idle()
        assert only_status(engine, "p") == ("warm", "cloneable")
        runner.cancel()
    run(scenario())


class FakeCopyTarget:
    """A copy target's inventory and eviction, behind Target's interface."""

    def __init__(self, capacity_bytes: int = 0, capacity_images: int = 0,
                 name: str = "edge") -> None:
        self.config = TargetConfig(name, "volumes", name, True, copy_images=True,
                                   capacity_bytes=capacity_bytes,
                                   capacity_images=capacity_images)
        self.name = name
        self.ceph = FakeCeph("fsid-edge")
        self.progress: dict[str, tuple[int, int]] = {}
        self.copies: dict[str, int] = {}
        self.children: set[str] = set()
        self.evicted: list[str] = []
        self.budget: Any = None

    async def inventory(self) -> list[Any]:
        from warmer.ceph.ownership import Inspection
        return [Inspection(i, i, True, None, "complete", True, size)
                for i, size in self.copies.items()]

    async def evict(self, image_id: str) -> str:
        if image_id in self.children:
            return "has_children"
        self.evicted.append(image_id)
        return "removed" if self.copies.pop(image_id, None) is not None else "gone"

    async def purge(self, image_id: str) -> str:
        return await self.evict(image_id)

    async def clean_up(self) -> list[str]:
        return []


def copy_engine(target: FakeCopyTarget) -> tuple[Engine, FakeGlance]:
    glance = FakeGlance()
    tracker = Tracker(half_life=3600, weights=Weights(), policy=Policy(), threshold=2.0,
                      top_k=0, dedup_window=100)
    engine = Engine(tracker, glance, [target], Metrics(), workers=1,  # type: ignore[list-item]
                    reconcile_interval=3600, retry_delay=0.05,
                    stores=StoreCatalog(glance))  # type: ignore[arg-type]
    return engine, glance


def with_copies(engine: Engine, glance: FakeGlance, target: FakeCopyTarget,
                scores: dict[str, int], pinned: set[str] = frozenset()) -> None:  # type: ignore[assignment]
    for image_id, n in scores.items():
        tags = frozenset({"warmer-pin"}) if image_id in pinned else frozenset()
        engine.tracker.observe(info(image_id, tags=tags))
        glance.add(info(image_id, tags=tags), f"rbd://fsid-edge/images/{image_id}/snap")
        demand(engine, image_id, n)
        target.copies[image_id] = 10


def test_admit_evicts_the_lowest_scored_copies_first() -> None:
    target = FakeCopyTarget(capacity_bytes=30)
    engine, glance = copy_engine(target)
    with_copies(engine, glance, target, {"low": 1, "mid": 2, "high": 3})
    demand(engine, "new", 5)
    assert run(engine.budget.admit(target, "new", 10))  # type: ignore[arg-type]
    assert target.evicted == ["low"]


def test_pinned_copies_are_never_evicted_and_worth_decides() -> None:
    target = FakeCopyTarget(capacity_images=2)
    engine, glance = copy_engine(target)
    with_copies(engine, glance, target, {"pinned": 0, "hot": 9}, pinned={"pinned"})
    demand(engine, "new", 1)
    assert not run(engine.budget.admit(target, "new", 10))  # type: ignore[arg-type]
    assert target.evicted == []


def test_a_copy_with_clones_is_skipped_not_removed() -> None:
    target = FakeCopyTarget(capacity_images=2)
    engine, glance = copy_engine(target)
    with_copies(engine, glance, target, {"cloned": 1, "other": 2})
    target.children.add("cloned")
    demand(engine, "new", 5)
    assert run(engine.budget.admit(target, "new", 10))  # type: ignore[arg-type]
    assert "cloned" in target.copies and target.evicted == ["other"]


def test_reconcile_removes_copies_of_deleted_images_and_honours_budgets() -> None:
    async def scenario() -> None:
        target = FakeCopyTarget(capacity_images=1)
        engine, glance = copy_engine(target)
        with_copies(engine, glance, target, {"a": 1, "b": 3})
        target.copies["orphan"] = 10  # Glance has no such image any more
        runner = asyncio.create_task(engine.run())
        await engine.reconciler.reconciled.wait()
        await engine.idle()
        assert set(target.copies) == {"b"}
        assert set(target.evicted) == {"orphan", "a"}
        runner.cancel()
    run(scenario())


def test_a_404_from_a_wrong_endpoint_removes_nothing() -> None:
    """Invariant 8: a 404 is not a delete unless a known-good request shows
    the endpoint is right."""
    async def scenario() -> None:
        target = FakeCopyTarget()
        engine, glance = copy_engine(target)
        with_copies(engine, glance, target, {"a": 3})
        glance.wrong_endpoint = True  # every answer is a 404
        runner = asyncio.create_task(engine.run())
        await engine.reconciler.reconciled.wait()
        await engine.idle()
        engine.enqueue("a")
        await engine.idle()
        assert target.copies == {"a": 10} and target.evicted == []
        assert engine.tracker.image("a") is not None
        assert {s.reason for s in engine.status("a")} == {"glance_404_unconfirmed"}
        glance.wrong_endpoint = False
        del glance.images["a"]  # now really gone, and Glance says so
        engine.enqueue("a")
        await engine.idle()
        # Alone, nothing can show this is our Glance: still kept.
        assert target.copies == {"a": 10} and target.evicted == []
        with_copies(engine, glance, target, {"z": 3})  # another copy: the control
        engine._copied.add("z")
        engine.enqueue("a")
        await engine.idle()
        assert target.copies == {"z": 10} and target.evicted == ["a"]
        runner.cancel()
    run(scenario())


def test_image_delete_is_acted_on_only_when_glance_agrees() -> None:
    async def scenario() -> None:
        target = FakeCopyTarget()
        engine, glance = copy_engine(target)
        with_copies(engine, glance, target, {"d": 3})
        runner = asyncio.create_task(engine.run())
        await engine.handle(ImageDeleted("d", NOW))  # forged or replayed: Glance has it
        await engine.idle()
        assert target.copies == {"d": 10}
        runner.cancel()
    run(scenario())


def test_image_delete_removes_warmers_copies() -> None:
    async def scenario() -> None:
        target = FakeCopyTarget()
        engine, glance = copy_engine(target)
        with_copies(engine, glance, target, {"d": 3})
        runner = asyncio.create_task(engine.run())
        del glance.images["d"]
        await engine.handle(ImageDeleted("d", NOW))
        await engine.idle()
        assert "d" not in target.copies
        runner.cancel()
    run(scenario())


def test_two_copies_cannot_both_take_the_last_room() -> None:
    target = FakeCopyTarget(capacity_images=1)
    engine, _ = copy_engine(target)
    demand(engine, "a", 3)
    demand(engine, "b", 3)

    async def both() -> list[bool]:
        return list(await asyncio.gather(engine.budget.admit(target, "a", 10),  # type: ignore[arg-type]
                                         engine.budget.admit(target, "b", 10)))  # type: ignore[arg-type]
    assert sorted(run(both())) == [False, True]


def test_a_released_reservation_makes_room_and_forget_cold_keeps_a_reserved_image() -> None:
    target = FakeCopyTarget(capacity_images=1)
    engine, _ = copy_engine(target)
    engine.forget_below = 1e9  # everything is cold
    demand(engine, "a", 3)
    demand(engine, "b", 3)
    assert run(engine.budget.admit(target, "a", 10))  # type: ignore[arg-type]
    assert engine.budget.reserved_ids() == {"a"}
    engine.forget_cold()
    assert engine.tracker.image("a") is not None  # a copy under way is held
    assert engine.tracker.image("b") is None
    assert not run(engine.budget.admit(target, "b", 10))  # type: ignore[arg-type]
    engine.budget.release(target, "a")  # type: ignore[arg-type]
    assert engine.budget.reserved_ids() == set()
    assert run(engine.budget.admit(target, "b", 10))  # type: ignore[arg-type]


def test_a_sick_target_fails_only_its_own_row() -> None:
    engine, glance, ceph = build()
    edge_ceph = FakeCeph("fsid-edge")
    edge_ceph.down = True
    engine.targets.append(Target(TargetConfig("edge", "volumes", "edge", True,  # type: ignore[arg-type]
                                              copy_images=False), edge_ceph,
                                 stores=StoreCatalog(glance)))  # type: ignore[arg-type]
    glance.add(info("a"), f"rbd://{FSID}/images/a/snap", "rbd://fsid-edge/images/a/snap")
    ceph.images[("images", "a")] = FakeRbdImage({"snap": False})
    demand(engine, "a", 3)
    run(engine.evaluate("a"))
    rows = {row.target: (row.state, row.reason) for row in engine.status("a")}
    assert rows == {"central": ("warm", "cloneable"), "edge": ("error", "ceph_unavailable")}
    assert ceph.images[("images", "a")].snapshots == {"snap": True}


def test_publish_refused_backs_off_exponentially_up_to_the_cap() -> None:
    async def scenario() -> list[float]:
        engine, glance, _ = build()
        engine.scheduler.max_retry_delay = 0.4
        glance.add(info("r"))
        demand(engine, "r", 3)
        refused = TargetResult("cold", "publish_refused", detail="HTTP 500")
        engine.targets[0].warm = lambda image, fanout=None: _result(refused)  # type: ignore[method-assign]
        delays = []
        loop = asyncio.get_running_loop()
        for _ in range(5):
            await engine.evaluate("r")
            handle = engine.scheduler._retries.pop("r")
            delays.append(round(handle.when() - loop.time(), 2))
            handle.cancel()
        return delays
    delays = run(scenario())
    assert delays == [0.05, 0.1, 0.2, 0.4, 0.4]


async def _result(result: TargetResult) -> TargetResult:
    return result


def test_a_forged_delete_with_a_wrong_endpoint_removes_nothing_and_revives() -> None:
    async def scenario() -> None:
        target = FakeCopyTarget()
        engine, glance = copy_engine(target)
        with_copies(engine, glance, target, {"d": 3})
        runner = asyncio.create_task(engine.run())
        await engine.reconciler.reconciled.wait()
        glance.wrong_endpoint = True
        await engine.handle(ImageDeleted("d", NOW))
        await engine.idle()
        assert target.copies == {"d": 10} and target.evicted == []
        glance.wrong_endpoint = False  # Glance still has it: the delete was forged
        engine.enqueue("d")
        await engine.idle()
        assert target.copies == {"d": 10}
        assert not engine.tracker.is_deleted("d") and engine.tracker.image("d") is not None
        runner.cancel()
    run(scenario())


def test_another_regions_glance_on_the_same_clusters_removes_nothing() -> None:
    """The stores match (same Ceph clusters), every image is a 404: only a
    positive control, an image this Glance must hold, tells them apart."""
    async def scenario() -> None:
        target = FakeCopyTarget()
        engine, glance = copy_engine(target)
        with_copies(engine, glance, target, {"a": 3, "b": 3})
        engine.tracker.forget("a")  # a restart: nothing known but the copies
        engine.tracker.forget("b")
        glance.other_region = True
        runner = asyncio.create_task(engine.run())
        await engine.reconciler.reconciled.wait()
        await engine.idle()
        engine.enqueue("a")
        await engine.idle()
        assert target.copies == {"a": 10, "b": 10} and target.evicted == []
        glance.other_region = False
        del glance.images["a"]  # now the right Glance, and "a" really gone
        engine.enqueue("a")
        await engine.idle()
        assert target.copies == {"b": 10} and target.evicted == ["a"]
        runner.cancel()
    run(scenario())


def test_a_location_outside_the_glance_stores_pool_is_never_repaired() -> None:
    engine, glance, ceph = build()
    glance.add(info("a"), f"rbd://{FSID}/volumes/a/snap")  # e.g. a Cinder volume
    ceph.images[("volumes", "a")] = FakeRbdImage({"snap": False})
    demand(engine, "a", 3)
    run(engine.evaluate("a"))
    assert only_status(engine, "a") == ("cold", "snapshot_unprotected")
    assert ceph.images[("volumes", "a")].snapshots == {"snap": False}


def test_an_image_named_on_our_bus_and_shown_by_glance_confirms_a_404() -> None:
    """With a single copy there is no other copy to check; an image our own
    bus named, which this Glance showed, proves it is our Glance."""
    async def scenario() -> None:
        target = FakeCopyTarget()
        engine, glance = copy_engine(target)
        with_copies(engine, glance, target, {"a": 3})
        runner = asyncio.create_task(engine.run())
        await engine.reconciler.reconciled.wait()
        glance.add(info("live"))
        await engine.handle(VolumeCreatedFromImage("v1", "live", "h", "raw", 10, NOW))
        await engine.idle()
        del glance.images["a"]
        engine.enqueue("a")
        await engine.idle()
        assert target.copies == {} and target.evicted == ["a"]
        runner.cancel()
    run(scenario())


# -- site-local demand -------------------------------------------------------------


def two_sites(*, edge_anywhere: bool = False) -> tuple[Engine, FakeGlance, FakeCeph, FakeCeph]:
    """Targets central and edge, each with the image's location in its own
    cluster; demand from backend ceph-central counts at central, from
    ceph-edge at edge."""
    from warmer.sites import SiteConfig, SiteMap
    glance = FakeGlance()
    clusters = {"central": FakeCeph("fsid-central"), "edge": FakeCeph("fsid-edge")}
    targets = [Target(TargetConfig(name, "volumes", name, True, copy_images=False), ceph,  # type: ignore[arg-type]
                      stores=StoreCatalog(glance))  # type: ignore[arg-type]
               for name, ceph in clusters.items()]
    sites = SiteMap([SiteConfig("central", backends=("ceph-central",)),
                     SiteConfig("edge", backends=("ceph-edge",), wanted_anywhere=edge_anywhere)])
    tracker = Tracker(half_life=3600, weights=Weights(), policy=Policy(), threshold=2.0,
                      top_k=0, dedup_window=100, sites=["central", "edge"])
    engine = Engine(tracker, glance, targets, Metrics(), workers=1,
                    reconcile_interval=3600, retry_delay=0.05,
                    stores=StoreCatalog(glance), sites=sites)  # type: ignore[arg-type]
    glance.add(info("a"), "rbd://fsid-central/images/a/snap", "rbd://fsid-edge/images/a/snap")
    for ceph in clusters.values():
        ceph.images[("images", "a")] = FakeRbdImage({"snap": True})
    return engine, glance, clusters["central"], clusters["edge"]


def created_at(engine: Engine, backend: str, n: int, first: int = 0) -> None:
    async def feed() -> None:
        for i in range(first, first + n):
            await engine.handle(VolumeCreatedFromImage(f"v{i}", "a", f"cinder-1@{backend}#rbd",
                                                       "raw", 10, NOW))
    run(feed())


def states(engine: Engine) -> dict[str, tuple[str, str]]:
    return {row.target: (row.state, row.reason) for row in engine.status("a")}


def test_demand_counts_only_where_it_happened() -> None:
    engine, glance, central, edge = two_sites()
    created_at(engine, "ceph-central", 3)
    run(engine.evaluate("a"))
    assert states(engine) == {"central": ("warm", "cloneable"),
                              "edge": ("not_wanted", "below_threshold")}
    assert not [c for c in edge.calls if c.startswith("ensure")]  # edge untouched
    assert engine.tracker.score("a", engine.clock(), "edge") == 0.0
    created_at(engine, "ceph-edge", 3, first=3)
    run(engine.evaluate("a"))
    assert states(engine) == {"central": ("warm", "cloneable"), "edge": ("warm", "cloneable")}


def test_a_wanted_anywhere_target_follows_every_targets_demand() -> None:
    engine, glance, central, edge = two_sites(edge_anywhere=True)
    created_at(engine, "ceph-central", 3)
    run(engine.evaluate("a"))
    assert states(engine) == {"central": ("warm", "cloneable"), "edge": ("warm", "cloneable")}
    verdicts = engine.verdicts("a")
    assert verdicts["edge"] is not None and verdicts["edge"].reason == "wanted_anywhere"


class FakeLeader:
    """Leadership as the engine sees it; ``leads`` may be a list of answers
    (the last one repeats), to lose leadership after so many checks."""

    def __init__(self, leads: bool | list[bool]) -> None:
        self.answers = leads if isinstance(leads, list) else [leads]
        self.checks = 0

    def is_leader(self) -> bool:
        self.checks += 1
        return self.answers.pop(0) if len(self.answers) > 1 else self.answers[0]

    async def wait(self) -> None:
        while not self.answers[0]:  # noqa: ASYNC110 - a test double, polled
            await asyncio.sleep(0.005)


def reconciliations(engine: Engine, outcome: str) -> float:
    return engine.metrics.registry.get_sample_value(
        "warmer_reconciliations_total", {"outcome": outcome}) or 0.0


def test_a_daemon_that_does_not_lead_never_reconciles_until_it_leads() -> None:
    async def scenario() -> None:
        target = FakeCopyTarget(capacity_images=2)
        engine, glance = copy_engine(target)
        with_copies(engine, glance, target, {"a": 1, "b": 3})
        target.copies["orphan"] = 10  # over budget, and Glance has no such image
        leader = FakeLeader(False)
        engine.reconciler.leader = leader
        runner = asyncio.create_task(engine.run())
        await asyncio.sleep(0.1)
        assert not engine.reconciler.reconciled.is_set() and reconciliations(engine, "ok") == 0
        assert target.evicted == [] and set(target.copies) == {"a", "b", "orphan"}
        leader.answers = [True]  # it becomes the leader: it reconciles at once
        await asyncio.wait_for(engine.reconciler.reconciled.wait(), 2)
        await engine.idle()
        assert reconciliations(engine, "ok") == 1 and set(target.evicted) == {"orphan"}
        runner.cancel()
    run(scenario())


def test_admission_makes_room_on_a_daemon_that_does_not_lead() -> None:
    target = FakeCopyTarget(capacity_images=2)
    engine, glance = copy_engine(target)
    with_copies(engine, glance, target, {"a": 1, "b": 3})
    engine.reconciler.leader = FakeLeader(False)
    demand(engine, "new", 5)
    assert run(engine.budget.admit(target, "new", 10))  # type: ignore[arg-type]
    assert target.evicted == ["a"]


def test_leadership_lost_mid_pass_stops_the_pass_before_budgets_are_enforced() -> None:
    async def scenario() -> None:
        target = FakeCopyTarget(capacity_images=1)
        engine, glance = copy_engine(target)
        with_copies(engine, glance, target, {"a": 1, "b": 3})
        cleaned: list[str] = []

        async def clean_up() -> list[str]:
            cleaned.append("edge")
            return []
        target.clean_up = clean_up  # type: ignore[method-assign]
        # Leads at the start of the pass and after pin discovery, then not.
        engine.reconciler.leader = FakeLeader([True, True, False])
        runner = asyncio.create_task(engine.reconciler.loop())
        while not engine.reconciler.reconciled.is_set():  # noqa: ASYNC110 - set by the loop
            await asyncio.sleep(0.005)
        runner.cancel()
        assert reconciliations(engine, "lost_leadership") == 1
        assert reconciliations(engine, "ok") == 0
        assert cleaned == [] and target.evicted == []  # no clean-up, no eviction
    run(scenario())


def test_an_eviction_pass_stops_once_leadership_is_lost() -> None:
    target = FakeCopyTarget(capacity_images=1)
    engine, glance = copy_engine(target)
    with_copies(engine, glance, target, {"a": 1, "b": 2, "c": 3})
    # Leads at enforcement's start and for the first eviction only.
    engine.reconciler.leader = FakeLeader([True, True, False])
    with pytest.raises(NotLeader):
        run(engine.reconciler.enforce_budgets())
    assert target.evicted == ["a"]


def test_a_target_whose_demand_went_keeps_reporting_its_published_copy_warm() -> None:
    """Cinder still clones from it: the row stays warm (and the warm gauge
    with it) until the budget evicts the copy."""
    engine, glance, central, edge = two_sites()
    created_at(engine, "ceph-edge", 3)
    run(engine.evaluate("a"))
    assert states(engine)["edge"] == ("warm", "cloneable")
    later = engine.clock() + 20 * 3600  # 20 half-lives: far below the threshold
    engine.clock = lambda: later
    verdict = engine.verdicts("a")["edge"]
    assert verdict is not None and not verdict.wanted
    run(engine.evaluate("a"))
    assert states(engine) == {"central": ("not_wanted", "below_threshold"),
                              "edge": ("warm", "cloneable")}


def budget_by_site(*, edge_anywhere: bool) -> tuple[Engine, FakeCopyTarget]:
    """Edge holds two copies: one hot at central only (5 there, none at
    edge), one warm at edge (2); its budget has room for two."""
    from warmer.sites import SiteConfig, SiteMap
    central, edge = FakeCopyTarget(name="central"), FakeCopyTarget(capacity_images=2)
    glance = FakeGlance()
    tracker = Tracker(half_life=3600, weights=Weights(), policy=Policy(), threshold=2.0,
                      top_k=0, dedup_window=100, sites=["central", "edge"])
    sites = SiteMap([SiteConfig("central", backends=("ceph-central",)),
                     SiteConfig("edge", backends=("ceph-edge",), wanted_anywhere=edge_anywhere)])
    engine = Engine(tracker, glance, [central, edge], Metrics(), workers=1,  # type: ignore[list-item]
                    reconcile_interval=3600, retry_delay=0.05,
                    stores=StoreCatalog(glance), sites=sites)  # type: ignore[arg-type]
    for image_id, site, n in (("hot_at_central", "central", 5), ("warm_at_edge", "edge", 2),
                              ("new", "edge", 3)):
        engine.tracker.observe(info(image_id))
        for i in range(n):
            engine.tracker.apply(VolumeCreatedFromImage(f"{image_id}-v{i}", image_id, "h",
                                                        "raw", 10, NOW), sites={site})
    edge.copies.update({"hot_at_central": 10, "warm_at_edge": 10})
    return engine, edge


def test_a_targets_budget_ranks_its_copies_by_its_own_demand() -> None:
    engine, edge = budget_by_site(edge_anywhere=False)
    assert run(engine.budget.admit(edge, "new", 10))  # type: ignore[arg-type]
    assert edge.evicted == ["hot_at_central"]  # worth 0 at edge, however hot elsewhere


def test_a_wanted_anywhere_targets_budget_ranks_by_the_best_demand_anywhere() -> None:
    engine, edge = budget_by_site(edge_anywhere=True)
    assert run(engine.budget.admit(edge, "new", 10))  # type: ignore[arg-type]
    assert edge.evicted == ["warm_at_edge"]  # 2, where the other is worth 5 (central's)


def test_cold_images_are_forgotten_but_never_one_warmer_holds() -> None:
    engine, glance, ceph = build()
    engine.forget_below = 0.5
    for image_id in ("cold", "copied", "queued", "warm_row", "pinned"):
        tags = frozenset({"warmer-pin"}) if image_id == "pinned" else frozenset()
        engine.tracker.observe(info(image_id, tags=tags))
    demand(engine, "hot", 3)
    engine._copied.add("copied")
    engine.enqueue("queued")
    engine.book.record("warm_row", engine.targets[0], TargetResult("warm", "cloneable", "rbd://x"))
    assert engine.forget_cold() == 1
    assert engine.tracker.image("cold") is None
    for kept in ("hot", "copied", "queued", "warm_row", "pinned"):
        assert engine.tracker.image(kept) is not None, kept
    engine.forget_below = 0.0
    engine.tracker.observe(info("cold"))
    assert engine.forget_cold() == 0 and engine.tracker.image("cold") is not None


def test_a_copy_is_evicted_only_for_one_worth_more_than_the_margin() -> None:
    """Two images of about equal demand must not take turns in the last
    slot: each turn is an eviction and a copy made again."""
    target = FakeCopyTarget(capacity_images=1)
    engine, glance = copy_engine(target)
    engine.budget.eviction_margin = 0.25
    with_copies(engine, glance, target, {"held": 5})
    demand(engine, "rival", 6)  # more, but not 25% more (6.25)
    assert not run(engine.budget.admit(target, "rival", 10))  # type: ignore[arg-type]
    assert target.evicted == []
    demand(engine, "stronger", 7)  # 7 > 6.25
    assert run(engine.budget.admit(target, "stronger", 10))  # type: ignore[arg-type]
    assert target.evicted == ["held"]


def test_a_burst_of_demand_reads_glance_once_per_image_within_the_view_ttl() -> None:
    engine, glance, ceph = build()
    engine.views.ttl = 30
    glance.add(info("a"), f"rbd://{FSID}/images/a/snap")
    ceph.images[("images", "a")] = FakeRbdImage({"snap": True})

    async def burst() -> None:
        for i in range(50):
            await engine.handle(VolumeCreatedFromImage(f"v{i}", "a", "h", "raw", 10, NOW))
            await engine.evaluate("a")
        assert only_status(engine, "a") == ("warm", "cloneable")
        assert glance.gets == ["a"]
        # A notification that the image changed: Glance is read again.
        await engine.handle(ImageChanged("image.update", info("a", name="renamed"), NOW))
        await engine.evaluate("a")
        assert glance.gets == ["a", "a"]
    run(burst())


def test_reconciliation_lists_what_it_acts_on_in_pages_not_one_get_each() -> None:
    engine, glance, ceph = build()
    engine.views.ttl = 30
    ids = [f"img-{n:03d}" for n in range(120)]
    for image_id in ids:
        glance.add(info(image_id), f"rbd://{FSID}/images/{image_id}/snap")
        ceph.images[("images", image_id)] = FakeRbdImage({"snap": True})
        demand(engine, image_id, 3)  # known from Cinder only: stale, and wanted

    async def scenario() -> None:
        await engine.reconciler.reconcile()
        worker = asyncio.create_task(engine.scheduler.work(engine.evaluate))
        await engine.idle()
        worker.cancel()
    run(scenario())
    by_id = [f for f in glance.listings if "id" in f]
    assert len(by_id) == 3  # 120 ids, 50 a page
    assert glance.gets == []
    assert all(only_status(engine, i) == ("warm", "cloneable") for i in ids)


def test_a_copy_whose_image_this_daemon_does_not_know_is_never_evicted_on_a_guess() -> None:
    """A follower that has not heard of a copy's image (pinned in Glance,
    discovered by the leader) must not score it 0 and evict it."""
    target = FakeCopyTarget(capacity_images=1)
    engine, glance = copy_engine(target)
    glance.add(info("pinned", tags=frozenset({"warmer-pin"})),
               "rbd://fsid-edge/images/pinned/snap")
    target.copies["pinned"] = 10  # made by another daemon
    demand(engine, "new", 5)
    assert not run(engine.budget.admit(target, "new", 10))  # type: ignore[arg-type]
    assert target.evicted == []
    run(engine.views.discover_pins())  # every daemon does, every reconcile_interval
    assert not run(engine.budget.admit(target, "new", 10))  # type: ignore[arg-type]
    assert target.evicted == [] and engine.budget.keep_score("pinned", 0.0, target) == float("inf")


def test_a_tombstone_from_the_shared_state_is_not_a_notification() -> None:
    """Invariant 8: only this daemon's own image.delete confirms a 404
    without a positive control; a tombstone another daemon wrote (or anyone
    who can write the state namespace forged) drops demand, never copies."""
    async def scenario() -> None:
        target = FakeCopyTarget()
        engine, glance = copy_engine(target)
        with_copies(engine, glance, target, {"a": 3})
        glance.other_region = True  # every image a 404, the stores right
        revived: list[str] = []
        engine.on_revived = revived.append
        engine.tracker.delete("a", NOW)  # as the fleet applies a tombstone
        await engine.evaluate("a")
        assert target.copies == {"a": 10} and target.evicted == []
        await engine.handle(ImageDeleted("a", NOW))  # our own bus says so
        await engine.evaluate("a")
        assert target.copies == {} and target.evicted == ["a"]
        # A tombstone for an image Glance still has is taken back.
        glance.other_region = False
        with_copies(engine, glance, target, {"b": 3})
        engine.tracker.delete("b", NOW)
        await engine.evaluate("b")
        assert revived == ["b"] and engine.tracker.image("b") is not None
        assert target.copies == {"b": 10}
    run(scenario())



def test_a_target_added_after_the_engine_was_built_has_a_budget_too() -> None:
    """Reservations are kept per target name, made on first use: a target
    the budget did not know when it was built is enforced like the others
    (a KeyError failed the whole pass), and the engine's one Glance client
    cannot be swapped behind its parts' backs."""
    edge = FakeCopyTarget(capacity_images=1)
    engine, glance = copy_engine(edge)
    late = FakeCopyTarget(capacity_images=1, name="late")
    engine.targets.append(late)
    with_copies(engine, glance, late, {"a": 1, "b": 3})
    asyncio.run(engine.reconciler.enforce_budgets())
    assert set(late.copies) == {"b"}  # over budget: the colder one went
    with pytest.raises(AttributeError):
        engine.glance = glance  # type: ignore[misc]


def test_never_two_evaluations_of_one_image_at_once_and_a_request_meanwhile_runs_after() -> None:
    engine, _, _ = build()
    running, most, calls = 0, 0, 0

    async def evaluate(image_id: str, forced: Any) -> None:
        nonlocal running, most, calls
        calls += 1
        running += 1
        most = max(most, running)
        await asyncio.sleep(0.05)
        running -= 1
    engine._evaluate = evaluate  # type: ignore[method-assign]

    async def scenario() -> None:
        await asyncio.gather(engine.evaluate("img"), engine.evaluate("img"))
    run(scenario())
    assert most == 1 and calls == 1  # never two at once
    assert engine.scheduler.is_queued("img")  # the request meanwhile runs next


def test_an_image_kept_hands_off_is_not_evaluated_and_says_why() -> None:
    from warmer.glance.client import LocationConflict
    engine, _, ceph = build()
    called: list[str] = []

    async def evaluate(image_id: str, forced: Any) -> None:
        called.append(image_id)
    engine._evaluate = evaluate  # type: ignore[method-assign]
    engine.hands_off.let_go("img", LocationConflict("img", "rbd://x", [], []))
    run(engine.evaluate("img"))
    assert called == []
    assert only_status(engine, "img")[0] == "error"
