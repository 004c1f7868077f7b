"""Verify each source snapshot once (warmer/warming/records.py), through
real Targets on the in-memory rados/rbd (tests/unit/fake_rbd.py) and the
in-memory state store: the first copy of a snapshot hashes and records it,
a later copy of the very same snapshot hashes nothing, and nothing else is
ever trusted. Each test fails if a record were written when it must not
be, or trusted when it must not be."""

from __future__ import annotations

import asyncio
import dataclasses
import hashlib
import os
from collections.abc import Collection
from typing import Any

import pytest

from tests.unit import fake_rbd
from tests.unit.fake_rbd import FakeCluster
from tests.unit.fakes import FakeGlance
from tests.unit.test_target import (
    CENTRAL,
    MiB,
    glance_image,
    sparse_data,
)
from warmer.ceph.client import CephClient, ClusterConfig
from warmer.events import ImageInfo
from warmer.glance.client import GlanceImage
from warmer.glance.stores import StoreCatalog
from warmer.state.memory import MemoryStore
from warmer.state.store import CopyCost, SourceSnapshot, StateUnavailable, VerifiedSnapshot
from warmer.warming.copy import Verifier
from warmer.warming.records import CopyRecords
from warmer.warming.target import Target, TargetConfig, TargetResult

EDGE2 = "fsid-edge2"
DAEMON = "ctl-1"


class Daemon:
    """A daemon's targets (edge and edge2, two clusters that copy from
    central) sharing one :class:`CopyRecords` on ``store``; ``checks`` has
    every Verifier outcome in order."""

    def __init__(self, executor: Any, glance: FakeGlance, store: Any, *,
                 trust: bool = True) -> None:
        FakeCluster("edge2.conf", EDGE2)
        glance.fsids["edge2"] = EDGE2
        central = CephClient(ClusterConfig("central.conf", "warmer"), executor)
        self.records = CopyRecords(store, DAEMON, trust=trust)
        self.checks: list[tuple[str, str]] = []
        self.targets: dict[str, Target] = {}
        for name in ("edge", "edge2"):
            t = Target(TargetConfig(name, "volumes", name, True),
                       CephClient(ClusterConfig(f"{name}.conf", "warmer"), executor),
                       glance=glance, stores=StoreCatalog(glance),  # type: ignore[arg-type]
                       sources=lambda: {CENTRAL: central}, owner=f"warmer@{DAEMON}")
            t.records = self.records
            t.on_checked = lambda t, outcome: self.checks.append((t.name, outcome))
            self.targets[name] = t
        self.glance, self.store = glance, store
        self.central = FakeCluster.registry["central.conf"]

    def warm(self, name: str, image_id: str) -> TargetResult:
        return asyncio.run(self.targets[name].warm(self.glance.images[image_id]))

    def evict(self, name: str, image_id: str) -> str:
        return asyncio.run(self.targets[name].evict(image_id))


def copied(image_id: str, cluster: str = "edge2.conf") -> bytes:
    img = fake_rbd.Image(fake_rbd.Rados(cluster).open_ioctx("images"), image_id,
                         snapshot="snap")
    return img.read(0, img.size())


def recreate_snapshot(central: FakeCluster, image_id: str, data: bytes) -> None:
    """Behind Glance's back: the snapshot removed, the image's data changed
    (or not), and ``snap`` created again under the same name."""
    img = central.images["images"][image_id]
    del img.snaps["snap"]
    img.data = {off: data[off:off + MiB] for off in range(0, len(data), MiB)
                if data[off:off + MiB].strip(b"\0")}
    img.snaps["snap"] = fake_rbd.Snap(dict(img.data), True)


def records_of(store: MemoryStore, image_id: str) -> dict[str, VerifiedSnapshot]:
    return asyncio.run(store.verified(image_id))


