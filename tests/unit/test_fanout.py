"""Fan-out (warmer/warming/fanout.py, copy.copy_into): the copies of one
image into several targets that start together read the source once and
hash it once, and each target keeps its own writes, failure, lease and
verification check.

First the pipeline alone (several writers on one read), then real Targets
on the in-memory rados/rbd (tests/unit/fake_rbd.py): three clusters, edge,
edge2 and edge3, that copy from central, and the engine around them. Each
test here fails if the sharing is removed (a read or a hash per target), or
if one target's trouble reaches the others."""

from __future__ import annotations

import asyncio
import concurrent.futures
import errno
import hashlib
import os
import threading
import time
import uuid
from collections.abc import AsyncGenerator, Iterator
from typing import Any

import pytest

from tests.unit import fake_rbd
from tests.unit.fake_rbd import FakeCluster
from tests.unit.fakes import FakeGlance
from tests.unit.test_copy import CH, ListSource, expected_bytes, image_for
from tests.unit.test_target import CENTRAL, MiB, glance_image, take_lease_once_copying
from warmer.ceph import images as rbd_images
from warmer.ceph.client import CephClient, ClusterConfig
from warmer.events import ImageInfo
from warmer.glance.client import GlanceImage
from warmer.glance.stores import StoreCatalog
from warmer.metrics import Metrics
from warmer.popularity import Policy
from warmer.state.memory import MemoryStore
from warmer.tracker import Tracker, Weights
from warmer.warming.copy import Chunk, CopyStats, Verifier, Writer, WritersGone, copy_into
from warmer.warming.engine import Engine
from warmer.warming.fanout import Fanout, OpenedSource
from warmer.warming.records import CopyRecords
from warmer.warming.target import Target, TargetConfig, TargetResult

NAMES = ("edge", "edge2", "edge3")


# -- the pipeline: one read, one hash, several writers ------------------------------

class Sink:
    """A writer's image, in memory; ``fail_at`` makes the write at that
    offset raise (EIO), ``delay`` slows every write."""

    def __init__(self, delay: float = 0.0, fail_at: int | None = None) -> None:
        self.data: dict[int, bytes] = {}
        self.delay, self.fail_at = delay, fail_at
        self.lock = threading.Lock()

    def write(self, data: bytes, offset: int) -> int:
        if self.delay:
            time.sleep(self.delay)
        if offset == self.fail_at:
            raise OSError(errno.EIO, "EIO")
        with self.lock:
            self.data[offset] = data
        return len(data)

    def image(self, size: int) -> bytes:
        out = bytearray(size)
        for offset, data in self.data.items():
            out[offset:offset + len(data)] = data
        return bytes(out)


class CountedSource(ListSource):
    """A source that counts the pieces it yields (each read once)."""

    def __init__(self, chunks: list[bytes | None], delay: float = 0.0) -> None:
        super().__init__(chunks, delay)
        self.yielded = 0

    async def chunks(self, chunk_size: int) -> AsyncGenerator[Chunk, None]:
        async for piece in super().chunks(chunk_size):
            self.yielded += 1
            yield piece


@pytest.fixture
def hashed(monkeypatch: pytest.MonkeyPatch) -> list[int]:
    """Bytes given to every Verifier's hash, call by call."""
    calls: list[int] = []
    update = Verifier.update

    def count(self: Verifier, data: bytes | memoryview) -> None:
        calls.append(len(data))
        update(self, data)
    monkeypatch.setattr(Verifier, "update", count)
    return calls


def fan(source: ListSource, sinks: list[Sink], *, window: int = 4,
        leave_at: dict[int, int] | None = None) -> tuple[CopyStats | BaseException,
                                                          list[Writer], Verifier]:
    """copy_into ``sinks`` on their own thread pools; ``leave_at``: writer
    index -> the number of pieces read when it leaves."""
    verifier = Verifier(image_for(expected_bytes(source._chunks)))

    async def go() -> tuple[CopyStats | BaseException, list[Writer]]:
        pools = [concurrent.futures.ThreadPoolExecutor(4) for _ in sinks]
        writers = [Writer(s.write, pool) for s, pool in zip(sinks, pools, strict=True)]
        task = asyncio.create_task(copy_into(source, writers, verifier, window=window,
                                             chunk_size=CH))
        for index, at in (leave_at or {}).items():
            while source.yielded < at and not task.done():  # type: ignore[attr-defined]  # noqa: ASYNC110
                await asyncio.sleep(0.001)
            writers[index].leave()
            await writers[index].settled()
        try:
            result: CopyStats | BaseException = await task
        except (Exception, WritersGone) as exc:
            result = exc
        for pool in pools:
            pool.shutdown()
        return result, writers
    result, writers = asyncio.run(go())
    return result, writers, verifier


