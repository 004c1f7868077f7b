"""The RADOS store's own behaviour, on the in-memory rados of fake_rbd: the
object and key layout of docs/state.md, the namespace, pages and batches,
calls off the event loop, and errors."""

from __future__ import annotations

import asyncio
import threading
import uuid
from collections.abc import Iterator
from typing import Any

import pytest

from tests.unit import fake_rbd
from tests.unit.fake_rbd import FakeCluster
from tests.unit.state_stores import STATE_CONF, fake_rados_modules, make_store
from warmer import conf as warmer_conf
from warmer.state.demand import DemandWriter
from warmer.state.rados import RadosStore
from warmer.state.store import (
    Contribution,
    CopyCost,
    Pin,
    Settings,
    ShardLost,
    SourceSnapshot,
    StateError,
    StateUnavailable,
    Tombstone,
    VerifiedSnapshot,
)

T0 = 1_764_000_000
HOUR = 3600.0


@pytest.fixture(autouse=True)
def _fake_rados() -> Iterator[None]:
    with fake_rados_modules():
        yield


def store(executor: Any, **kwargs: Any) -> RadosStore:
    made = make_store("rados", executor, **kwargs)
    assert isinstance(made, RadosStore)
    return made


def cluster() -> FakeCluster:
    return FakeCluster.registry[STATE_CONF]


def ids(n: int) -> list[str]:
    return sorted(str(uuid.uuid4()) for _ in range(n))


def test_the_layout_is_the_documented_one_in_the_namespace(executor: Any) -> None:
    s = store(executor)
    a, b = ids(2)

    async def go() -> None:
        w = DemandWriter(s, "ctl-1", half_life=HOUR, flush_interval=1.0, instance="i-1",
                         clock=lambda: T0)
        await w.start()
        w.add(a, 1.0, T0)
        await w.flush()
        await s.put_pin(Pin(a, "admin", T0))
        await s.put_tombstone(Tombstone(b, T0, "ctl-1"))
        await s.put_cost(CopyCost("edge", a, 1, 1.0, "sha512:00", T0))
        snap = SourceSnapshot(a, "fsid-central", "images", a, 4, "10a2")
        await s.put_verified(VerifiedSnapshot(snap, "sha512:00", 1, T0))
        await s.put_mismatched(VerifiedSnapshot(snap, "sha512:ff", 1, T0, mismatched=True))
    asyncio.run(go())
    objects = cluster().ns_objects[("images", "warmer")]
    assert cluster().objects["images"] == {}  # nothing in the default namespace
    assert set(objects) == {"warmer.state", "warmer.demand.ctl-1", "warmer.pins",
                            "warmer.tombstones", "warmer.costs.edge", "warmer.verified",
                            "warmer.mismatched"}
    key = f"{a}/fsid-central/images/{a}@4"
    assert set(objects["warmer.verified"].omap) == {key} == set(objects["warmer.mismatched"].omap)
    assert VerifiedSnapshot.from_json(key, objects["warmer.mismatched"].omap[key]).mismatched
    assert set(objects["warmer.state"].omap) == {"settings", "shard.ctl-1"}
    assert Settings.from_json(objects["warmer.state"].omap["settings"]).half_life == HOUR
    shard = objects["warmer.demand.ctl-1"].omap
    assert shard["_owner"] == b"i-1"
    assert set(shard) == {"_owner", a}
    assert Contribution.from_json(shard[a]) == Contribution(1.0, T0)
    assert set(objects["warmer.pins"].omap) == {a}
    assert set(objects["warmer.tombstones"].omap) == {b}
    assert set(objects["warmer.costs.edge"].omap) == {a}


def test_without_a_namespace_the_objects_go_to_the_default_one(executor: Any) -> None:
    s = store(executor, namespace="")
    asyncio.run(s.put_pin(Pin(ids(1)[0], "admin", T0)))
    assert set(cluster().objects["images"]) == {"warmer.pins"}


def test_reads_go_in_pages_and_writes_in_batches(executor: Any) -> None:
    s = store(executor, page_size=7, write_batch=5)
    images = ids(40)

    async def go() -> int:
        await s.claim_shard("ctl-1", "i")
        log = cluster().log
        before = log.count("omap_write")
        await s.write_shard("ctl-1", "i", {i: Contribution(1.0, T0) for i in images}, ())
        writes = log.count("omap_write") - before
        before = log.count("omap_read")
        totals = await s.read_demand(HOUR)
        assert len(totals) == 40
        return writes * 1000 + log.count("omap_read") - before
    counts = asyncio.run(go())
    writes, reads = divmod(counts, 1000)
    assert writes == 8  # 40 keys, 5 per op
    # the directory (1 page + the empty one), then 41 keys (with _owner) in
    # pages of 7: 6 full pages, then the empty one.
    assert reads == 2 + 7


