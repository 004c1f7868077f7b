"""Copying an image's data into a target pool: sparse, streamed, verified.

A source yields the image as ``(offset, length, data)`` pieces in order:
``data`` of at most one chunk, or ``None`` for a hole it already knows
about (RBD extents that ``diff_iterate`` says are unallocated), of any
length. The pipeline:

* hashes every chunk in order (holes as zeroes), on one dedicated thread,
  with the algorithm Glance recorded (``os_hash_algo``) or MD5 for
  ``checksum``; unless the verifier trusts the source (:meth:`Verifier.trust`:
  the same immutable snapshot was hashed and matched before), in which case
  nothing is hashed and the copy relies on librbd's acknowledged reads and
  writes, as ``rbd import`` does;
* writes what is not zero: holes, zero chunks, and zero blocks of
  :data:`ZERO_BLOCK` bytes within a chunk are never written (each run of
  non-zero blocks is one write), so the copy stays as sparse as the source,
  or sparser, whatever the chunk size;
* keeps at most ``window`` chunks in flight (read, hashed or written), so
  memory stays bounded whatever the image size, with several I/Os going at
  once on the Ceph thread pool.

Nothing here publishes anything; the caller does that only after
:meth:`Verifier.verify` succeeded and the copy is snapshotted and protected.
"""

from __future__ import annotations

import asyncio
import collections
import concurrent.futures
import hashlib
import logging
import time
from collections.abc import AsyncGenerator, Callable, Iterator
from dataclasses import dataclass
from typing import Any, Protocol

from warmer.events import ImageInfo

LOG = logging.getLogger(__name__)
CHUNK = 4 << 20
# Zeroes within a chunk are skipped in blocks of this size: a sparse source
# read in 4 MiB chunks (1 MiB of data each, say) is written as sparse as it
# is, not 4 MiB at a time.
ZERO_BLOCK = 64 << 10
_ZEROS = bytes(CHUNK)
_ZERO_BLOCK = bytes(ZERO_BLOCK)
PIECES_AHEAD = 256  # pieces an RBD source holds ahead (holes, and reads in flight)

Chunk = tuple[int, int, bytes | None]


class CopyError(Exception):
    """The copy cannot be made or verified; ``reason`` says why."""

    def __init__(self, reason: str, detail: str = "") -> None:
        super().__init__(f"{reason}: {detail}" if detail else reason)
        self.reason = reason


class Source(Protocol):
    size: int
    description: str

    def chunks(self, chunk_size: int) -> AsyncGenerator[Chunk, None]: ...


@dataclass
class CopyStats:
    size: int
    written: int = 0
    skipped_holes: int = 0
    skipped_zeros: int = 0
    seconds: float = 0.0

    @property
    def skipped(self) -> int:
        return self.skipped_holes + self.skipped_zeros

    @property
    def read(self) -> int:
        """Bytes read from the source: all but the holes it knew of."""
        return self.size - self.skipped_holes


