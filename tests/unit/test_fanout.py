"""Fan-out, the pipeline (copy.copy_into): one read and one hash written
into several writers, each with its own failure. Each test here fails if
the sharing is removed (a read or a hash per writer), or if one writer's
trouble reaches the others."""

from __future__ import annotations

import asyncio
import concurrent.futures
import errno
import os
import threading
import time
from collections.abc import AsyncGenerator

import pytest

from tests.unit.test_copy import CH, ListSource, expected_bytes, image_for
from warmer.warming.copy import Chunk, CopyStats, Verifier, Writer, WritersGone, copy_into

NAMES = ("edge", "edge2", "edge3")


# -- the pipeline: one read, one hash, several writers ------------------------------

class Sink:
    """A writer's image, in memory; ``fail_at`` makes the write at that
    offset raise (EIO), ``delay`` slows every write."""

    def __init__(self, delay: float = 0.0, fail_at: int | None = None) -> None:
        self.data: dict[int, bytes] = {}
        self.delay, self.fail_at = delay, fail_at
        self.lock = threading.Lock()

    def write(self, data: bytes, offset: int) -> None:
        if self.delay:
            time.sleep(self.delay)
        if offset == self.fail_at:
            raise OSError(errno.EIO, "EIO")
        with self.lock:
            self.data[offset] = data

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
        def write(self, data: bytes, offset: int) -> None:
            nonlocal in_flight, peak
            with lock:
                in_flight += 1
                peak = max(peak, in_flight)
                ahead.append(source.yielded - len(slow_done))
            super().write(data, offset)
            with lock:
                in_flight -= 1
                if self.delay:
                    slow_done.append(offset)
    sinks = [Counting(delay=0.01)] + [Counting() for _ in range(n - 1)]
    stats, _, _ = fan(source, sinks, window=window)  # type: ignore[arg-type]
    assert isinstance(stats, CopyStats)
    assert 1 < peak <= window
    assert max(ahead) <= window + 1  # what was read, beyond what the slowest wrote
