"""Target and the RBD steps under it (copy, publish, evict, clean up), run
against in-memory rados/rbd modules (tests/unit/fake_rbd.py) through the
real CephClient. Each test here fails if the invariant it names breaks."""

from __future__ import annotations

import asyncio
import concurrent.futures
import dataclasses
import errno
import hashlib
import os
import uuid
from collections.abc import Iterator
from typing import Any

import pytest

from tests.unit import fake_rbd
from tests.unit.fake_rbd import FakeCluster
from tests.unit.fakes import FakeGlance
from warmer.ceph import images, ownership
from warmer.ceph.client import CephClient, ClusterConfig
from warmer.events import ImageInfo
from warmer.glance.stores import StoreCatalog
from warmer.warming.copy import CopyStats
from warmer.warming.target import Target, TargetConfig, TargetResult

MiB = 1 << 20
CENTRAL, EDGE = "fsid-central", "fsid-edge"


@pytest.fixture
def executor() -> Iterator[concurrent.futures.ThreadPoolExecutor]:
    pool = concurrent.futures.ThreadPoolExecutor(4)
    yield pool
    pool.shutdown(wait=True)


def target(executor: concurrent.futures.Executor, glance: FakeGlance, *,
           owner: str = "warmer@a", lock_seconds: int = 120) -> Target:
    central = CephClient(ClusterConfig("central.conf", "warmer"), executor)
    edge = CephClient(ClusterConfig("edge.conf", "warmer"), executor)
    config = TargetConfig("edge", "volumes", "edge", True, copy_lock_seconds=lock_seconds)
    return Target(config, edge, glance=glance, stores=StoreCatalog(glance),  # type: ignore[arg-type]
                  sources=lambda: {CENTRAL: central}, owner=owner)


def glance_image(central: FakeCluster, glance: FakeGlance, data: bytes) -> str:
    """An image Glance's RBD store wrote in central (protected ``snap``)."""
    image_id = str(uuid.uuid4())
    central.put_image("images", image_id, data)
    glance.add(ImageInfo(image_id, "active", "raw", len(data), "public",
                         os_hash_algo="sha512", os_hash_value=hashlib.sha512(data).hexdigest()),
               f"rbd://{CENTRAL}/images/{image_id}/snap")
    return image_id


def warm(t: Target, glance: FakeGlance, image_id: str) -> TargetResult:
    return asyncio.run(t.warm(glance.images[image_id]))


def edge_url(image_id: str) -> str:
    return f"rbd://{EDGE}/images/{image_id}/snap"


def sparse_data() -> bytes:
    return os.urandom(MiB) + bytes(5 * MiB) + os.urandom(2 * MiB)


# -- invariant 1: never publish a location that is not complete, verified, protected

def test_a_copy_is_complete_verified_and_protected_when_it_is_published(
        clusters: tuple[FakeCluster, FakeCluster], executor: Any) -> None:
    central, edge = clusters
    glance = FakeGlance()
    data = sparse_data()
    image_id = glance_image(central, glance, data)
    seen: list[tuple[bool, str | None, bool]] = []

    def at_publication(published_id: str, url: str) -> None:
        img = edge.images["images"][published_id]
        seen.append((img.snaps["snap"].protected, img.meta.get("warmer.state"),
                     published_id in edge.objects["images"]["warmer.registry"].omap))
    glance.on_add = at_publication
    result = warm(target(executor, glance), glance, image_id)
    assert (result.state, result.reason) == ("warm", "cloneable")
    assert seen == [(True, "complete", True)]
    copy_ = edge.images["images"][image_id]
    assert copy_.meta["warmer.verified"] == "sha512:" + hashlib.sha512(data).hexdigest()
    assert fake_rbd.Image(fake_rbd.Rados("edge.conf").open_ioctx("images"), image_id,
                          snapshot="snap").read(0, len(data)) == data
    assert glance.added == [(image_id, edge_url(image_id), "edge")]