class Verifier:
    """Checks the copied bytes against what Glance recorded for the image.

    :attr:`outcome` says how the copy was checked, once :meth:`verify`
    returned or raised: ``verified`` (hashed, and it matched),
    ``mismatch``, ``skipped_verified`` (trusted: not hashed) or
    ``unverified`` (Glance records no digest, and that is allowed).
    """

    def __init__(self, image: ImageInfo, *, allow_unverified: bool = False) -> None:
        algo, expected = None, None
        if image.os_hash_algo and image.os_hash_value:
            if image.os_hash_algo not in hashlib.algorithms_available:
                raise CopyError("unsupported_hash", image.os_hash_algo)
            algo, expected = image.os_hash_algo, image.os_hash_value
        elif image.checksum:
            algo, expected = "md5", image.checksum
        elif not allow_unverified:
            raise CopyError("no_glance_checksum",
                            "Glance has neither os_hash_value nor checksum")
        self.algo = algo
        self.expected = expected.lower() if expected else None
        self._hash: Any = hashlib.new(algo) if algo else None
        self.trusted = False
        self.outcome = "unverified" if algo is None else ""
        #: What the copied bytes hashed to (``algo:hex``), once hashed.
        self.actual: str | None = None

    @property
    def digest(self) -> str | None:
        """What Glance records, as ``algo:hex``; None when nothing."""
        return f"{self.algo}:{self.expected}" if self.algo else None

    @property
    def hashing(self) -> bool:
        return self._hash is not None

    def trust(self) -> None:
        """Hash nothing: the caller knows the source to be the very snapshot
        that was hashed and matched :attr:`digest` before. :meth:`verify`
        then returns :attr:`digest`."""
        if self.digest is None:
            raise ValueError("nothing to trust: Glance records no digest")
        self.trusted, self._hash = True, None

    @property
    def stamp(self) -> str:
        """How the copy was checked, for its ``warmer.verified`` image
        metadata, once :meth:`verify` returned: ``algo:hex`` (hashed, and
        it matched), ``skipped_verified:algo:hex`` (nothing hashed: the
        source snapshot matched ``algo:hex`` before) or ``unverified``."""
        if self.outcome == "skipped_verified":
            return f"skipped_verified:{self.digest}"
        if self.outcome == "verified":
            return f"{self.algo}:{self.expected}"
        if self.outcome == "unverified":
            return "unverified"
        raise ValueError(f"not verified ({self.outcome or 'not yet'})")

    def update(self, data: bytes | memoryview) -> None:
        if self._hash is not None:
            self._hash.update(data)

    def verify(self) -> str:
        """Return ``algo:digest`` when it matches (or is trusted); raise
        otherwise."""
        if self.trusted:
            self.outcome = "skipped_verified"
            assert self.digest is not None
            return self.digest
        if self._hash is None:
            return "unverified"
        digest = str(self._hash.hexdigest())
        self.actual = f"{self.algo}:{digest}"
        if digest != self.expected:
            self.outcome = "mismatch"
            raise CopyError("checksum_mismatch",
                            f"{self.algo} is {digest}, Glance says {self.expected}")
        self.outcome = "verified"
        return f"{self.algo}:{digest}"


async def copy(source: Source, write: Callable[[bytes, int], None], verifier: Verifier,
               executor: concurrent.futures.Executor, *, window: int = 8,
               chunk_size: int = CHUNK,
               progress: Callable[[int, int], None] | None = None) -> CopyStats:
    """Stream ``source`` into ``write(data, offset)`` (a blocking call run on
    ``executor``), skipping holes and zero chunks, hashing everything
    (unless ``verifier`` hashes nothing).

    Precondition: ``write`` writes into a freshly created image, all
    zeroes. Holes, zero blocks and the unallocated gaps inside a read are
    never written, and the digest covers what was *read*, not what the
    target holds: a target with data in it would keep that data there and
    still verify. :func:`warmer.ceph.images.create_temp` guarantees it (its
    ``RBD.create`` fails rather than open an image that exists)."""
    loop = asyncio.get_running_loop()
    stats = CopyStats(source.size)
    started = time.monotonic()
    hashing = verifier.hashing
    hasher = concurrent.futures.ThreadPoolExecutor(1, thread_name_prefix="hash")
    slots = asyncio.Semaphore(window)
    in_flight: set[asyncio.Future[Any]] = set()
    running: set[concurrent.futures.Future[Any]] = set()
    # A chunk whose write (or hash) failed. Kept apart from ``in_flight``,
    # which forgets a chunk once it is done: a write that timed out while
    # the next ones succeed would otherwise be lost, and the digest (of what
    # was read) would still match.
    failed: list[BaseException] = []

    def settle(chunk: asyncio.Future[Any]) -> None:
        slots.release()
        in_flight.discard(chunk)
        error = None if chunk.cancelled() else chunk.exception()
        if error is not None:
            failed.append(error)

    def submit(pool: concurrent.futures.Executor, fn: Callable[..., Any],
               *args: Any) -> asyncio.Future[Any]:
        fut = pool.submit(fn, *args)
        running.add(fut)
        fut.add_done_callback(running.discard)
        return asyncio.wrap_future(fut, loop=loop)
    zeros = memoryview(_ZEROS)  # holes, hashed

    def hash_zeros(length: int) -> None:
        for at in range(0, length, len(zeros)):
            verifier.update(zeros[:min(len(zeros), length - at)])
    done = 0
    chunks = source.chunks(chunk_size)
    try:
        async for offset, length, data in chunks:
            if data is not None and len(data) != length:
                # rbd's Image.read may return fewer bytes than asked: count
                # what came, never what was asked for, hashed or not.
                raise CopyError("short_read", f"{len(data)} of {length} bytes at offset "
                                              f"{offset} from {source.description}")
            await slots.acquire()
            if failed:  # surface a failed write or hash now, not at the end
                raise failed[0]
            work: list[asyncio.Future[Any]] = []
            if data is None:
                if hashing:  # a hole of any length: one job
                    work.append(submit(hasher, hash_zeros, length))
                stats.skipped_holes += length
            else:
                if hashing:
                    # One thread, in submission order: the digest sees the bytes in order.
                    work.append(submit(hasher, verifier.update, data))
                kept = 0
                for start, end in nonzero_runs(data):
                    # rbd's write takes bytes only: a slice is a copy, so the
                    # whole chunk goes as it is when nothing in it is zero.
                    piece = data if end - start == length else data[start:end]
                    work.append(submit(executor, write, piece, offset + start))
                    kept += end - start
                stats.written += kept
                stats.skipped_zeros += length - kept
            chunk_done = asyncio.gather(*work)
            in_flight.add(chunk_done)
            chunk_done.add_done_callback(settle)
            done += length
            if progress is not None:
                progress(done, source.size)
        if done != source.size:
            raise CopyError("short_read", f"got {done} of {source.size} bytes")
        await asyncio.gather(*in_flight, return_exceptions=True)
        if failed:
            raise failed[0]
    finally:
        # Writes already running on threads cannot be stopped. Wait for them
        # (a few chunks at most) before the caller closes the image they
        # write to: closing it under them crashes librbd.
        await chunks.aclose()  # its reads, too, must end before the source closes
        for job in list(running):
            job.cancel()
        await finish_threads(list(running))
        hasher.shutdown(wait=False, cancel_futures=True)  # idle now: it ends by itself
    stats.seconds = time.monotonic() - started
    return stats