def test_one_read_and_one_hash_feed_every_writer(hashed: list[int]) -> None:
    chunks: list[bytes | None] = [os.urandom(CH), None, bytes(CH), os.urandom(CH)] * 4
    source = CountedSource(chunks)
    sinks = [Sink(), Sink(), Sink()]
    stats, writers, verifier = fan(source, sinks)
    assert isinstance(stats, CopyStats)
    assert source.yielded == len(chunks)  # read once, not once per writer
    assert sum(hashed) == source.size  # every byte hashed once, holes included
    verifier.verify()
    for sink in sinks:
        assert sink.image(source.size) == expected_bytes(chunks)
    assert stats.written == 8 * CH and stats.skipped_holes == stats.skipped_zeros == 4 * CH


def test_a_writer_that_fails_mid_stream_drops_out_and_the_others_get_every_byte() -> None:
    chunks: list[bytes | None] = [os.urandom(CH) for _ in range(16)]
    source = CountedSource(chunks)
    sinks = [Sink(), Sink(fail_at=5 * CH), Sink()]
    stats, writers, verifier = fan(source, sinks, window=2)
    assert isinstance(stats, CopyStats) and verifier.verify()
    assert isinstance(writers[1].error, OSError) and not writers[1].active
    for kept in (sinks[0], sinks[2]):
        assert kept.image(source.size) == expected_bytes(chunks)
    # It took no chunk after it failed, beyond those already handed to it.
    assert max(sinks[1].data) < 5 * CH + 2 * CH
    assert [w.active for w in writers] == [True, False, True]


def test_a_writer_that_leaves_mid_stream_ends_its_writes_and_the_read_goes_on() -> None:
    chunks: list[bytes | None] = [os.urandom(CH) for _ in range(16)]
    source = CountedSource(chunks, delay=0.002)
    sinks = [Sink(), Sink(delay=0.005)]
    stats, writers, _ = fan(source, sinks, window=2, leave_at={1: 4})
    assert isinstance(stats, CopyStats)
    assert sinks[0].image(source.size) == expected_bytes(chunks)
    assert len(sinks[1].data) < len(chunks)  # it stopped
    assert not writers[1]._jobs  # and none of its writes runs


def test_when_every_writer_is_gone_the_read_stops() -> None:
    chunks: list[bytes | None] = [os.urandom(CH) for _ in range(32)]
    source = CountedSource(chunks)
    result, writers, _ = fan(source, [Sink(fail_at=2 * CH), Sink(fail_at=3 * CH)], window=2)
    assert isinstance(result, WritersGone)
    assert source.yielded < 10  # not read to the end for nobody
    assert all(isinstance(w.error, OSError) for w in writers)


def test_a_source_that_fails_fails_every_writer() -> None:
    class Broken(CountedSource):
        async def chunks(self, chunk_size: int) -> AsyncGenerator[Chunk, None]:
            async for piece in super().chunks(chunk_size):
                if self.yielded == 4:
                    raise OSError(errno.EIO, "source EIO")
                yield piece
    source = Broken([os.urandom(CH) for _ in range(8)])
    result, writers, _ = fan(source, [Sink(), Sink()])
    assert isinstance(result, OSError) and "source EIO" in str(result)
    assert not any(w.active for w in writers)  # each told to stop


def test_chunks_and_writes_in_flight_are_bounded_across_all_writers() -> None:
    """The slowest writer sets the pace: the read is never more than the
    window ahead of it, and the writes in flight, all writers together,
    never exceed the window (librbd copies each one: memory)."""
    window, n = 3, 4
    chunks: list[bytes | None] = [os.urandom(CH) for _ in range(40)]
    source = CountedSource(chunks)
    in_flight, peak = 0, 0
    lock = threading.Lock()
    slow_done: list[int] = []
    ahead: list[int] = []

    class Counting(Sink):
        def write(self, data: bytes, offset: int) -> int:
            nonlocal in_flight, peak
            with lock:
                in_flight += 1
                peak = max(peak, in_flight)
                ahead.append(source.yielded - len(slow_done))
            written = super().write(data, offset)
            with lock:
                in_flight -= 1
                if self.delay:
                    slow_done.append(offset)
            return written
    sinks = [Counting(delay=0.01)] + [Counting() for _ in range(n - 1)]
    stats, _, _ = fan(source, sinks, window=window)  # type: ignore[arg-type]
    assert isinstance(stats, CopyStats)
    assert 1 < peak <= window
    assert max(ahead) <= window + 1  # what was read, beyond what the slowest wrote