def vouching(store: MemoryStore, image_id: str) -> dict[str, VerifiedSnapshot]:
    """The verified records (never a mismatch: those are kept apart)."""
    found = records_of(store, image_id)
    assert not any(r.mismatched for r in found.values())
    return found


def mismatched(store: MemoryStore, image_id: str) -> set[str]:
    return asyncio.run(store.mismatched(image_id))


def one_image(clusters: tuple[FakeCluster, FakeCluster], executor: Any, *,
              data: bytes | None = None, store: MemoryStore | None = None,
              first: str | None = "verified", trust: bool = True
              ) -> tuple[Daemon, str, bytes]:
    """An image Glance's RBD store wrote in central, a daemon with an empty
    state (``store``), and the image's first copy, into edge, checked as
    ``first`` says (None: no copy yet)."""
    data = sparse_data() if data is None else data
    glance = FakeGlance()
    image_id = glance_image(clusters[0], glance, data)
    daemon = Daemon(executor, glance, MemoryStore() if store is None else store, trust=trust)
    if first is not None:
        daemon.warm("edge", image_id)
        assert daemon.checks == [("edge", first)]
    return daemon, image_id, data


def test_the_first_copy_hashes_and_records_and_a_later_copy_of_it_hashes_nothing(
        clusters: tuple[FakeCluster, FakeCluster], executor: Any,
        monkeypatch: pytest.MonkeyPatch) -> None:
    daemon, image_id, data = one_image(clusters, executor)
    central = daemon.central
    (record,) = records_of(daemon.store, image_id).values()
    snap = central.images["images"][image_id].snaps["snap"]
    digest = "sha512:" + hashlib.sha512(data).hexdigest()
    assert (record.snapshot.fsid, record.snapshot.pool, record.snapshot.image,
            record.snapshot.snap_id, record.snapshot.rbd_id) == (
        CENTRAL, "images", image_id, snap.id, central.images["images"][image_id].rbd_id)
    assert (record.digest, record.size, record.by) == (digest, len(data), DAEMON)

    hashed: list[int] = []
    monkeypatch.setattr(Verifier, "update", lambda self, d: hashed.append(len(d)))
    result = daemon.warm("edge2", image_id)
    assert (result.state, result.reason) == ("warm", "cloneable")
    assert daemon.checks[-1] == ("edge2", "skipped_verified")
    assert hashed == []
    assert copied(image_id) == data
    for cluster, stamp in (("edge", digest), ("edge2", f"skipped_verified:{digest}")):
        meta = fake_rbd.Image(fake_rbd.Rados(f"{cluster}.conf").open_ioctx("images"),
                              image_id).img.meta
        assert meta["warmer.verified"] == stamp  # how the copy was checked


def test_a_mismatch_records_nothing_and_the_next_copy_hashes_again(
        clusters: tuple[FakeCluster, FakeCluster], executor: Any) -> None:
    daemon, image_id, _ = one_image(clusters, executor, first=None)
    daemon.central.images["images"][image_id].snaps["snap"].data[0] = os.urandom(MiB)
    assert daemon.warm("edge", image_id).reason == "checksum_mismatch"  # tampered
    assert vouching(daemon.store, image_id) == {}
    assert len(mismatched(daemon.store, image_id)) == 1
    assert daemon.warm("edge2", image_id).reason == "checksum_mismatch"
    assert daemon.checks == [("edge", "mismatch"), ("edge2", "mismatch")]
    assert vouching(daemon.store, image_id) == {}