def nonzero_runs(data: bytes, block: int = ZERO_BLOCK) -> list[tuple[int, int]]:
    """The ``(start, end)`` runs of ``data`` that are not all zero, in
    blocks of ``block`` bytes. Each block costs one compare in place
    (``startswith`` at an offset is a memcmp: no copy, no memoryview, which
    compares 60x slower), which stops at its first non-zero byte."""
    zero = _ZERO_BLOCK if block == ZERO_BLOCK else bytes(block)
    length = len(data)
    runs: list[tuple[int, int]] = []
    start: int | None = None
    for at in range(0, length, block):
        end = min(at + block, length)
        if data.startswith(zero if end - at == block else zero[:end - at], at, end):
            if start is not None:
                runs.append((start, at))
                start = None
        elif start is None:
            start = at
    if start is not None:
        runs.append((start, length))
    return runs


async def finish_threads(jobs: list[concurrent.futures.Future[Any]]) -> None:
    """Wait, without blocking the loop, until every job that is running on a
    thread has ended (a job not started yet should have been cancelled).
    A cancellation meanwhile is held back until they have: the caller is
    about to close the image those threads use, and closing it under them
    crashes librbd."""
    cancelled = False
    while pending := [job for job in jobs if not job.done()]:
        try:
            await asyncio.wait([asyncio.wrap_future(job) for job in pending])
        except asyncio.CancelledError:
            cancelled = True
    if cancelled:
        raise asyncio.CancelledError()