def test_a_copy_left_unprotected_is_never_published(
        clusters: tuple[FakeCluster, FakeCluster], executor: Any,
        monkeypatch: pytest.MonkeyPatch) -> None:
    """If finish() ever forgot to protect, publication refuses all the same."""
    central, edge = clusters
    glance = FakeGlance()
    image_id = glance_image(central, glance, sparse_data())
    real_finish = images.finish

    def finish_without_protect(cluster: Any, handle: Any, *args: Any) -> str:
        handle.image.protect_snap = lambda name: None
        return real_finish(cluster, handle, *args)
    monkeypatch.setattr(images, "finish", finish_without_protect)
    result = warm(target(executor, glance), glance, image_id)
    assert result.reason == "copy_incomplete"
    assert glance.added == []


def test_a_checksum_mismatch_publishes_nothing_and_leaves_nothing(
        clusters: tuple[FakeCluster, FakeCluster], executor: Any) -> None:
    central, edge = clusters
    glance = FakeGlance()
    image_id = glance_image(central, glance, sparse_data())
    central.images["images"][image_id].snaps["snap"].data[0] = os.urandom(MiB)  # tampered
    result = warm(target(executor, glance), glance, image_id)
    assert result.reason == "checksum_mismatch"
    assert glance.added == []
    assert edge.images["images"] == {}
    assert image_id not in edge.objects["images"].get("warmer.registry",
                                                      fake_rbd.FakeObject()).omap


class Room:
    """A budget that always has room, and remembers who asked."""

    def __init__(self) -> None:
        self.asked: list[str] = []
        self.released: list[str] = []

    async def admit(self, target: Target, image_id: str, size: int) -> bool:
        self.asked.append(image_id)
        return True

    def release(self, target: Target, image_id: str) -> None:
        self.released.append(image_id)


def test_a_copy_that_could_never_be_verified_asks_no_room_of_the_budget(
        clusters: tuple[FakeCluster, FakeCluster], executor: Any) -> None:
    """A pinned image is worth more than any copy: if it has no checksum,
    asking for room would evict a working copy every reconciliation, for a
    copy that is then refused."""
    central, edge = clusters
    glance = FakeGlance()
    data = sparse_data()
    image_id = str(uuid.uuid4())
    central.put_image("images", image_id, data)
    glance.add(ImageInfo(image_id, "active", "raw", len(data), "public"),
               f"rbd://{CENTRAL}/images/{image_id}/snap")
    room = Room()
    t = target(executor, glance)
    t.budget = room
    result = warm(t, glance, image_id)
    assert (result.state, result.reason) == ("cold", "no_glance_checksum")
    assert room.asked == []
    assert edge.images["images"] == {} and glance.added == []


def test_a_copy_that_failed_its_checksum_asks_no_room_again_until_glance_changes(
        clusters: tuple[FakeCluster, FakeCluster], executor: Any) -> None:
    """Each try would make room (evicting a working copy) and then fail the
    same way: once is enough while Glance shows the image the same way."""
    central, edge = clusters
    glance = FakeGlance()
    image_id = glance_image(central, glance, sparse_data())
    tampered = os.urandom(MiB)
    central.images["images"][image_id].snaps["snap"].data[0] = tampered
    room = Room()
    t = target(executor, glance)
    t.budget = room
    for _ in range(3):
        result = warm(t, glance, image_id)
        assert (result.state, result.reason) == ("cold", "checksum_mismatch")
    assert room.asked == [image_id]
    assert result.detail is not None and "not tried again" in result.detail
    # Glance's record changes (here: the hash of what the snapshot holds now).
    old = glance.images[image_id]
    assert old.info.size is not None
    actual = fake_rbd.Image(fake_rbd.Rados("central.conf").open_ioctx("images"), image_id,
                            snapshot="snap").read(0, old.info.size)
    glance.images[image_id] = dataclasses.replace(old, info=dataclasses.replace(
        old.info, os_hash_value=hashlib.sha512(actual).hexdigest()))
    assert warm(t, glance, image_id).reason == "cloneable"
    assert room.asked == [image_id, image_id]
    assert room.released == room.asked  # every room admitted is given back