def test_a_mismatch_on_a_recorded_snapshot_revokes_its_record_for_every_daemon(
        clusters: tuple[FakeCluster, FakeCluster], executor: Any) -> None:
    """The snapshot's bytes read otherwise now (bit rot, a librbd bug, a
    write behind RBD's back: same snap id, same RBD id). A daemon that
    hashes it sees the mismatch; the record must go before that copy fails,
    or every trusting daemon publishes the bad bytes unhashed."""
    daemon, image_id, data = one_image(clusters, executor)
    assert len(records_of(daemon.store, image_id)) == 1
    daemon.central.images["images"][image_id].snaps["snap"].data[0] = os.urandom(MiB)
    hasher = Daemon(executor, daemon.glance, daemon.store, trust=False)
    assert hasher.warm("edge2", image_id).reason == "checksum_mismatch"
    assert vouching(daemon.store, image_id) == {}
    result = daemon.warm("edge2", image_id)
    assert (result.state, result.reason) == ("cold", "checksum_mismatch")
    assert daemon.checks[-1] == ("edge2", "mismatch")


def test_a_daemon_that_saw_a_mismatch_never_trusts_that_snapshot_again(
        clusters: tuple[FakeCluster, FakeCluster], executor: Any) -> None:
    """Even when the record could not be dropped (the state was down), and
    is readable again afterwards."""
    store = UnavailableStore()
    daemon, image_id, data = one_image(clusters, executor, store=store)
    daemon.central.images["images"][image_id].snaps["snap"].data[0] = os.urandom(MiB)
    store.down = True  # unreadable: hashed; and the record cannot be dropped
    assert daemon.warm("edge2", image_id).reason == "checksum_mismatch"
    store.down = False
    assert len(records_of(store, image_id)) == 1  # still there
    # edge's copy (made before the snapshot went bad) goes, and is copied again.
    assert daemon.evict("edge", image_id) == "removed"
    result = daemon.warm("edge", image_id)
    assert (result.state, result.reason) == ("cold", "checksum_mismatch")
    assert daemon.checks == [("edge", "verified"), ("edge2", "mismatch"), ("edge", "mismatch")]


def test_a_snapshot_that_mismatched_is_never_trusted_again_by_any_daemon_or_restart(
        clusters: tuple[FakeCluster, FakeCluster], executor: Any) -> None:
    """The mismatch is recorded in the shared state, apart from the verified
    records, not only in the memory of the daemon that saw it: a daemon
    started afterwards (a restart, or another controller) hashes the
    snapshot every time, even once its bytes read right again and verified
    records of it were written (by a match here, or by a daemon of an
    earlier version, which knows nothing of mismatches: it writes records
    and drops all of an image's records, never the mismatches)."""
    daemon, image_id, data = one_image(clusters, executor)
    snap = daemon.central.images["images"][image_id].snaps["snap"]
    good = snap.data[0]
    snap.data[0] = os.urandom(MiB)
    hasher = Daemon(executor, daemon.glance, daemon.store, trust=False)
    assert hasher.warm("edge2", image_id).reason == "checksum_mismatch"
    [key] = mismatched(daemon.store, image_id)
    marker = daemon.store._mismatched[key]
    glance_digest = "sha512:" + hashlib.sha512(data).hexdigest()
    assert marker.mismatched and marker.digest.startswith("sha512:")
    assert marker.digest != glance_digest  # what the bytes hashed to
    assert vouching(daemon.store, image_id) == {}  # the old record went
    snap.data[0] = good  # the bytes read right again (a transient fault)
    restarted = Daemon(executor, daemon.glance, daemon.store)
    assert restarted.warm("edge2", image_id).state == "warm"
    assert restarted.checks == [("edge2", "verified")]  # hashed, not trusted
    # Verified records of it appear: a match of a daemon that never read
    # the mismatch, and one an earlier version wrote; that version's
    # revoke drops the image's verified records, not the mismatch.
    careful = Daemon(executor, daemon.glance, daemon.store, trust=False)
    assert careful.warm("edge2", image_id).state == "warm"
    assert vouching(daemon.store, image_id)
    asyncio.run(daemon.store.put_verified(VerifiedSnapshot(
        marker.snapshot, glance_digest, len(data), 0.0, "older-version")))
    asyncio.run(daemon.store.remove_verified([image_id]))
    asyncio.run(daemon.store.put_verified(VerifiedSnapshot(
        marker.snapshot, glance_digest, len(data), 0.0, "older-version")))
    assert mismatched(daemon.store, image_id) == {key}
    assert restarted.evict("edge", image_id) == "removed"
    another = Daemon(executor, daemon.glance, daemon.store)
    assert another.warm("edge", image_id).state == "warm"
    assert another.checks == [("edge", "verified")]  # hashed again
    assert copied(image_id, "edge.conf") == data