# -- real targets sharing one read ------------------------------------------------

@pytest.fixture
def pools() -> Iterator[dict[str, concurrent.futures.ThreadPoolExecutor]]:
    """One thread pool per cluster, as the daemon gives each target its own."""
    made = {name: concurrent.futures.ThreadPoolExecutor(4) for name in ("central", *NAMES)}
    yield made
    for pool in made.values():
        pool.shutdown(wait=True)


class Fleet:
    """One daemon's targets edge, edge2 and edge3 (three clusters), copying
    from central, with one CopyRecords on an in-memory state."""

    def __init__(self, clusters: tuple[FakeCluster, FakeCluster],
                 pools: dict[str, concurrent.futures.ThreadPoolExecutor],
                 *, lock_seconds: int = 120) -> None:
        self.central, _ = clusters
        self.glance = FakeGlance()
        self.clusters = {"edge": clusters[1]}
        for name in NAMES[1:]:
            self.clusters[name] = FakeCluster(f"{name}.conf", f"fsid-{name}")
            self.glance.fsids[name] = f"fsid-{name}"
        central = CephClient(ClusterConfig("central.conf", "warmer"), pools["central"])
        self.store = MemoryStore()
        self.records = CopyRecords(self.store, "ctl-1")
        self.checks: list[tuple[str, str]] = []
        self.copied: list[tuple[str, CopyStats]] = []
        self.targets: dict[str, Target] = {}
        for name in NAMES:
            t = Target(TargetConfig(name, "volumes", name, True, copy_lock_seconds=lock_seconds),
                       CephClient(ClusterConfig(f"{name}.conf", "warmer"), pools[name]),
                       glance=self.glance, stores=StoreCatalog(self.glance),  # type: ignore[arg-type]
                       sources=lambda: {CENTRAL: central}, owner="warmer@ctl-1")
            t.records = self.records
            t.on_checked = lambda t, outcome: self.checks.append((t.name, outcome))
            t.on_copied = lambda t, stats: self.copied.append((t.name, stats))
            self.targets[name] = t

    def image(self, data: bytes) -> GlanceImage:
        return self.glance.images[glance_image(self.central, self.glance, data)]

    async def warm(self, image: GlanceImage, **fanout: Any) -> dict[str, TargetResult]:
        """Every target at once, with one Fanout (1 MiB chunks: many of them)."""
        async with Fanout(image.info, NAMES, chunk_size=MiB, **fanout) as shared:
            results = await asyncio.gather(*(t.warm(image, shared)
                                             for t in self.targets.values()))
        return dict(zip(NAMES, results, strict=True))

    def copy_of(self, name: str, image_id: str) -> bytes | None:
        img = self.clusters[name].images["images"].get(image_id)
        if img is None or "snap" not in img.snaps:
            return None
        return fake_rbd.Image(fake_rbd.Rados(f"{name}.conf").open_ioctx("images"), image_id,
                              snapshot="snap").read(0, img.size)

    def leftovers(self, name: str, image_id: str) -> list[str]:
        return [n for n in self.clusters[name].images["images"] if image_id in n]


@pytest.fixture
def source_reads(monkeypatch: pytest.MonkeyPatch) -> list[tuple[int, int]]:
    """(offset, length) of every read of central, the copies' source."""
    reads: list[tuple[int, int]] = []
    real = fake_rbd.Image.read

    def read(self: fake_rbd.Image, offset: int, length: int) -> bytes:
        if self.cluster.conffile == "central.conf":
            reads.append((offset, length))
        return real(self, offset, length)
    monkeypatch.setattr(fake_rbd.Image, "read", read)
    return reads


def read_times(monkeypatch: pytest.MonkeyPatch) -> list[float]:
    """When each ``Image.read`` (of any cluster) began, in order."""
    times: list[float] = []
    real = fake_rbd.Image.read

    def read(self: fake_rbd.Image, offset: int, length: int) -> bytes:
        times.append(time.monotonic())
        return real(self, offset, length)
    monkeypatch.setattr(fake_rbd.Image, "read", read)
    return times