# -- invariant 4: a kill -9 at any instant leaves no published half-entry -------

def test_a_finished_copy_is_told_to_on_copied_with_every_byte_accounted_for(
        clusters: tuple[FakeCluster, FakeCluster], executor: Any) -> None:
    """The service's metrics hook, not the engine, hears of each copy: every
    byte of the image is written, or skipped as a hole or zeroes."""
    central, _ = clusters
    glance = FakeGlance()
    data = sparse_data()
    image_id = glance_image(central, glance, data)
    told: list[tuple[str, CopyStats]] = []
    t = target(executor, glance)
    t.on_copied = lambda t, stats: told.append((t.name, stats))
    assert warm(t, glance, image_id).reason == "cloneable"
    [(name, stats)] = told
    assert name == "edge" and stats.written > 0
    assert stats.written + stats.skipped_holes + stats.skipped_zeros == len(data)


def test_a_crash_at_any_instant_publishes_nothing_and_the_next_life_finishes(
        clusters: tuple[FakeCluster, FakeCluster], executor: Any) -> None:
    central, edge = clusters
    data = os.urandom(MiB) + bytes(3 * MiB) + os.urandom(MiB)
    probe_glance = FakeGlance()
    probe_id = glance_image(central, probe_glance, data)
    edge.log.clear()
    warm(target(executor, probe_glance), probe_glance, probe_id)
    steps = len(edge.log)
    assert steps > 15
    for crash_at in range(steps):
        glance = FakeGlance()
        image_id = glance_image(central, glance, data)
        edge.log.clear()
        edge.crash_at, edge.dead = crash_at, False
        half_entries: list[str] = []

        def at_publication(published_id: str, url: str,
                           half_entries: list[str] = half_entries) -> None:
            img = edge.images["images"].get(published_id)
            if img is None or not img.snaps.get("snap", fake_rbd.Snap({})).protected or \
                    img.meta.get("warmer.state") != "complete":
                half_entries.append(url)
        glance.on_add = at_publication
        first = target(executor, glance)
        try:
            warm(first, glance, image_id)
        except Exception:  # the dying daemon's view of its own death
            pass
        assert half_entries == [], f"half-entry published after a crash at step {crash_at}"
        if crash_at < steps - 3:  # before the publication's own check
            assert glance.added == [], f"published after a crash at step {crash_at}"
        # The daemon restarts once its leases ran out (it never breaks one,
        # not even under its own name: it may be another live process's).
        edge.crash_at, edge.dead = None, False
        later = edge.clock() + 1000
        edge.clock = lambda later=later: later
        second = target(executor, glance)
        asyncio.run(second.clean_up())
        result = warm(second, glance, image_id)
        assert (result.state, result.reason) == ("warm", "cloneable"), crash_at
        assert set(edge.images["images"]) >= {image_id}
        assert f"warmer-tmp.{image_id}" not in edge.images["images"]
        assert [a[:2] for a in glance.added] == [(image_id, edge_url(image_id))]


# -- the copy lease ----------------------------------------------------------------

def test_a_lost_lease_cancels_the_copy_and_leaves_the_temp_to_its_new_holder(
        clusters: tuple[FakeCluster, FakeCluster], executor: Any) -> None:
    central, edge = clusters
    glance = FakeGlance()
    image_id = glance_image(central, glance, os.urandom(64 * MiB))  # 16 chunks
    edge.write_delay = 1.0
    t = target(executor, glance, lock_seconds=1)

    async def scenario() -> TargetResult:
        warming = asyncio.create_task(t.warm(glance.images[image_id]))
        await take_lease_once_copying(edge, image_id)
        return await warming
    result = asyncio.run(scenario())
    assert result.reason == "lease_lost"
    assert edge.log.count("write") < 16  # cancelled mid-copy, not at the end
    assert glance.added == []
    assert f"warmer-tmp.{image_id}" in edge.images["images"]  # the new holder's now


