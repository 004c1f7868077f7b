"""The copy pipeline: sparse, ordered hashing, verification, bounded memory."""

from __future__ import annotations

import asyncio
import concurrent.futures
import hashlib
import os
import threading
import time
from collections.abc import AsyncGenerator, Callable

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from warmer.events import ImageInfo
from warmer.warming import copy as copy_module
from warmer.warming.copy import Chunk, CopyError, RbdSource, Verifier, copy

CH = 64 * 1024  # small chunks keep the tests fast


class ListSource:
    def __init__(self, chunks: list[bytes | None], delay: float = 0.0) -> None:
        self._chunks = chunks
        self.size = sum(len(c) if c is not None else CH for c in chunks)
        self.description = "test"
        self._delay = delay

    async def chunks(self, chunk_size: int) -> AsyncGenerator[Chunk, None]:
        offset = 0
        for c in self._chunks:
            length = len(c) if c is not None else chunk_size
            if self._delay:
                await asyncio.sleep(self._delay)
            yield offset, length, c
            offset += length


def expected_bytes(chunks: list[bytes | None]) -> bytes:
    return b"".join(c if c is not None else bytes(CH) for c in chunks)


def image_for(data: bytes, algo: str = "sha512") -> ImageInfo:
    return ImageInfo(id="i", status="active", disk_format="raw", size=len(data),
                     os_hash_algo=algo, os_hash_value=hashlib.new(algo, data).hexdigest(),
                     checksum=hashlib.md5(data).hexdigest())


def into(written: dict[int, bytes]) -> Callable[[bytes, int], int]:
    """A write into ``written`` (offset -> bytes) that returns, as rbd's
    ``Image.write`` does, the number of bytes it wrote."""
    def write(data: bytes, offset: int) -> int:
        written[offset] = data
        return len(data)
    return write


def run_copy(chunks: list[bytes | None], info: ImageInfo | None = None, window: int = 4,
             write_delay: float = 0.0) -> tuple[dict[int, bytes], object]:
    written: dict[int, bytes] = {}
    lock = threading.Lock()

    def write(data: bytes, offset: int) -> int:
        if write_delay:
            time.sleep(write_delay)
        with lock:
            written[offset] = data
        return len(data)
    verifier = Verifier(info or image_for(expected_bytes(chunks)))

    async def go() -> object:
        with concurrent.futures.ThreadPoolExecutor(4) as pool:
            stats = await copy(ListSource(chunks), write, verifier, pool, window=window,
                               chunk_size=CH)
        verifier.verify()
        return stats
    return written, asyncio.run(go())


def test_holes_and_zero_chunks_are_never_written_but_are_hashed() -> None:
    data = os.urandom(CH)
    chunks = [data, None, bytes(CH), data, None]
    written, stats = run_copy(chunks)
    assert written == {0: data, 3 * CH: data}
    assert (stats.written, stats.skipped_holes, stats.skipped_zeros) == (2 * CH, 2 * CH, CH)


@settings(max_examples=30, deadline=None)
@given(st.lists(st.sampled_from(["data", "hole", "zero"]), min_size=1, max_size=12))
def test_digest_covers_every_byte_in_order(kinds: list[str]) -> None:
    chunks: list[bytes | None] = [os.urandom(CH) if k == "data" else None if k == "hole"
                                  else bytes(CH) for k in kinds]
    written, _ = run_copy(chunks, write_delay=0.001)
    image = expected_bytes(chunks)
    rebuilt = bytearray(len(image))
    for offset, data in written.items():
        rebuilt[offset:offset + len(data)] = data
    assert bytes(rebuilt) == image