def test_a_mismatch_is_recorded_before_the_verified_records_go(
        clusters: tuple[FakeCluster, FakeCluster], executor: Any) -> None:
    """A revoke whose removal of the verified records fails still leaves
    the mismatch recorded: no daemon trusts the snapshot."""
    class NoRemoval(MemoryStore):
        async def remove_verified(self, image_ids: Collection[str]) -> None:
            raise StateUnavailable("injected: the removal failed")
    store = NoRemoval()
    daemon, image_id, data = one_image(clusters, executor, store=store)
    daemon.central.images["images"][image_id].snaps["snap"].data[0] = os.urandom(MiB)
    hasher = Daemon(executor, daemon.glance, store, trust=False)
    assert hasher.warm("edge2", image_id).reason == "checksum_mismatch"
    assert vouching(store, image_id)  # the removal failed: the record stays
    assert len(mismatched(store, image_id)) == 1
    other = Daemon(executor, daemon.glance, store)
    assert other.warm("edge2", image_id).reason == "checksum_mismatch"
    assert other.checks == [("edge2", "mismatch")]  # hashed: not trusted


def test_a_deleted_image_leaves_no_mismatch_behind(
        clusters: tuple[FakeCluster, FakeCluster], executor: Any) -> None:
    daemon, image_id, _ = one_image(clusters, executor)
    daemon.central.images["images"][image_id].snaps["snap"].data[0] = os.urandom(MiB)
    hasher = Daemon(executor, daemon.glance, daemon.store, trust=False)
    assert hasher.warm("edge2", image_id).reason == "checksum_mismatch"
    assert mismatched(daemon.store, image_id)
    del daemon.glance.images[image_id]
    for name in ("edge", "edge2"):
        assert asyncio.run(daemon.targets[name].purge(image_id)) in ("removed", "gone")
    assert mismatched(daemon.store, image_id) == set()


def test_a_snapshot_recreated_under_the_same_name_is_hashed_again(
        clusters: tuple[FakeCluster, FakeCluster], executor: Any) -> None:
    """Same fsid, pool, image and snapshot name, Glance's digest unchanged,
    different data: trusting the old record would publish the wrong data."""
    daemon, image_id, data = one_image(clusters, executor)
    central, glance, store = daemon.central, daemon.glance, daemon.store
    old = set(records_of(store, image_id))
    recreate_snapshot(central, image_id, os.urandom(MiB) + data[MiB:])
    result = daemon.warm("edge2", image_id)
    assert result.reason == "checksum_mismatch"
    assert daemon.checks == [("edge", "verified"), ("edge2", "mismatch")]
    assert glance.added[-1][2] == "edge"  # nothing published in edge2
    # The same data again, under a third snapshot id: hashed (by another
    # daemon: this one does not try again until Glance's view changes),
    # matched, and only the newest snapshot's record stays.
    recreate_snapshot(central, image_id, data)
    other = Daemon(executor, glance, store)
    assert other.warm("edge2", image_id).state == "warm"
    assert other.checks == [("edge2", "verified")]
    (key,) = records_of(store, image_id)
    assert key not in old
    assert key.endswith(f"@{central.images['images'][image_id].snaps['snap'].id}")