async def take_lease_once_copying(cluster: FakeCluster, image_id: str) -> None:
    """Once the copy of ``image_id`` into ``cluster`` has begun, another
    daemon takes its lease (as after a partition outlived it)."""
    while f"warmer-tmp.{image_id}" not in cluster.images["images"]:  # noqa: ASYNC110
        await asyncio.sleep(0.01)
    lock = cluster.objects["images"][f"warmer.lock.{image_id}"]
    lock.lock = ("warmer@b", -1, float("inf"))
    lock.xattrs["warmer.holder"] = b"warmer@b"


def test_clean_up_leaves_a_temp_whose_lease_another_daemon_holds(
        clusters: tuple[FakeCluster, FakeCluster], executor: Any) -> None:
    central, edge = clusters
    glance = FakeGlance()
    image_id = glance_image(central, glance, sparse_data())
    other = fake_rbd.Rados("edge.conf")
    ownership.register(other, "images", ownership.Entry(image_id, "copying", "warmer@b"))  # type: ignore[arg-type]
    handle = images.create_temp(other, "images", image_id, MiB, "test", "warmer@b")  # type: ignore[arg-type]
    handle.close()
    assert images.lock(other, "images", image_id, "warmer@b", 120)  # type: ignore[arg-type]
    assert asyncio.run(target(executor, glance).clean_up()) == []
    assert f"warmer-tmp.{image_id}" in edge.images["images"]
    assert image_id in edge.objects["images"]["warmer.registry"].omap


def test_clean_up_removes_a_crashed_copy_and_forgets_it(
        clusters: tuple[FakeCluster, FakeCluster], executor: Any) -> None:
    central, edge = clusters
    glance = FakeGlance()
    image_id = glance_image(central, glance, sparse_data())
    dead = fake_rbd.Rados("edge.conf")
    images.create_temp(dead, "images", image_id, MiB, "test", "warmer@b").close()  # type: ignore[arg-type]
    assert asyncio.run(target(executor, glance).clean_up()) == [image_id]
    assert edge.images["images"] == {}
    assert image_id not in edge.objects["images"]["warmer.registry"].omap
    assert f"warmer.lock.{image_id}" not in edge.objects["images"]


def test_create_temp_never_hands_out_an_image_that_has_data(
        clusters: tuple[FakeCluster, FakeCluster], monkeypatch: pytest.MonkeyPatch) -> None:
    """copy() writes no zeroes: it needs a freshly created, all-zero image.
    One that appears between the look-up and the create (inspect misses it
    here) is refused, never opened and written over."""
    central, edge = clusters
    image_id = str(uuid.uuid4())
    c = fake_rbd.Rados("edge.conf")
    edge.put_image("images", f"warmer-tmp.{image_id}", b"x" * 4096, snapshot=None)
    monkeypatch.setattr(images, "inspect", lambda *a: None)
    with pytest.raises(fake_rbd.ImageExists):
        images.create_temp(c, "images", image_id, MiB, "test", "warmer@a")  # type: ignore[arg-type]
    assert edge.images["images"][f"warmer-tmp.{image_id}"].data == {0: b"x" * 4096}


# -- invariant 2: never remove what is not provably warmer's ---------------------

def _warmers_copy(central: FakeCluster, edge: FakeCluster, executor: Any,
                  glance: FakeGlance) -> str:
    image_id = glance_image(central, glance, sparse_data())
    assert warm(target(executor, glance), glance, image_id).state == "warm"
    return image_id