def dense(size: int) -> bytes:
    return os.urandom(size)


def fail_from(monkeypatch: pytest.MonkeyPatch, call: str, conffile: str, offset: int) -> None:
    """``Image.read`` or ``Image.write`` fails (EIO) in the cluster of
    ``conffile``, from ``offset`` on."""
    real = getattr(fake_rbd.Image, call)

    def failing(self: fake_rbd.Image, *args: Any) -> Any:
        at = args[0] if call == "read" else args[1]
        if self.cluster.conffile == conffile and at >= offset:
            raise fake_rbd.RbdError(f"{call} EIO", errno.EIO)
        return real(self, *args)
    monkeypatch.setattr(fake_rbd.Image, call, failing)


def test_targets_that_copy_together_read_and_hash_the_source_once(
        clusters: tuple[FakeCluster, FakeCluster], pools: Any,
        source_reads: list[tuple[int, int]], hashed: list[int]) -> None:
    fleet = Fleet(clusters, pools)
    data = os.urandom(3 * MiB) + bytes(4 * MiB) + os.urandom(5 * MiB)
    image = fleet.image(data)
    results = asyncio.run(fleet.warm(image))
    assert {n: (r.state, r.reason) for n, r in results.items()} == {
        n: ("warm", "cloneable") for n in NAMES}
    # Once: every allocated byte read by one read, and every byte hashed once.
    assert sum(length for _, length in source_reads) == 8 * MiB
    assert len(set(source_reads)) == len(source_reads)
    assert sum(hashed) == len(data)
    for name in NAMES:
        assert fleet.copy_of(name, image.info.id) == data
    assert sorted(fleet.checks) == [(n, "verified") for n in NAMES]
    assert sorted(i for i, _, _ in fleet.glance.added) == [image.info.id] * 3
    # Each target's cost says the read was shared by three.
    costs = {n: fleet.records.last_cost(n, image.info.id) for n in NAMES}
    assert all(c is not None and c.fanout == 3 and c.read_bytes == 8 * MiB
               for c in costs.values()), costs
    # The snapshot is recorded verified once, for every later copy.
    assert len(asyncio.run(fleet.store.verified(image.info.id))) == 1


def test_one_target_whose_writes_fail_mid_copy_drops_out_and_the_others_are_warm(
        clusters: tuple[FakeCluster, FakeCluster], pools: Any,
        source_reads: list[tuple[int, int]], monkeypatch: pytest.MonkeyPatch) -> None:
    fleet = Fleet(clusters, pools)
    data = dense(16 * MiB)
    image = fleet.image(data)
    fail_from(monkeypatch, "write", "edge2.conf", 5 * MiB)
    results = asyncio.run(fleet.warm(image))
    assert (results["edge"].state, results["edge3"].state) == ("warm", "warm")
    assert results["edge2"].state != "warm"
    assert fleet.copy_of("edge", image.info.id) == fleet.copy_of("edge3", image.info.id) == data
    assert fleet.leftovers("edge2", image.info.id) == []  # its temporary image went
    assert sorted(url.split("/")[2] for _, url, _ in fleet.glance.added) == [
        "fsid-edge", "fsid-edge3"]
    assert sum(length for _, length in source_reads) == len(data)  # still one read


def test_a_target_whose_write_says_it_wrote_less_fails_alone(
        clusters: tuple[FakeCluster, FakeCluster], pools: Any,
        monkeypatch: pytest.MonkeyPatch) -> None:
    """A write into edge2 returns fewer bytes than it was given: edge2's copy
    fails (``short_write``) and is not published; the others are warm."""
    fleet = Fleet(clusters, pools)
    data = dense(8 * MiB)
    image = fleet.image(data)
    real = fake_rbd.Image.write

    def write(self: fake_rbd.Image, data: bytes, offset: int) -> int:
        written = real(self, data, offset)
        if self.cluster.conffile == "edge2.conf" and offset == 3 * MiB:
            return written - 512
        return written
    monkeypatch.setattr(fake_rbd.Image, "write", write)
    results = asyncio.run(fleet.warm(image))
    assert (results["edge2"].state, results["edge2"].reason) == ("cold", "short_write")
    assert (results["edge"].state, results["edge3"].state) == ("warm", "warm")
    assert fleet.leftovers("edge2", image.info.id) == []
    assert sorted(url.split("/")[2] for _, url, _ in fleet.glance.added) == [
        "fsid-edge", "fsid-edge3"]