def test_a_record_for_another_glance_digest_is_not_trusted(
        clusters: tuple[FakeCluster, FakeCluster], executor: Any) -> None:
    daemon, image_id, _ = one_image(clusters, executor)
    glance = daemon.glance
    image = glance.images[image_id]
    glance.images[image_id] = GlanceImage(
        dataclasses.replace(image.info, os_hash_value="00" * 64), image.locations)
    assert daemon.warm("edge2", image_id).reason == "checksum_mismatch"
    assert daemon.checks[-1] == ("edge2", "mismatch")


def test_a_record_for_another_rbd_image_of_the_same_name_is_not_trusted(
        clusters: tuple[FakeCluster, FakeCluster], executor: Any) -> None:
    """An image removed and created again under its name, whose new
    snapshot happens to get the old one's id (a pool re-created)."""
    daemon, image_id, data = one_image(clusters, executor)
    central = daemon.central
    old_id = central.images["images"][image_id].snaps["snap"].id
    tampered = central.put_image("images", image_id, os.urandom(MiB) + data[MiB:])
    tampered.snaps["snap"].id = old_id
    assert daemon.warm("edge2", image_id).reason == "checksum_mismatch"
    assert daemon.checks[-1] == ("edge2", "mismatch")


def test_a_failed_read_or_write_mid_copy_records_nothing(
        clusters: tuple[FakeCluster, FakeCluster], executor: Any) -> None:
    edge = clusters[1]
    daemon, image_id, _ = one_image(clusters, executor, data=os.urandom(8 * MiB), first=None)
    edge.fail["write"] = fake_rbd.RbdError("injected", 5)
    assert daemon.warm("edge", image_id).state != "warm"
    del edge.fail["write"]
    reads = 0
    real_read = fake_rbd.Image.read

    def read_then_fail(self: fake_rbd.Image, offset: int, length: int) -> bytes:
        nonlocal reads
        reads += 1
        if reads > 1:
            raise fake_rbd.RbdError("injected read error", 5)
        return real_read(self, offset, length)
    with pytest.MonkeyPatch.context() as mp:
        mp.setattr(fake_rbd.Image, "read", read_then_fail)
        assert daemon.warm("edge", image_id).state != "warm"
    assert records_of(daemon.store, image_id) == {}
    assert daemon.checks == []  # neither copy got as far as a verdict


class UnavailableStore(MemoryStore):
    def __init__(self) -> None:
        super().__init__()
        self.down = False

    async def verified(self, image_id: str) -> dict[str, VerifiedSnapshot]:
        if self.down:
            raise StateUnavailable("injected")
        return await super().verified(image_id)

    async def remove_verified(self, image_ids: Collection[str]) -> None:
        if self.down:
            raise StateUnavailable("injected")
        await super().remove_verified(image_ids)

    async def mismatched(self, image_id: str) -> set[str]:
        if self.down:
            raise StateUnavailable("injected")
        return await super().mismatched(image_id)

    async def put_mismatched(self, record: VerifiedSnapshot) -> None:
        if self.down:
            raise StateUnavailable("injected")
        await super().put_mismatched(record)


def test_a_state_that_cannot_be_read_means_hash(
        clusters: tuple[FakeCluster, FakeCluster], executor: Any) -> None:
    store = UnavailableStore()
    daemon, image_id, data = one_image(clusters, executor, store=store)
    store.down = True
    assert daemon.warm("edge2", image_id).state == "warm"
    assert daemon.checks == [("edge", "verified"), ("edge2", "verified")]
    assert copied(image_id) == data