class RbdSource:
    """An RBD snapshot read directly from its cluster (read-only)."""

    def __init__(self, image: Any, size: int, extents: list[tuple[int, int]],
                 executor: concurrent.futures.Executor, description: str,
                 read_ahead: int = 8) -> None:
        self._image = image
        self.size = size
        self._extents = extents
        self._executor = executor
        self.description = description
        self._read_ahead = read_ahead

    @classmethod
    def open(cls, handle: Any, executor: concurrent.futures.Executor, description: str,
             read_ahead: int = 8) -> RbdSource:
        """Blocking: list the allocated extents of an open image (run it on
        the Ceph pool)."""
        size = int(handle.image.size())
        extents: list[tuple[int, int]] = []

        def collect(offset: int, length: int, exists: bool) -> int:
            if exists:
                if extents and extents[-1][0] + extents[-1][1] == offset:
                    extents[-1] = (extents[-1][0], extents[-1][1] + length)
                else:
                    extents.append((offset, length))
            return 0
        handle.image.diff_iterate(0, size, None, collect)
        extents.sort()
        return cls(handle.image, size, extents, executor, description, read_ahead)

    @property
    def allocated_bytes(self) -> int:
        return sum(length for _, length in self._extents)

    def pieces(self, chunk_size: int) -> Iterator[tuple[int, int, bool]]:
        """The image as ``(offset, length, allocated)`` pieces, in order,
        with at most one read per ``chunk_size``-aligned chunk: from the
        chunk's first allocated byte to its last, in one piece (what lies
        unallocated in between reads as zeroes, which the copy does not
        write). So a chunk with 1 MiB of data is a 1 MiB read, as
        ``export-diff`` reads it, and a fragmented chunk (4 KiB written
        every 8 KiB) is one read, not hundreds. The holes between those
        spans are one piece each, however many chunks they cross."""
        offset = 0
        for start, end in self._spans(chunk_size):
            if start > offset:
                yield offset, start - offset, False
            yield start, end - start, True
            offset = end
        if offset < self.size:
            yield offset, self.size - offset, False

    def _spans(self, chunk_size: int) -> Iterator[tuple[int, int]]:
        """Per chunk with allocated bytes, ``(first, last + 1)`` of them."""
        span: tuple[int, int] | None = None
        for first, length in self._extents:  # sorted by offset; may overlap
            start = max(first, span[1] if span is not None else 0)
            end = min(first + length, self.size)
            while start < end:
                stop = min(end, (start // chunk_size + 1) * chunk_size)
                if span is not None and span[0] // chunk_size == start // chunk_size:
                    span = (span[0], stop)
                else:
                    if span is not None:
                        yield span
                    span = (start, stop)
                start = stop
        if span is not None:
            yield span

    async def chunks(self, chunk_size: int) -> AsyncGenerator[Chunk, None]:
        # Up to read_ahead reads in flight; holes between them cost nothing
        # and do not count (else a sparse image would read one piece at a
        # time), within a bound on the pieces held.
        pending: collections.deque[tuple[int, int, concurrent.futures.Future[bytes] | None]] = \
            collections.deque()
        reading = 0
        pieces = self.pieces(chunk_size)
        ahead = next(pieces, None)
        try:
            while ahead is not None or pending:
                while ahead is not None and reading < self._read_ahead \
                        and len(pending) < PIECES_AHEAD:
                    offset, length, allocated = ahead
                    read = None
                    if allocated:
                        read = self._executor.submit(self._image.read, offset, length)
                        reading += 1
                    pending.append((offset, length, read))
                    ahead = next(pieces, None)
                # The head stays in ``pending`` until its read is done: a
                # cancellation while it is awaited must still wait for that
                # read below, or the image is closed under a running read.
                start, length, read = pending[0]
                data: bytes | None = None
                if read is not None:
                    data = await asyncio.wrap_future(read)
                    reading -= 1
                pending.popleft()
                yield start, length, data
        finally:
            # Read-ahead still running on threads must end before the image
            # is closed under it.
            reads = [r for _, _, r in pending if r is not None]
            for r in reads:
                r.cancel()
            await finish_threads(reads)


class HttpSource:
    """Glance's ``GET /v2/images/{id}/file``, for images in stores warmer
    cannot read directly (file, swift, s3, http, another cluster)."""

    def __init__(self, stream: Callable[[], Any], size: int, description: str) -> None:
        self._stream = stream
        self.size = size
        self.description = description

    async def chunks(self, chunk_size: int) -> AsyncGenerator[Chunk, None]:
        offset = 0
        buf = bytearray()
        async with self._stream() as resp:
            async for piece in resp.content.iter_chunked(1 << 20):
                buf += piece
                while len(buf) >= chunk_size:
                    yield offset, chunk_size, bytes(buf[:chunk_size])
                    del buf[:chunk_size]
                    offset += chunk_size
        if buf:
            yield offset, len(buf), bytes(buf)