def test_remove_temp_refuses_an_image_without_warmers_metadata(
        clusters: tuple[FakeCluster, FakeCluster], executor: Any) -> None:
    central, edge = clusters
    image_id = str(uuid.uuid4())
    c = fake_rbd.Rados("edge.conf")
    ownership.register(c, "images", ownership.Entry(image_id, "copying"))  # type: ignore[arg-type]
    edge.put_image("images", f"warmer-tmp.{image_id}", b"x" * 4096, snapshot=None)
    assert images.remove_temp(c, "images", image_id) is False  # type: ignore[arg-type]
    asyncio.run(target(executor, FakeGlance()).clean_up())  # may forget the entry
    assert edge.images["images"][f"warmer-tmp.{image_id}"].data == {0: b"x" * 4096}
    assert not [op for op in edge.log if op.startswith(("remove ", "lock_break", "write"))]


@pytest.mark.parametrize("case", ["glance_own_image", "clone_named_as_a_registered_id",
                                  "flattened_clone_named_as_a_registered_id",
                                  "flattened_clone_in_cinders_pool",
                                  "warmer_metadata_but_not_registered",
                                  "same_name_clone_in_a_pool_where_that_id_is_registered"])
def test_nothing_that_is_not_provably_warmers_is_ever_removed(
        clusters: tuple[FakeCluster, FakeCluster], executor: Any, case: str) -> None:
    central, edge = clusters
    glance = FakeGlance()
    copy_id = _warmers_copy(central, edge, executor, glance)
    victim, pool = str(uuid.uuid4()), "images"
    c = fake_rbd.Rados("edge.conf")
    if case == "glance_own_image":
        edge.put_image("images", victim, b"g" * 4096)
        ownership.register(c, "images", ownership.Entry(victim, "complete"))  # type: ignore[arg-type]
    elif case.startswith(("clone_named", "flattened_clone_named")):
        edge.clone("images", copy_id, "snap", "images", victim)
        ownership.register(c, "images", ownership.Entry(victim, "complete"))  # type: ignore[arg-type]
        if case.startswith("flattened"):
            edge.flatten("images", victim)
    elif case == "flattened_clone_in_cinders_pool":
        pool, victim = "volumes", f"volume-{uuid.uuid4()}"
        edge.clone("images", copy_id, "snap", "volumes", victim)
        edge.flatten("volumes", victim)
        assert edge.images["volumes"][victim].meta["warmer.owner"] == "warmer"  # inherited
    elif case == "same_name_clone_in_a_pool_where_that_id_is_registered":
        # Only "no parent" tells this one apart: name, metadata (inherited)
        # and registry all say warmer's.
        pool, victim = "volumes", copy_id
        edge.clone("images", copy_id, "snap", "volumes", victim)
        ownership.register(c, "volumes", ownership.Entry(victim, "complete"))  # type: ignore[arg-type]
    else:
        edge.put_image("images", victim, b"w" * 4096, meta={
            "warmer.owner": "warmer", "warmer.glance_image": victim, "warmer.state": "complete"})
    before = len(edge.log)
    assert images.remove_owned(c, pool, victim) == "not_owned"  # type: ignore[arg-type]
    assert images.remove_temp(c, pool, victim) is False  # type: ignore[arg-type]
    t = target(executor, glance)
    # (The target works on its own copy pool; its real copy may answer.)
    assert asyncio.run(t.evict(victim)) in ("not_owned", "gone", "has_children")
    assert asyncio.run(t.purge(victim)) in ("not_owned", "gone", "has_children")
    assert victim in edge.images[pool]
    changes = [op for op in edge.log[before:] if op.startswith(
        ("remove ", "unprotect_snap", "remove_snap", "lock_break", "metadata_set", "write"))]
    assert changes == []