class ShutDownStore(MemoryStore):
    """The state's executor shut down under a stopping daemon: every copy
    record call raises what ``Executor.submit`` raises then."""

    def __init__(self) -> None:
        super().__init__()
        self.down = False

    def _check(self) -> None:
        if self.down:
            raise RuntimeError("cannot schedule new futures after shutdown")

    async def verified(self, image_id: str) -> dict[str, VerifiedSnapshot]:
        self._check()
        return await super().verified(image_id)

    async def put_verified(self, record: VerifiedSnapshot) -> None:
        self._check()
        await super().put_verified(record)

    async def remove_verified(self, image_ids: Collection[str]) -> None:
        self._check()
        await super().remove_verified(image_ids)

    async def mismatched(self, image_id: str) -> set[str]:
        self._check()
        return await super().mismatched(image_id)

    async def put_mismatched(self, record: VerifiedSnapshot) -> None:
        self._check()
        await super().put_mismatched(record)

    async def put_cost(self, cost: CopyCost) -> None:
        self._check()
        await super().put_cost(cost)

    async def remove_cost(self, target: str, image_id: str) -> None:
        self._check()
        await super().remove_cost(target, image_id)


def test_a_state_that_raises_anything_means_hash_and_the_copy_is_still_published(
        clusters: tuple[FakeCluster, FakeCluster], executor: Any,
        caplog: pytest.LogCaptureFixture) -> None:
    store = ShutDownStore()
    daemon, image_id, data = one_image(clusters, executor, store=store)
    errors: list[tuple[str, str]] = []
    daemon.records._on_error = lambda op, exc: errors.append((op, type(exc).__name__))
    store.down = True
    result = daemon.warm("edge2", image_id)
    assert (result.state, result.reason) == ("warm", "cloneable")
    assert daemon.checks == [("edge", "verified"), ("edge2", "verified")]
    assert copied(image_id) == data
    assert errors == [("verified", "RuntimeError"), ("put_verified", "RuntimeError"),
                      ("put_cost", "RuntimeError")]
    assert daemon.evict("edge2", image_id) == "removed"
    assert errors[-1] == ("remove_cost", "RuntimeError")
    failed = [r for r in caplog.records if "shared state" in r.getMessage()]
    assert len(failed) == 4 and [r.exc_info is not None for r in failed].count(True) == 1


def test_a_lease_lost_during_a_slow_records_check_creates_no_temp_image(
        clusters: tuple[FakeCluster, FakeCluster], executor: Any) -> None:
    """The check may take up to records.TIMEOUT: a lease another daemon
    took meanwhile must be seen before create_temp, which removes (and
    re-creates) a temporary image that is the new holder's now."""
    edge2: FakeCluster | None = None

    class Slow(MemoryStore):
        async def verified(self, image_id: str) -> dict[str, VerifiedSnapshot]:
            if edge2 is None:  # the first copy, into edge
                return await super().verified(image_id)
            # Another daemon takes the lease (as after a partition outlived it).
            lock = edge2.objects["images"][f"warmer.lock.{image_id}"]
            lock.lock = ("warmer@b", -1, float("inf"))
            lock.xattrs["warmer.holder"] = b"warmer@b"
            return await super().verified(image_id)
    daemon, image_id, _ = one_image(clusters, executor, store=Slow())
    edge2 = FakeCluster.registry["edge2.conf"]
    edge2.log.clear()
    result = daemon.warm("edge2", image_id)
    assert result.reason == "lease_lost"
    assert "create" not in edge2.log  # nor any removal of what b may have made
    assert not any(op.startswith("remove") for op in edge2.log)


def test_without_trust_every_copy_hashes_and_records_are_still_written(
        clusters: tuple[FakeCluster, FakeCluster], executor: Any) -> None:
    daemon, image_id, _ = one_image(clusters, executor, trust=False)
    daemon.warm("edge2", image_id)
    assert daemon.checks == [("edge", "verified"), ("edge2", "verified")]
    assert len(records_of(daemon.store, image_id)) == 1