def test_a_lost_lease_cancels_only_that_targets_copy(
        clusters: tuple[FakeCluster, FakeCluster], pools: Any,
        source_reads: list[tuple[int, int]]) -> None:
    fleet = Fleet(clusters, pools, lock_seconds=1)
    data = dense(24 * MiB)
    image = fleet.image(data)
    image_id = image.info.id
    edge2 = fleet.clusters["edge2"]
    edge2.write_delay = 0.2  # the slowest: it sets the pace until it drops out

    async def scenario() -> dict[str, TargetResult]:
        warming = asyncio.create_task(fleet.warm(image))
        await take_lease_once_copying(edge2, image_id)
        return await warming
    results = asyncio.run(scenario())
    assert results["edge2"].reason == "lease_lost"
    assert edge2.log.count("write") < 24  # cancelled mid-copy
    assert f"warmer-tmp.{image_id}" in edge2.images["images"]  # the new holder's now
    for name in ("edge", "edge3"):
        assert (results[name].state, results[name].reason) == ("warm", "cloneable")
        assert fleet.copy_of(name, image_id) == data
    assert sum(length for _, length in source_reads) == len(data)


def test_a_cancelled_target_drops_out_and_the_others_finish(
        clusters: tuple[FakeCluster, FakeCluster], pools: Any) -> None:
    fleet = Fleet(clusters, pools)
    data = dense(16 * MiB)
    image = fleet.image(data)
    image_id = image.info.id
    fleet.clusters["edge3"].write_delay = 0.05

    async def scenario() -> list[Any]:
        async with Fanout(image.info, NAMES, chunk_size=MiB) as shared:
            tasks = {n: asyncio.create_task(t.warm(image, shared))
                     for n, t in fleet.targets.items()}
            edge3 = fleet.clusters["edge3"]
            while edge3.log.count("write") < 3:  # noqa: ASYNC110
                await asyncio.sleep(0.01)
            tasks["edge3"].cancel()
            return await asyncio.gather(*tasks.values(), return_exceptions=True)
    started = time.monotonic()
    edge, edge2, edge3 = asyncio.run(scenario())
    assert isinstance(edge3, asyncio.CancelledError)
    assert (edge.state, edge2.state) == ("warm", "warm")
    assert fleet.copy_of("edge", image_id) == fleet.copy_of("edge2", image_id) == data
    assert fleet.leftovers("edge3", image_id) == []  # its temporary image went
    assert fleet.clusters["edge3"].log.count("write") < 16
    assert time.monotonic() - started < 16 * 0.05  # not held back at edge3's pace


def test_a_cancelled_target_never_closes_its_temporary_image_under_a_running_write(
        clusters: tuple[FakeCluster, FakeCluster], pools: Any) -> None:
    """edge3 is cancelled while a slow write of its runs on a thread: its
    temporary image is closed (and removed) only once that write ended.
    The fake librbd records a close under a running call (real librbd
    crashes there)."""
    fleet = Fleet(clusters, pools)
    data = dense(16 * MiB)
    image = fleet.image(data)
    edge3 = fleet.clusters["edge3"]
    edge3.write_delay = 0.3

    async def scenario() -> list[Any]:
        async with Fanout(image.info, NAMES, chunk_size=MiB) as shared:
            tasks = {n: asyncio.create_task(t.warm(image, shared))
                     for n, t in fleet.targets.items()}
            while edge3.log.count("write") < 2:  # noqa: ASYNC110
                await asyncio.sleep(0.01)
            tasks["edge3"].cancel()  # a write of edge3's is running now
            return await asyncio.gather(*tasks.values(), return_exceptions=True)
    edge, edge2, cancelled = asyncio.run(scenario())
    assert fake_rbd.closed_under_calls == []
    assert isinstance(cancelled, asyncio.CancelledError)
    assert (edge.state, edge2.state) == ("warm", "warm")
    assert fleet.leftovers("edge3", image.info.id) == []


class Room:
    """A budget that admits every copy and notes when each is released."""

    def __init__(self) -> None:
        self.released: dict[str, float] = {}

    async def admit(self, target: Target, image_id: str, size: int) -> bool:
        return True

    def release(self, target: Target, image_id: str) -> None:
        self.released[target.name] = time.monotonic()