def test_eviction_never_unprotects_a_snapshot_with_clones(
        clusters: tuple[FakeCluster, FakeCluster], executor: Any) -> None:
    central, edge = clusters
    glance = FakeGlance()
    copy_id = _warmers_copy(central, edge, executor, glance)
    edge.clone("images", copy_id, "snap", "volumes", f"volume-{uuid.uuid4()}")
    before = len(edge.log)
    c = fake_rbd.Rados("edge.conf")
    assert images.remove_owned(c, "images", copy_id) == "has_children"  # type: ignore[arg-type]
    assert asyncio.run(target(executor, glance).evict(copy_id)) == "has_children"
    assert not [op for op in edge.log[before:] if op.startswith(("unprotect_snap", "remove "))]
    assert edge.images["images"][copy_id].snaps["snap"].protected
    assert edge_url(copy_id) in {loc.url for loc in glance.images[copy_id].locations}


def test_eviction_without_clones_removes_location_copy_registry_and_lock(
        clusters: tuple[FakeCluster, FakeCluster], executor: Any) -> None:
    central, edge = clusters
    glance = FakeGlance()
    copy_id = _warmers_copy(central, edge, executor, glance)
    assert asyncio.run(target(executor, glance).evict(copy_id)) == "removed"
    assert copy_id not in edge.images["images"]
    assert edge_url(copy_id) not in {loc.url for loc in glance.images[copy_id].locations}
    assert copy_id not in edge.objects["images"]["warmer.registry"].omap
    assert f"warmer.lock.{copy_id}" not in edge.objects["images"]


def test_eviction_waits_for_a_daemon_that_holds_the_lease(
        clusters: tuple[FakeCluster, FakeCluster], executor: Any) -> None:
    central, edge = clusters
    glance = FakeGlance()
    copy_id = _warmers_copy(central, edge, executor, glance)
    assert images.lock(fake_rbd.Rados("edge.conf"), "images", copy_id, "warmer@b", 120)  # type: ignore[arg-type]
    assert asyncio.run(target(executor, glance).evict(copy_id)) == "busy"
    assert copy_id in edge.images["images"]
    assert glance.removed == []


# -- where copies go ---------------------------------------------------------------

def test_copies_go_to_the_glance_stores_pool_and_a_wrong_store_copies_nothing(
        clusters: tuple[FakeCluster, FakeCluster], executor: Any) -> None:
    central, edge = clusters
    glance = FakeGlance(fsids={"edge": "fsid-of-another-cluster"})
    image_id = glance_image(central, glance, sparse_data())
    result = warm(target(executor, glance), glance, image_id)
    assert (result.state, result.reason) == ("cold", "glance_store_mismatch")
    assert edge.images["images"] == {} and edge.images["volumes"] == {}
    glance.fsids = {"central": CENTRAL}  # Glance has no store "edge"
    result = warm(target(executor, glance), glance, image_id)
    assert result.reason == "copy_pool_unknown"
    assert edge.images["images"] == {} and glance.added == []


# -- a full pool ---------------------------------------------------------------------

def test_a_full_pool_is_target_full_with_no_copy_attempt_and_no_leftovers(
        clusters: tuple[FakeCluster, FakeCluster], executor: Any) -> None:
    central, edge = clusters
    glance = FakeGlance()
    image_id = glance_image(central, glance, sparse_data())
    edge.full_pools.add("images")
    result = warm(target(executor, glance), glance, image_id)
    assert (result.state, result.reason) == ("cold", "target_full")
    assert "create" not in edge.log and edge.images["images"] == {}
    assert glance.added == []


def test_a_pool_that_fills_up_mid_copy_is_target_full_and_the_temp_goes(
        clusters: tuple[FakeCluster, FakeCluster], executor: Any) -> None:
    central, edge = clusters
    glance = FakeGlance()
    image_id = glance_image(central, glance, sparse_data())
    edge.fail["write"] = fake_rbd.RbdError("quota", errno.EDQUOT)
    result = warm(target(executor, glance), glance, image_id)
    assert (result.state, result.reason) == ("cold", "target_full")
    assert edge.images["images"] == {} and glance.added == []
    assert image_id not in edge.objects["images"]["warmer.registry"].omap