def test_zero_blocks_within_a_chunk_are_not_written() -> None:
    block = copy_module.ZERO_BLOCK
    data = (os.urandom(block) + bytes(2 * block) + os.urandom(block // 2) + bytes(block // 2)
            + bytes(3 * block))
    written: dict[int, bytes] = {}

    async def go() -> object:
        with concurrent.futures.ThreadPoolExecutor(2) as pool:
            return await copy(ListSource([data]), into(written),
                              Verifier(image_for(data)), pool, chunk_size=len(data))
    stats = asyncio.run(go())
    assert written == {0: data[:block], 3 * block: data[3 * block:4 * block]}
    assert (stats.written, stats.skipped_zeros) == (2 * block, 5 * block)  # type: ignore[attr-defined]


@settings(max_examples=60, deadline=None)
@given(st.lists(st.sampled_from(["data", "zero", "short"]), min_size=0, max_size=10),
       st.integers(1, 4))
def test_nonzero_runs_cover_every_non_zero_byte_and_no_zero_block(kinds: list[str],
                                                                   block: int) -> None:
    data = b"".join(os.urandom(block) if k == "data" else bytes(block) if k == "zero"
                    else b"\0" * (block - 1) + b"x" for k in kinds)
    runs = copy_module.nonzero_runs(data, block)
    rebuilt = bytearray(len(data))
    for start, end in runs:
        rebuilt[start:end] = data[start:end]
    assert bytes(rebuilt) == data
    assert all(a[1] < b[0] for a, b in zip(runs, runs[1:], strict=False))  # apart, in order
    for start, end in runs:
        for at in range(start, end, block):
            assert data[at:at + block].strip(b"\0")  # no zero block is written


def test_mismatch_against_glance_hash_is_an_error() -> None:
    chunks: list[bytes | None] = [os.urandom(CH)]
    wrong = image_for(os.urandom(CH))
    with pytest.raises(CopyError) as err:
        run_copy(chunks, wrong)
    assert err.value.reason == "checksum_mismatch"


def test_md5_checksum_is_used_when_there_is_no_multihash() -> None:
    data = os.urandom(CH)
    info = ImageInfo(id="i", status="active", checksum=hashlib.md5(data).hexdigest())
    v = Verifier(info)
    v.update(data)
    assert v.verify().startswith("md5:")


def test_no_checksum_at_all_is_refused_unless_allowed() -> None:
    info = ImageInfo(id="i", status="active")
    with pytest.raises(CopyError, match="no_glance_checksum"):
        Verifier(info)
    assert Verifier(info, allow_unverified=True).verify() == "unverified"


def test_a_trusted_copy_hashes_nothing_and_verifies_as_glances_digest(
        monkeypatch: pytest.MonkeyPatch) -> None:
    data = os.urandom(CH)
    chunks: list[bytes | None] = [data, None, bytes(CH), data]
    info = image_for(expected_bytes(chunks))
    verifier = Verifier(info)
    assert verifier.hashing and verifier.outcome == ""
    verifier.trust()
    hashed: list[int] = []
    monkeypatch.setattr(Verifier, "update", lambda self, d: hashed.append(len(d)))
    written: dict[int, bytes] = {}

    async def go() -> object:
        with concurrent.futures.ThreadPoolExecutor(2) as pool:
            return await copy(ListSource(chunks), into(written),
                              verifier, pool, chunk_size=CH)
    stats = asyncio.run(go())
    assert hashed == []  # not one byte
    assert written == {0: data, 3 * CH: data}
    assert stats.read == 3 * CH  # type: ignore[attr-defined]  # the hole was not read
    assert verifier.verify() == f"sha512:{info.os_hash_value}"
    assert verifier.outcome == "skipped_verified"


def test_the_outcome_says_how_a_copy_was_checked() -> None:
    data = os.urandom(CH)
    ok = Verifier(image_for(data))
    ok.update(data)
    ok.verify()
    assert ok.outcome == "verified" and ok.stamp == ok.digest
    trusted = Verifier(image_for(data))
    trusted.trust()
    trusted.verify()
    assert trusted.stamp == f"skipped_verified:{trusted.digest}"
    bad = Verifier(image_for(data))
    bad.update(os.urandom(CH))
    with pytest.raises(CopyError):
        bad.verify()
    assert bad.outcome == "mismatch"
    with pytest.raises(ValueError):
        bad.stamp  # noqa: B018  # nothing to stamp a mismatch with
    unverifiable = Verifier(ImageInfo(id="i", status="active"), allow_unverified=True)
    assert unverifiable.outcome == "unverified" and unverifiable.digest is None
    assert unverifiable.stamp == "unverified"
    with pytest.raises(ValueError):
        unverifiable.trust()  # nothing to trust


def test_short_source_is_an_error() -> None:
    class Short(ListSource):
        async def chunks(self, chunk_size: int) -> AsyncGenerator[Chunk, None]:
            yield 0, CH, os.urandom(CH)

    async def go() -> None:
        src = Short([os.urandom(CH), os.urandom(CH)])
        with concurrent.futures.ThreadPoolExecutor(2) as pool:
            await copy(src, lambda d, o: len(d), Verifier(ImageInfo("i", "active"),
                                                       allow_unverified=True),
                       pool, chunk_size=CH)
    with pytest.raises(CopyError, match="short_read"):
        asyncio.run(go())


class ShortReads:
    """An rbd image whose ``read`` returns fewer bytes than asked at
    ``short_at`` (librbd's Image.read may)."""

    def __init__(self, data: bytes, short_at: int) -> None:
        self.data, self.short_at, self.reads = data, short_at, 0

    def read(self, offset: int, length: int) -> bytes:
        self.reads += 1
        got = self.data[offset:offset + length]
        return got[:-1] if offset <= self.short_at < offset + length else got


@pytest.mark.parametrize("trusted", [False, True])
def test_a_short_read_fails_the_copy_whether_hashed_or_trusted(trusted: bool) -> None:
    """A trusted copy hashes nothing: without a length check, a short read
    would be counted as whole and the copy published with bytes missing."""
    data = os.urandom(3 * CH)
    verifier = Verifier(image_for(data))
    if trusted:
        verifier.trust()

    async def go() -> None:
        with concurrent.futures.ThreadPoolExecutor(2) as pool:
            src = RbdSource(ShortReads(data, CH + 7), len(data), [(0, len(data))], pool, "t")
            await copy(src, lambda d, o: len(d), verifier, pool, chunk_size=CH)
    with pytest.raises(CopyError, match="short_read"):
        asyncio.run(go())


def test_chunks_in_flight_are_bounded_by_the_window() -> None:
    in_flight = 0
    peak = 0
    lock = threading.Lock()

    def slow_write(data: bytes, offset: int) -> int:
        nonlocal in_flight, peak
        with lock:
            in_flight += 1
            peak = max(peak, in_flight)
        time.sleep(0.01)
        with lock:
            in_flight -= 1
        return len(data)

    chunks: list[bytes | None] = [os.urandom(CH) for _ in range(40)]

    async def go() -> None:
        with concurrent.futures.ThreadPoolExecutor(16) as pool:
            await copy(ListSource(chunks), slow_write,
                       Verifier(image_for(expected_bytes(chunks))), pool, window=3,
                       chunk_size=CH)
    asyncio.run(go())
    assert 1 < peak <= 3


def test_a_failed_write_fails_the_copy() -> None:
    def broken(data: bytes, offset: int) -> int:
        raise OSError("EIO")

    chunks: list[bytes | None] = [os.urandom(CH) for _ in range(3)]

    async def go() -> None:
        with concurrent.futures.ThreadPoolExecutor(2) as pool:
            await copy(ListSource(chunks), broken, Verifier(image_for(expected_bytes(chunks))),
                       pool, chunk_size=CH)
    with pytest.raises(OSError, match="EIO"):
        asyncio.run(go())


@pytest.mark.parametrize("said", [CH - 1, 0, None])
def test_a_write_that_says_it_wrote_less_fails_the_copy(said: int | None) -> None:
    """rbd's Image.write returns the bytes it wrote: a piece not all written
    is a failed copy (``short_write``), never zeroes left in the copy."""
    chunks: list[bytes | None] = [os.urandom(CH) for _ in range(4)]

    def short(data: bytes, offset: int) -> int:
        return said if offset == 2 * CH else len(data)  # type: ignore[return-value]

    async def go() -> None:
        with concurrent.futures.ThreadPoolExecutor(2) as pool:
            await copy(ListSource(chunks), short, Verifier(image_for(expected_bytes(chunks))),
                       pool, chunk_size=CH)
    with pytest.raises(CopyError, match=f"short_write: {said!r} of {CH} bytes written at "
                                        f"offset {2 * CH}"):
        asyncio.run(go())


def test_rbd_source_reads_each_chunk_from_its_first_allocated_byte_to_its_last() -> None:
    src = RbdSource(None, 10 * CH, [(CH, 10), (CH + 100, 20), (5 * CH - 5, 2 * CH)],  # type: ignore[arg-type]
                    None, "t")  # type: ignore[arg-type]
    assert list(src.pieces(CH)) == [
        (0, CH, False), (CH, 120, True), (CH + 120, 4 * CH - 125, False),
        (5 * CH - 5, 5, True), (5 * CH, CH, True), (6 * CH, CH - 5, True),
        (7 * CH - 5, 3 * CH + 5, False)]
    assert src.allocated_bytes == 30 + 2 * CH


@settings(max_examples=200, deadline=None)
@given(st.lists(st.tuples(st.integers(0, 40), st.integers(0, 12)), max_size=6),
       st.integers(1, 40), st.integers(1, 8))
def test_rbd_source_pieces_cover_the_image_in_order(extents: list[tuple[int, int]],
                                                    size: int, chunk: int) -> None:
    """Every allocated byte is in a read; a read lies within one chunk, at
    most one per chunk, and starts and ends on allocated bytes; holes are
    never two in a row."""
    extents.sort()
    src = RbdSource(None, size, extents, None, "t")  # type: ignore[arg-type]
    pieces = list(src.pieces(chunk))
    assert sum(n for _, n, _ in pieces) == size
    inside = {b for start, length in extents for b in range(start, min(start + length, size))}
    at = 0
    read_chunks = []
    for i, (offset, n, allocated) in enumerate(pieces):
        assert offset == at and n > 0
        if allocated:
            assert offset // chunk == (offset + n - 1) // chunk
            assert offset in inside and offset + n - 1 in inside
            read_chunks.append(offset // chunk)
        else:
            assert not any(b in inside for b in range(offset, offset + n))
            assert i == 0 or pieces[i - 1][2]
        at += n
    assert len(read_chunks) == len(set(read_chunks))


def test_a_fragmented_source_is_read_once_per_chunk_and_written_as_sparse_as_it_is() -> None:
    """4 KiB written every 8 KiB (a thin image, fragmented): one read per
    chunk, not one per extent (27x slower), and holes hashed in one go."""
    chunks, size = 16, 16 * CH
    data = bytearray(size)
    extents = []
    for off in range(0, 12 * CH, 8192):  # the last 4 chunks are a hole
        data[off:off + 4096] = os.urandom(4096)
        extents.append((off, 4096))
    data[5 * CH:6 * CH] = bytes(CH)  # and one chunk is a hole in between
    extents = [(o, n) for o, n in extents if not 5 * CH <= o < 6 * CH]

    class Img:
        reads: list[tuple[int, int]] = []

        def read(self, offset: int, length: int) -> bytes:
            self.reads.append((offset, length))
            return bytes(data[offset:offset + length])
    image = Img()
    verifier = Verifier(image_for(bytes(data)))
    hashed: list[int] = []
    update = Verifier.update
    written = bytearray(size)

    def write(piece: bytes, offset: int) -> int:
        written[offset:offset + len(piece)] = piece
        return len(piece)

    def count(self: Verifier, piece: bytes) -> None:
        hashed.append(len(piece))
        update(self, piece)

    async def go() -> object:
        with concurrent.futures.ThreadPoolExecutor(4) as pool:
            return await copy(RbdSource(image, size, extents, pool, "t"), write, verifier,
                              pool, chunk_size=CH)
    with pytest.MonkeyPatch.context() as mp:
        mp.setattr(Verifier, "update", count)
        stats = asyncio.run(go())
    assert len(image.reads) == 11 <= chunks
    assert all(n == CH - 4096 for _, n in image.reads)  # first to last allocated byte
    assert verifier.verify() and bytes(written) == bytes(data)
    # A hash each read, and each hole in one call, however many chunks it crosses.
    assert len(hashed) == 2 * 11
    assert CH + 4096 in hashed and 4 * CH + 4096 in hashed
    assert stats.read == 11 * (CH - 4096)  # type: ignore[attr-defined]


def test_a_cancelled_copy_waits_for_its_running_writes_without_blocking_the_loop() -> None:
    """Writes already on threads must end before the image is closed, and
    the loop must keep running meanwhile (no blocking wait on it)."""
    data = [os.urandom(CH) for _ in range(4)]
    release = threading.Event()
    finished: list[int] = []

    def write(chunk: bytes, offset: int) -> int:
        release.wait(5)
        finished.append(offset)
        return len(chunk)

    async def scenario() -> tuple[int, list[int]]:
        pool = concurrent.futures.ThreadPoolExecutor(4)
        task = asyncio.create_task(copy(ListSource(data), write, Verifier(
            image_for(expected_bytes(data))), pool, window=4, chunk_size=CH))
        await asyncio.sleep(0.05)  # writes are running, blocked
        task.cancel()
        ticks = 0
        while not task.done() and ticks < 100:
            await asyncio.sleep(0.01)  # the loop runs while the copy waits
            ticks += 1
            if ticks == 20:
                release.set()
        with pytest.raises(asyncio.CancelledError):
            await task
        done_at_cancel_end = list(finished)
        pool.shutdown()
        return ticks, done_at_cancel_end
    ticks, done = asyncio.run(scenario())
    assert ticks >= 20  # the loop ticked while the writes were held
    assert len(done) == 4  # and the copy ended only after they finished


def test_a_cancelled_copy_waits_for_the_source_read_it_was_waiting_for() -> None:
    """The read the copy awaits when it is cancelled (lease lost, stop) must
    end before the copy does: the caller then closes the source image, and
    closing it under a running read is a use-after-free in librbd."""
    started, release = threading.Event(), threading.Event()
    finished: list[int] = []

    class BlockingImage:
        def read(self, offset: int, length: int) -> bytes:
            started.set()
            release.wait(5)
            finished.append(offset)
            return bytes(length)

    async def scenario() -> list[int]:
        pool = concurrent.futures.ThreadPoolExecutor(2)
        source = RbdSource(BlockingImage(), 2 * CH, [(0, 2 * CH)], pool, "t", read_ahead=1)
        task = asyncio.create_task(copy(source, lambda d, o: len(d), Verifier(
            image_for(bytes(2 * CH))), pool, window=2, chunk_size=CH))
        await asyncio.to_thread(started.wait, 5)
        task.cancel()
        await asyncio.sleep(0.2)
        ended_early = task.done()
        release.set()
        with pytest.raises(asyncio.CancelledError):
            await task
        pool.shutdown()
        assert not ended_early, "the copy ended while its read was still running"
        return list(finished)
    assert asyncio.run(scenario()) == [0]  # and that read did end first