def test_a_download_through_glance_is_always_hashed_and_never_recorded(
        clusters: tuple[FakeCluster, FakeCluster], executor: Any) -> None:
    glance, store = FakeGlance(), MemoryStore()
    data = os.urandom(2 * MiB)
    image_id = "0c3b5f55-8f0e-4d0a-9a3e-2f6f7b6c1d10"
    glance.add(ImageInfo(image_id, "active", "raw", len(data), "public",
                         os_hash_algo="sha512",
                         os_hash_value=hashlib.sha512(data).hexdigest()),
               f"file:///var/lib/glance/images/{image_id}")

    class Response:
        def __init__(self) -> None:
            self.content = self

        async def iter_chunked(self, n: int) -> Any:
            for off in range(0, len(data), n):
                yield data[off:off + n]

        async def __aenter__(self) -> Response:
            return self

        async def __aexit__(self, *exc: object) -> None:
            pass
    glance.download = lambda _id: Response()  # type: ignore[attr-defined]
    glance.endpoint = "http://glance"  # type: ignore[attr-defined]
    daemon = Daemon(executor, glance, store)
    assert daemon.warm("edge", image_id).state == "warm"
    assert daemon.warm("edge2", image_id).state == "warm"
    assert daemon.checks == [("edge", "verified"), ("edge2", "verified")]
    assert records_of(store, image_id) == {}


def test_what_each_copy_cost_is_recorded_and_goes_with_the_copy(
        clusters: tuple[FakeCluster, FakeCluster], executor: Any) -> None:
    # 4 MiB of data, 1 MiB of allocated zeroes (read, not written), a hole, 4 MiB of data.
    data = os.urandom(4 * MiB) + bytes(8 * MiB) + os.urandom(4 * MiB)
    daemon, image_id, _ = one_image(clusters, executor, data=data, first=None)
    daemon.central.images["images"][image_id].snaps["snap"].data[4 * MiB] = bytes(MiB)
    store = daemon.store
    daemon.warm("edge", image_id)
    daemon.warm("edge2", image_id)
    edge = asyncio.run(store.costs("edge"))[image_id]
    edge2 = asyncio.run(store.costs("edge2"))[image_id]
    digest = "sha512:" + hashlib.sha512(data).hexdigest()
    for cost, check in ((edge, "verified"), (edge2, "skipped_verified")):
        assert (cost.copied_bytes, cost.read_bytes) == (8 * MiB, 9 * MiB)
        assert (cost.digest, cost.check, cost.by) == (digest, check, DAEMON)
        assert cost.seconds > 0 and cost.at > 0
        assert daemon.records.last_cost(cost.target, image_id) == cost
    assert daemon.evict("edge", image_id) == "removed"
    assert asyncio.run(store.costs("edge")) == {}
    assert daemon.records.last_cost("edge", image_id) is None
    assert image_id in asyncio.run(store.costs("edge2"))


def test_a_deleted_image_leaves_no_record_and_no_cost(
        clusters: tuple[FakeCluster, FakeCluster], executor: Any) -> None:
    daemon, image_id, _ = one_image(clusters, executor)
    glance, store = daemon.glance, daemon.store
    assert records_of(store, image_id) and asyncio.run(store.costs("edge"))
    # Glance deleted the image (and the data at its locations) first.
    del glance.images[image_id]
    for name in ("edge", "edge2"):
        assert asyncio.run(daemon.targets[name].purge(image_id)) in ("removed", "gone")
    assert records_of(store, image_id) == {}
    assert asyncio.run(store.costs("edge")) == {} == asyncio.run(store.costs("edge2"))


# -- the mismatch against the verified records, at the level of CopyRecords ----------
# (from a review: each fails with trusted()'s reads or revoke()'s writes in
# the other order, or with an unreadable mismatch object taken as empty)

RACE_ID = "0c3b5f55-8f0e-4d0a-9a3e-2f6f7b6c1d10"
RACE_SNAP = SourceSnapshot(RACE_ID, "fsid-central", "images", RACE_ID, 4, "10a2")
RACE_GOOD = "sha512:" + "aa" * 64