# -- one daemon, several tasks and targets (the lease book) ----------------------

def test_the_daemons_own_clean_up_evict_and_purge_never_touch_its_running_copy(
        clusters: tuple[FakeCluster, FakeCluster], executor: Any) -> None:
    central, edge = clusters
    glance = FakeGlance()
    image_id = glance_image(central, glance, os.urandom(8 * MiB))
    edge.write_delay = 0.1
    t = target(executor, glance)

    async def scenario() -> tuple[TargetResult, list[str], str, str]:
        warming = asyncio.create_task(t.warm(glance.images[image_id]))
        while f"warmer-tmp.{image_id}" not in edge.images["images"]:  # noqa: ASYNC110
            await asyncio.sleep(0.01)
        cleaned = await t.clean_up()
        evicted, purged = await t.evict(image_id), await t.purge(image_id)
        return await warming, cleaned, evicted, purged
    result, cleaned, evicted, purged = asyncio.run(scenario())
    assert cleaned == [] and evicted == "busy" and purged == "busy"
    assert (result.state, result.reason) == ("warm", "cloneable")
    assert not [op for op in edge.log if op.startswith(("lock_break", "remove "))]


def test_two_targets_on_one_pool_copy_an_image_once(
        clusters: tuple[FakeCluster, FakeCluster], executor: Any) -> None:
    """Two Cinder backends in one cluster share the Glance store's pool."""
    central, edge = clusters
    glance = FakeGlance()
    image_id = glance_image(central, glance, sparse_data())
    edge.write_delay = 0.02
    ssd, hdd = target(executor, glance), target(executor, glance)

    async def both() -> list[TargetResult]:
        return list(await asyncio.gather(ssd.warm(glance.images[image_id]),
                                         hdd.warm(glance.images[image_id])))
    results = asyncio.run(both())
    assert sorted(r.reason for r in results) == ["cloneable", "copy_in_progress_elsewhere"]
    assert edge.log.count("create") == 1 and "lock_break" not in edge.log
    again = warm(hdd, glance, image_id)  # the retry finds the copy and its location
    assert (again.state, again.reason) == ("warm", "cloneable")
    assert glance.added == [(image_id, edge_url(image_id), "edge")]


def test_nothing_is_published_while_another_daemon_holds_the_lease(
        clusters: tuple[FakeCluster, FakeCluster], executor: Any) -> None:
    """Publication holds the lease, so it cannot race an eviction."""
    central, edge = clusters
    glance = FakeGlance()
    copy_id = _warmers_copy(central, edge, executor, glance)
    glance.images[copy_id] = glance.images[copy_id].__class__(
        glance.images[copy_id].info, glance.images[copy_id].locations[:1])  # unpublished
    glance.added.clear()
    assert images.lock(fake_rbd.Rados("edge.conf"), "images", copy_id, "warmer@b", 120)  # type: ignore[arg-type]
    result = warm(target(executor, glance), glance, copy_id)
    assert (result.state, result.reason) == ("busy", "copy_in_progress_elsewhere")
    assert glance.added == []


def test_with_hidden_locations_a_copy_is_never_evicted(
        clusters: tuple[FakeCluster, FakeCluster], executor: Any) -> None:
    central, edge = clusters
    glance = FakeGlance()
    copy_id = _warmers_copy(central, edge, executor, glance)
    glance.hidden = True
    assert asyncio.run(target(executor, glance).evict(copy_id)) == "locations_hidden"
    assert edge.images["images"][copy_id].snaps["snap"].protected