def test_a_target_whose_write_fails_lets_go_while_the_read_goes_on(
        clusters: tuple[FakeCluster, FakeCluster], pools: Any,
        monkeypatch: pytest.MonkeyPatch) -> None:
    """edge2's write fails early in a slow read: it returns its failure, with
    its temporary image, its lease and its budget reservation released,
    while the others' read still runs; it does not wait for that to end."""
    fleet = Fleet(clusters, pools)
    data = dense(24 * MiB)
    image = fleet.image(data)
    image_id = image.info.id
    room = Room()
    for t in fleet.targets.values():
        t.budget = room
    fail_from(monkeypatch, "write", "edge2.conf", MiB)
    reads: list[int] = []
    real = fake_rbd.Image.read

    def slow_read(self: fake_rbd.Image, offset: int, length: int) -> bytes:
        if self.cluster.conffile == "central.conf":
            time.sleep(0.1)
            reads.append(offset)
        return real(self, offset, length)
    monkeypatch.setattr(fake_rbd.Image, "read", slow_read)
    edge2 = fleet.clusters["edge2"]

    async def scenario() -> tuple[TargetResult, int, bool, list[Any]]:
        async with Fanout(image.info, NAMES, chunk_size=MiB) as shared:
            tasks = {n: asyncio.create_task(t.warm(image, shared))
                     for n, t in fleet.targets.items()}
            failed = await tasks["edge2"]
            read_then = len(reads)
            others_running = not tasks["edge"].done() and not tasks["edge3"].done()
            assert fleet.leftovers("edge2", image_id) == []
            lock = edge2.objects["images"].get(f"warmer.lock.{image_id}")
            assert lock is None or lock.lock is None  # its lease released
            assert "edge2" in room.released and "edge" not in room.released
            rest = await asyncio.gather(tasks["edge"], tasks["edge3"])
        return failed, read_then, others_running, rest
    failed, read_then, others_running, rest = asyncio.run(scenario())
    assert failed.state != "warm"
    assert others_running and read_then < 24 // 2  # let go early in the read
    assert [r.state for r in rest] == ["warm", "warm"]
    assert len(reads) == 24


class Stalling(CountedSource):
    """A download that stalls for good after ``after`` pieces; ``closed``
    once its stream closed it."""

    def __init__(self, chunks: list[bytes | None], after: int) -> None:
        super().__init__(chunks)
        self.after = after
        self.stalled = asyncio.Event()
        self.closed = False

    async def chunks(self, chunk_size: int) -> AsyncGenerator[Chunk, None]:
        async for piece in super().chunks(chunk_size):
            if self.yielded > self.after:
                self.stalled.set()
                await asyncio.Event().wait()  # never comes
            yield piece

    async def close(self) -> None:
        self.closed = True


def opener_of(source: Stalling) -> Any:
    async def opener() -> OpenedSource:
        return OpenedSource(source, None, source.close)
    return opener


def test_when_every_target_left_a_stalled_read_stops_at_once() -> None:
    """Both targets' copies are cancelled (a stop, lost leases) while the
    source stalls: the read is stopped, its source closed, and the fan-out
    ends at once, not when the source answers (if ever)."""
    chunks: list[bytes | None] = [os.urandom(CH) for _ in range(16)]
    source = Stalling(chunks, after=3)
    info = image_for(expected_bytes(chunks))

    async def scenario() -> bool:
        pool = concurrent.futures.ThreadPoolExecutor(2)
        shared = Fanout(info, ("a", "b"), chunk_size=CH)
        for name in ("a", "b"):
            await shared.source(name, opener_of(source), None)
        copies = [asyncio.create_task(shared.copy(name, Writer(Sink().write, pool)))
                  for name in ("a", "b")]
        await source.stalled.wait()
        for copy in copies:
            copy.cancel()
        await asyncio.gather(*copies, return_exceptions=True)
        closing = asyncio.create_task(shared.close())
        done, _ = await asyncio.wait({closing}, timeout=5)
        pool.shutdown()
        return closing in done  # else asyncio.run cancels the read on its way out
    assert asyncio.run(scenario()), "the read went on for nobody"
    assert source.closed


def test_closing_the_fanout_ends_a_read_that_still_waits_for_targets() -> None:
    """Target a opened the source and then left without copying (its
    temporary image could not be made, say); b, named, never came. Closing
    the fan-out starts what still waits (for nobody now): the read ends and
    its source is closed."""
    chunks: list[bytes | None] = [os.urandom(CH) for _ in range(4)]
    source = Stalling(chunks, after=len(chunks))
    info = image_for(expected_bytes(chunks))

    async def scenario() -> bool:
        shared = Fanout(info, ("a", "b"), chunk_size=CH, wait=60)
        await shared.source("a", opener_of(source), None)
        shared.leave("a")
        closing = asyncio.create_task(shared.close())
        done, _ = await asyncio.wait({closing}, timeout=5)
        return closing in done
    assert asyncio.run(scenario()), "the read still waits for targets that never come"
    assert source.closed and source.yielded == 0