def test_a_mismatch_recorded_between_the_two_reads_is_honoured() -> None:
    """Daemon B's revoke runs while daemon A is inside trusted(): B's
    put_mismatched lands after A read the mismatches, B's remove_verified
    after A read the verified records. The mismatch was in the state
    before A decided: A must not trust the snapshot."""
    class Racing(MemoryStore):
        b: CopyRecords

        async def verified(self, image_id: str) -> dict[str, VerifiedSnapshot]:
            # B's revoke writes its mismatch just before A reads the records
            # (B's remove_verified has not run yet: the record is still there)
            await self.put_mismatched(VerifiedSnapshot(RACE_SNAP, "sha512:" + "ff" * 64, 10, 0.0,
                                                       "b", mismatched=True))
            return await super().verified(image_id)

    async def go() -> bool:
        store = Racing()
        await store.put_verified(VerifiedSnapshot(RACE_SNAP, RACE_GOOD, 10, 0.0, "c"))
        a = CopyRecords(store, "a")
        return await a.trusted(RACE_SNAP, RACE_GOOD, 10)
    assert asyncio.run(go()) is False


def test_an_unreadable_mismatch_object_means_hash_even_with_a_verified_record() -> None:
    class NoMismatchRead(MemoryStore):
        async def mismatched(self, image_id: str) -> set[str]:
            raise StateUnavailable("injected")

    async def go() -> bool:
        store = NoMismatchRead()
        await store.put_verified(VerifiedSnapshot(RACE_SNAP, RACE_GOOD, 10, 0.0, "c"))
        return await CopyRecords(store, "a").trusted(RACE_SNAP, RACE_GOOD, 10)
    assert asyncio.run(go()) is False


def test_a_crash_between_the_two_writes_of_revoke_leaves_the_mismatch() -> None:
    """revoke stopped (daemon killed) right after its first state write:
    the mismatch must be what is already written."""
    class Killed(MemoryStore):
        async def remove_verified(self, image_ids: Collection[str]) -> None:
            raise asyncio.CancelledError  # the process dies here

        async def put_mismatched(self, record: VerifiedSnapshot) -> None:
            await super().put_mismatched(record)
            raise asyncio.CancelledError  # or here

    async def go() -> set[str]:
        store = Killed()
        try:
            await CopyRecords(store, "b").revoke(RACE_ID, RACE_SNAP, "sha512:" + "ff" * 64, 10)
        except asyncio.CancelledError:
            pass
        return await store.mismatched(RACE_ID)
    assert asyncio.run(go()) == {RACE_SNAP.key}


def test_an_unhashed_copy_is_not_published_when_a_mismatch_is_recorded_while_it_runs(
        clusters: tuple[FakeCluster, FakeCluster], executor: Any) -> None:
    """Trust is decided when the source opens; another daemon's copy of the
    same snapshot may mismatch while this one copies without a hash. It is
    checked again before the result: nothing is published, nothing left,
    and the next copy hashes (a review's case)."""
    class MismatchDuringCopy(MemoryStore):
        armed = False

        async def mismatched(self, image_id: str) -> set[str]:
            found = await super().mismatched(image_id)
            if self.armed:  # another daemon's mismatch lands right after this read
                self.armed = False
                [record] = (await self.verified(image_id)).values()
                await self.put_mismatched(dataclasses.replace(
                    record, digest="sha512:" + "ff" * 64, by="other", mismatched=True))
            return found
    store = MismatchDuringCopy()
    daemon, image_id, data = one_image(clusters, executor, store=store)
    published = list(daemon.glance.added)
    store.armed = True
    result = daemon.warm("edge2", image_id)
    assert (result.state, result.reason) == ("cold", "trust_revoked")
    assert daemon.glance.added == published  # nothing published in edge2
    assert not [n for n in FakeCluster.registry["edge2.conf"].images["images"]
                if image_id in n]  # and nothing left there
    again = Daemon(executor, daemon.glance, store)
    assert again.warm("edge2", image_id).state == "warm"
    assert again.checks == [("edge2", "verified")]  # hashed
    assert copied(image_id) == data