def test_a_500_from_glance_on_publication_is_publish_refused(
        clusters: tuple[FakeCluster, FakeCluster], executor: Any) -> None:
    from warmer.glance.client import GlanceServerError
    central, edge = clusters
    glance = FakeGlance()
    glance.add_error = GlanceServerError("PATCH: HTTP 500: cannot open")
    image_id = glance_image(central, glance, sparse_data())
    result = warm(target(executor, glance), glance, image_id)
    assert (result.state, result.reason) == ("cold", "publish_refused")
    assert result.detail is not None and "500" in result.detail
    assert image_id in edge.images["images"]  # the complete copy is kept for the retry


def test_a_crafted_id_writes_nothing_into_the_pool(
        clusters: tuple[FakeCluster, FakeCluster], executor: Any) -> None:
    central, edge = clusters
    t = target(executor, FakeGlance())
    for crafted in (str(uuid.uuid4()), f"volume-{uuid.uuid4()}", "a..b"):
        assert asyncio.run(t.purge(crafted)) in ("gone", "not_owned")
    assert edge.objects["images"] == {}


def test_location_changes_are_one_at_a_time_across_daemons(
        clusters: tuple[FakeCluster, FakeCluster], executor: Any) -> None:
    """Glance removes a location by index: two daemons changing one image's
    list at once could remove a third party's location."""
    from warmer.warming.target import LocationGuard
    central, edge = clusters
    glance = FakeGlance()
    image_id = str(uuid.uuid4())
    first, second = LocationGuard(target(executor, glance, owner="warmer@a"), attempts=2), \
        LocationGuard(target(executor, glance, owner="warmer@b"), attempts=2)
    order: list[str] = []

    async def change(guard: LocationGuard, name: str, hold: float) -> bool:
        async with guard.held(image_id) as held:
            if held:
                order.append(f"{name} in")
                await asyncio.sleep(hold)
                order.append(f"{name} out")
            return held

    async def scenario() -> tuple[bool, bool, bool]:
        a = asyncio.create_task(change(first, "a", 1.0))
        await asyncio.sleep(0.1)
        b = await change(second, "b", 0)  # gives up while a holds it
        a_held = await a
        c = await change(second, "b2", 0)  # free again
        return a_held, b, c
    assert asyncio.run(scenario()) == (True, False, True)
    assert order == ["a in", "a out", "b2 in", "b2 out"]
    assert edge.log.count("lock_exclusive") >= 2  # the lock lived in the pool
    assert f"warmer.locations.{image_id}" not in edge.objects["images"]  # no pile-up

    async def same_daemon() -> None:  # two targets of one daemon: they wait
        await asyncio.gather(change(first, "x", 0.2), change(first, "y", 0.2))
    order.clear()
    asyncio.run(same_daemon())
    assert order in (["x in", "x out", "y in", "y out"], ["y in", "y out", "x in", "x out"])


def test_eviction_keeps_the_data_when_glance_answers_404(
        clusters: tuple[FakeCluster, FakeCluster], executor: Any) -> None:
    central, edge = clusters
    glance = FakeGlance()
    copy_id = _warmers_copy(central, edge, executor, glance)
    glance.other_region = True  # the stores answer, the image is a 404
    assert asyncio.run(target(executor, glance).evict(copy_id)) == "glance_404"
    assert edge.images["images"][copy_id].snaps["snap"].protected


def test_publication_waits_for_the_location_lock_another_daemon_holds(
        clusters: tuple[FakeCluster, FakeCluster], executor: Any) -> None:
    from warmer.warming.target import LocationGuard
    central, edge = clusters
    glance = FakeGlance()
    image_id = glance_image(central, glance, sparse_data())
    t = target(executor, glance)
    t.location_guard = LocationGuard(t, attempts=2)
    assert images.lock(fake_rbd.Rados("edge.conf"), "images", image_id, "warmer@b", 120,  # type: ignore[arg-type]
                       prefix=images.LOCATIONS_PREFIX)
    result = warm(t, glance, image_id)
    assert (result.state, result.reason) == ("busy", "locations_busy")
    assert glance.added == []