class SlowRoom:
    """A budget that takes ``delay`` seconds to admit ``slow`` (it evicts,
    say), and notes when."""

    def __init__(self, slow: str, delay: float) -> None:
        self.slow, self.delay = slow, delay
        self.admitted: dict[str, float] = {}

    async def admit(self, target: Target, image_id: str, size: int) -> bool:
        if target.name == self.slow:
            await asyncio.sleep(self.delay)
        self.admitted[target.name] = time.monotonic()
        return True

    def release(self, target: Target, image_id: str) -> None:
        pass


def test_a_target_not_ready_within_the_wait_reads_on_its_own(
        clusters: tuple[FakeCluster, FakeCluster], pools: Any, monkeypatch: pytest.MonkeyPatch,
        source_reads: list[tuple[int, int]]) -> None:
    fleet = Fleet(clusters, pools)
    data = dense(8 * MiB)
    image = fleet.image(data)
    room = SlowRoom("edge3", 1.0)
    first_read = read_times(monkeypatch)
    for t in fleet.targets.values():
        t.budget = room
    results = asyncio.run(fleet.warm(image, wait=0.2))
    assert all((r.state, r.reason) == ("warm", "cloneable") for r in results.values())
    # edge and edge2 did not wait for edge3, which then read on its own.
    assert min(first_read) < room.admitted["edge3"]
    assert sum(length for _, length in source_reads) == 2 * len(data)
    assert {n: fleet.records.last_cost(n, image.info.id).fanout  # type: ignore[union-attr]
            for n in NAMES} == {"edge": 2, "edge2": 2, "edge3": 1}
    for name in NAMES:
        assert fleet.copy_of(name, image.info.id) == data


def test_a_target_whose_temporary_image_comes_after_the_read_started_reads_on_its_own(
        clusters: tuple[FakeCluster, FakeCluster], pools: Any, monkeypatch: pytest.MonkeyPatch,
        source_reads: list[tuple[int, int]]) -> None:
    """edge3 opened the source in time (it was sized by the shared read),
    but its temporary image comes only once that read started: it must read
    on its own. Joined to the shared read instead, it would get no chunk and
    still the shared result, and publish an image of zeroes."""
    fleet = Fleet(clusters, pools)
    data = dense(8 * MiB)
    image = fleet.image(data)
    real = rbd_images.create_temp

    def slow_create(cluster: Any, pool: str, *args: Any) -> rbd_images.OpenImage:
        if cluster.cluster.conffile == "edge3.conf":
            time.sleep(1.0)  # past the wait: the others' read has started
        return real(cluster, pool, *args)
    monkeypatch.setattr(rbd_images, "create_temp", slow_create)
    results = asyncio.run(fleet.warm(image, wait=0.2))
    assert {n: (r.state, r.reason) for n, r in results.items()} == {
        n: ("warm", "cloneable") for n in NAMES}
    for name in NAMES:
        assert fleet.copy_of(name, image.info.id) == data, name
    assert sum(length for _, length in source_reads) == 2 * len(data)
    assert {n: fleet.records.last_cost(n, image.info.id).fanout  # type: ignore[union-attr]
            for n in NAMES} == {"edge": 2, "edge2": 2, "edge3": 1}


def test_a_target_that_needs_no_copy_does_not_hold_the_read_back(
        clusters: tuple[FakeCluster, FakeCluster], pools: Any) -> None:
    """edge3 already has the copy: it leaves at once, and the others start
    without waiting out the fan-out's wait."""
    fleet = Fleet(clusters, pools)
    data = dense(4 * MiB)
    image = fleet.image(data)
    assert asyncio.run(fleet.targets["edge3"].warm(image)).state == "warm"
    image = fleet.glance.images[image.info.id]  # with edge3's location now
    started = time.monotonic()
    results = asyncio.run(fleet.warm(image, wait=30))
    assert all(r.state == "warm" for r in results.values())
    assert time.monotonic() - started < 10