def test_no_rados_call_runs_on_the_event_loop(executor: Any,
                                              monkeypatch: pytest.MonkeyPatch) -> None:
    threads: set[int] = set()
    real_op = FakeCluster.op

    def op(self: FakeCluster, name: str) -> None:
        threads.add(threading.get_ident())
        real_op(self, name)
    monkeypatch.setattr(FakeCluster, "op", op)
    s = store(executor)

    async def go() -> int:
        w = DemandWriter(s, "ctl-1", half_life=HOUR, flush_interval=1.0)
        await w.start()
        w.add(ids(1)[0], 1.0, T0)
        await w.flush()
        await s.read_demand(HOUR)
        await s.pins()
        await s.close()
        return threading.get_ident()
    loop_thread = asyncio.run(go())
    assert threads and loop_thread not in threads


def test_unreadable_values_are_skipped_and_logged(executor: Any,
                                                  caplog: pytest.LogCaptureFixture) -> None:
    s = store(executor)
    good, bad = ids(2)

    async def go() -> None:
        await s.claim_shard("ctl-1", "i")
        await s.write_shard("ctl-1", "i", {good: Contribution(1.0, T0),
                                           bad: Contribution(1.0, T0)}, ())
    asyncio.run(go())
    shard = cluster().ns_objects[("images", "warmer")]["warmer.demand.ctl-1"]
    shard.omap[bad] = b"{not json"
    shard.omap["not-an-image"] = b'{"v": 1, "e": 1}'
    shard.version += 1
    totals = asyncio.run(s.read_demand(HOUR))
    assert totals.image_ids() == [good]
    assert f"unreadable value of {bad}" in caplog.text


def test_an_unreachable_cluster_is_unavailable_not_a_crash(executor: Any) -> None:
    s = store(executor)
    cluster().fail["connect"] = fake_rbd.TimedOut("no monitors")
    with pytest.raises(StateUnavailable):
        asyncio.run(s.pins())
    del cluster().fail["connect"]
    assert asyncio.run(s.pins()) == {}  # reconnects by itself


def test_a_refused_operation_is_a_state_error(executor: Any) -> None:
    s = store(executor)
    cluster().fail["omap_write"] = fake_rbd.RadosPermissionError("EPERM", 1)
    with pytest.raises(StateError):
        asyncio.run(s.put_pin(Pin(ids(1)[0], "admin", T0)))


def test_a_missing_pool_is_a_state_error(executor: Any) -> None:
    made = make_store("rados", executor)
    assert isinstance(made, RadosStore)
    made.pool = "nope"
    with pytest.raises(StateError):
        asyncio.run(made.pins())


def test_the_state_group_configures_the_store(executor: Any) -> None:
    conf = warmer_conf.load([])
    assert conf.state.pool == "images" and conf.state.namespace == "warmer"
    assert conf.state.flush_interval == 5.0
    FakeCluster("/etc/ceph/ceph.conf", "fsid-etc")
    made = RadosStore.from_conf(conf, executor)
    assert made.pool == "images" and made.namespace == "warmer"
    assert made.client.config.user == "warmer"
    asyncio.run(made.put_tombstone(Tombstone(ids(1)[0], T0)))
    assert set(FakeCluster.registry["/etc/ceph/ceph.conf"]
               .ns_objects[("images", "warmer")]) == {"warmer.tombstones"}


def test_a_shard_claimed_in_the_middle_of_a_write_counts_nothing_twice(
        executor: Any, monkeypatch: pytest.MonkeyPatch) -> None:
    """A write of many keys goes in several ops. When another process claims
    the shard between two of them, the ops before are in the shard (and in
    what the claimant read), the ones after are refused: the loser must
    carry on with only what was refused."""
    s = store(executor, write_batch=5)
    images = ids(12)  # three ops of 5, 5 and 2 keys
    real_op = FakeCluster.op
    writes = {"n": 0}

    def op(self: FakeCluster, name: str) -> None:
        if name == "omap_write" and writes["n"] >= 0:
            writes["n"] += 1
            if writes["n"] == 2:  # just before the second op of the flush
                shard = self.ns_objects[("images", "warmer")]["warmer.demand.ctl-1"]
                shard.omap["_owner"] = b"other"
                shard.version += 1
        real_op(self, name)

    async def go() -> float:
        w = DemandWriter(s, "ctl-1", half_life=HOUR, flush_interval=1.0, clock=lambda: T0)
        await w.start()
        for image in images:
            w.add(image, 1.0, T0)
        monkeypatch.setattr(FakeCluster, "op", op)
        with pytest.raises(ShardLost) as lost:
            await w.flush()
        writes["n"] = -1
        assert len(lost.value.applied) == 5
        assert w.pending == 7
        await w.flush()
        totals = await s.read_demand(HOUR)
        return sum(totals.score(i, T0) for i in images) + 100 * (len(totals) - 12)
    assert asyncio.run(go()) == pytest.approx(12.0)