def test_a_target_that_needs_no_copy_leaves_before_its_checks(
        clusters: tuple[FakeCluster, FakeCluster], pools: Any, monkeypatch: pytest.MonkeyPatch,
        source_reads: list[tuple[int, int]]) -> None:
    """edge3 has the image in its cluster, and checking that copy takes a
    while: the others' read does not wait for those checks (nor for the
    fan-out's wait), since edge3 copies nothing."""
    fleet = Fleet(clusters, pools)
    data = dense(4 * MiB)
    image = fleet.image(data)
    assert asyncio.run(fleet.targets["edge3"].warm(image)).state == "warm"
    image = fleet.glance.images[image.info.id]  # with edge3's location now
    edge3 = fleet.targets["edge3"]
    real = edge3._warm_location
    checked: list[float] = []

    async def slow_check(loc: Any) -> TargetResult:
        await asyncio.sleep(1.0)
        result = await real(loc)
        checked.append(time.monotonic())
        return result
    monkeypatch.setattr(edge3, "_warm_location", slow_check)
    first_read = read_times(monkeypatch)
    results = asyncio.run(fleet.warm(image, wait=30))
    assert all(r.state == "warm" for r in results.values())
    assert min(first_read) < checked[0]


def test_a_checksum_mismatch_fails_every_target_and_revokes_once(
        clusters: tuple[FakeCluster, FakeCluster], pools: Any,
        monkeypatch: pytest.MonkeyPatch) -> None:
    fleet = Fleet(clusters, pools)
    data = dense(8 * MiB)
    image = fleet.image(data)
    fleet.central.images["images"][image.info.id].snaps["snap"].data[0] = os.urandom(MiB)
    revoked: list[list[str]] = []
    real = fleet.store.remove_verified

    async def remove_verified(image_ids: list[str]) -> None:
        revoked.append(list(image_ids))
        await real(image_ids)
    monkeypatch.setattr(fleet.store, "remove_verified", remove_verified)
    results = asyncio.run(fleet.warm(image))
    assert {r.reason for r in results.values()} == {"checksum_mismatch"}
    assert sorted(fleet.checks) == [(n, "mismatch") for n in NAMES]
    assert revoked == [[image.info.id]]
    assert fleet.glance.added == []
    assert all(fleet.leftovers(n, image.info.id) == [] for n in NAMES)


def test_a_source_that_fails_mid_read_fails_every_target(
        clusters: tuple[FakeCluster, FakeCluster], pools: Any,
        monkeypatch: pytest.MonkeyPatch) -> None:
    fleet = Fleet(clusters, pools)
    image = fleet.image(dense(16 * MiB))
    fail_from(monkeypatch, "read", "central.conf", 6 * MiB)
    results = asyncio.run(fleet.warm(image))
    assert all(r.state != "warm" for r in results.values()), results
    assert fleet.glance.added == [] and fleet.checks == []
    assert all(fleet.leftovers(n, image.info.id) == [] for n in NAMES)


# -- the engine: the targets of one evaluation share ----------------------------------

def test_the_engine_warms_every_target_from_one_read(
        clusters: tuple[FakeCluster, FakeCluster], pools: Any,
        source_reads: list[tuple[int, int]]) -> None:
    fleet = Fleet(clusters, pools)
    data = dense(8 * MiB)
    image_id = str(uuid.uuid4())
    fleet.central.put_image("images", image_id, data)
    info = ImageInfo(image_id, "active", "raw", len(data), "public",
                     os_hash_algo="sha512", os_hash_value=hashlib.sha512(data).hexdigest(),
                     tags=frozenset({"warmer-pin"}))
    fleet.glance.add(info, f"rbd://{CENTRAL}/images/{image_id}/snap")
    tracker = Tracker(half_life=3600, weights=Weights(), policy=Policy(), threshold=2.0,
                      top_k=0, dedup_window=100)
    tracker.observe(info)
    metrics = Metrics()
    engine = Engine(tracker, fleet.glance, list(fleet.targets.values()), metrics,  # type: ignore[arg-type]
                    workers=1, reconcile_interval=3600, retry_delay=60,
                    stores=StoreCatalog(fleet.glance))  # type: ignore[arg-type]
    asyncio.run(engine.evaluate(image_id))
    assert {(row.target, row.state) for row in engine.status(image_id)} == {
        (n, "warm") for n in NAMES}
    assert sum(length for _, length in source_reads) == len(data)
    assert metrics.copy_source_reads._value.get() == 1
    assert metrics.copy_source_read_bytes._value.get() == len(data)
    assert sorted(n for n, _ in fleet.copied) == sorted(NAMES)
