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
  once on the Ceph thread pool;
* writes each chunk into one target (:func:`copy`) or several
  (:func:`copy_into`, for fan-out: warming/fanout.py), from that one read
  and that one hash: a target whose write fails drops out, the others go
  on, and at most ``window`` chunk writes are in flight across them all.

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
from collections.abc import AsyncGenerator, Callable, Iterable, Iterator
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
    fanout: int = 1  # targets written from this one read (warming/fanout.py)

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


class Writer:
    """One destination of a copy: ``write(data, offset)``, a blocking call
    run on ``executor`` (the target's own Ceph threads), into a freshly
    created image. It returns the number of bytes it wrote, as rbd's
    ``Image.write`` does: any other count (fewer bytes, or none said) is a
    failed write (``short_write``), never a piece silently left as zeroes.

    Several writers can take the same read (:func:`copy_into`). A writer
    whose write fails drops out (:attr:`error`), and so does one that
    :meth:`leave` s (its copy was cancelled: a lost lease, a stop); the
    stream goes on for the others. Either way its writes already running on
    threads run to their end: close its image only after :meth:`settled`."""

    def __init__(self, write: Callable[[bytes, int], int], executor: concurrent.futures.Executor,
                 progress: Callable[[int, int], None] | None = None) -> None:
        self._write = write
        self._executor = executor
        self.progress = progress
        self.error: BaseException | None = None
        self.left = False
        # Set once a write failed: whoever waits for this writer's copy
        # hears of it at once, not when the stream ends.
        self.dropped: asyncio.Future[None] = asyncio.get_running_loop().create_future()
        self._jobs: set[asyncio.Task[None]] = set()  # one per chunk handed to it

    @property
    def active(self) -> bool:
        return self.error is None and not self.left

    def leave(self) -> None:
        """Take no more chunks. Writes not started yet are dropped; running
        ones end by themselves (:meth:`settled`)."""
        self.left = True
        for job in list(self._jobs):
            job.cancel()

    async def settled(self) -> None:
        """Wait until none of this writer's writes runs any more, even if
        this task is cancelled meanwhile (re-raised afterwards)."""
        await outlast(self._jobs)

    def _take(self, pieces: list[tuple[int, bytes]],
              slots: asyncio.Semaphore) -> asyncio.Task[None]:
        job = asyncio.ensure_future(self._write_pieces(pieces, slots))
        self._jobs.add(job)
        job.add_done_callback(self._ended)
        return job

    def _ended(self, job: asyncio.Task[None]) -> None:
        self._jobs.discard(job)
        # The stream gathers its writers' jobs without looking at their
        # errors: one that escaped must still drop this writer, never be a
        # chunk silently not written.
        if not job.cancelled() and job.exception() is not None:
            self._fail(job.exception())  # type: ignore[arg-type]

    async def _write_pieces(self, pieces: list[tuple[int, bytes]],
                            slots: asyncio.Semaphore) -> None:
        # A slot per chunk being written, shared by every writer of the
        # stream: librbd copies what it writes, so this bounds memory
        # whatever the number of writers.
        async with slots:
            if not self.active:
                return
            jobs: list[concurrent.futures.Future[int]] = []
            try:
                for offset, data in pieces:
                    jobs.append(self._executor.submit(self._write, data, offset))
                waits = [asyncio.wrap_future(job) for job in jobs]
                for wait in waits:  # read below, from the jobs themselves
                    wait.add_done_callback(quiet)
                await asyncio.wait(waits)
            except BaseException as exc:  # cancelled, or the executor refused a job
                for job in jobs:
                    job.cancel()  # not started yet: never will be
                await finish_threads(jobs)  # the running ones must end first
                if isinstance(exc, asyncio.CancelledError):
                    raise
                self._fail(exc)
                return
            for job, (offset, data) in zip(jobs, pieces, strict=True):
                # A job cancelled by anyone else (an executor shut down) is
                # a write lost: as much a failure as one that raised.
                error = (concurrent.futures.CancelledError("write cancelled")
                         if job.cancelled() else job.exception())
                if error is None and job.result() != len(data):
                    # python-rbd raises IncompleteWriteError itself; any
                    # other count from a write is a piece not all written.
                    error = CopyError("short_write", f"{job.result()!r} of {len(data)} bytes "
                                                     f"written at offset {offset}")
                if error is not None:
                    self._fail(error)
                    return

    def _fail(self, error: BaseException) -> None:
        if self.error is None:
            self.error = error
            self.dropped.set_result(None)
        me = asyncio.current_task()
        for job in list(self._jobs):
            if job is not me:
                job.cancel()


def quiet(future: asyncio.Future[Any]) -> None:
    """A done callback for a future whose error may have no reader (it is
    read elsewhere, or nobody needs it): asyncio must not log it as never
    retrieved."""
    if not future.cancelled():
        future.exception()


class WritersGone(Exception):
    """Every writer of a stream dropped out or left: it stopped reading."""


async def copy(source: Source, write: Callable[[bytes, int], int], verifier: Verifier,
               executor: concurrent.futures.Executor, *, window: int = 8,
               chunk_size: int = CHUNK,
               progress: Callable[[int, int], None] | None = None) -> CopyStats:
    """Stream ``source`` into ``write(data, offset)`` (a blocking call run on
    ``executor`` that returns the bytes it wrote: :class:`Writer`):
    :func:`copy_into` with one writer, whose failure is the copy's."""
    writer = Writer(write, executor, progress)
    try:
        return await copy_into(source, [writer], verifier, window=window,
                               chunk_size=chunk_size)
    except WritersGone:
        assert writer.error is not None
        raise writer.error from None


async def copy_into(source: Source, writers: list[Writer], verifier: Verifier, *,
                 window: int = 8, chunk_size: int = CHUNK) -> CopyStats:
    """Read ``source`` once and hash it once (unless ``verifier`` hashes
    nothing), and write it into every writer, skipping holes and zero
    blocks. Returns once every byte was read, hashed and written by each
    writer still in; raises :class:`WritersGone` as soon as none is left
    (it reads no further), and the source's or the hash's error as is.
    Whatever happens, no read, hash or write of it runs any more when it
    returns or raises.

    At most ``window`` chunks are in flight (read, hashed or written), and
    at most ``window`` chunk writes, across all writers: memory stays
    bounded whatever the image size and the number of writers, and the
    slowest writer sets the pace.

    Precondition: each writer writes into a freshly created image, all
    zeroes. Holes, zero blocks and the unallocated gaps inside a read are
    never written, and the digest covers what was *read*, not what a
    target holds: a target with data in it would keep that data there and
    still verify. :func:`warmer.ceph.images.create_temp` guarantees it (its
    ``RBD.create`` fails rather than open an image that exists)."""
    stats = CopyStats(source.size)
    started = time.monotonic()
    hashing = verifier.hashing
    hasher = concurrent.futures.ThreadPoolExecutor(1, thread_name_prefix="hash")
    chunk_slots = asyncio.Semaphore(window)
    write_slots = asyncio.Semaphore(window)
    in_flight: set[asyncio.Future[Any]] = set()
    hashes: set[asyncio.Future[None]] = set()
    # A hash that failed. Kept apart from ``in_flight``, which forgets a
    # chunk once it is done. A write that failed is its writer's alone.
    failed: list[BaseException] = []

    def settle(chunk: asyncio.Future[Any]) -> None:
        chunk_slots.release()
        in_flight.discard(chunk)

    def hash_later(fn: Callable[..., None], *args: Any) -> asyncio.Future[None]:
        # One thread, in submission order: the digest sees the bytes in order.
        job = asyncio.wrap_future(hasher.submit(fn, *args))
        hashes.add(job)
        job.add_done_callback(hashed)
        return job

    def hashed(job: asyncio.Future[None]) -> None:
        hashes.discard(job)
        if not job.cancelled() and job.exception() is not None:
            failed.append(job.exception())  # type: ignore[arg-type]
    zeros = memoryview(_ZEROS)  # holes, hashed

    def hash_zeros(length: int) -> None:
        for at in range(0, length, len(zeros)):
            verifier.update(zeros[:min(len(zeros), length - at)])
    done = 0
    complete = False
    chunks = source.chunks(chunk_size)
    try:
        async for offset, length, data in chunks:
            if data is not None and len(data) != length:
                # rbd's Image.read may return fewer bytes than asked: count
                # what came, never what was asked for, hashed or not.
                raise CopyError("short_read", f"{len(data)} of {length} bytes at offset "
                                              f"{offset} from {source.description}")
            await chunk_slots.acquire()
            if failed:  # surface a failed hash now, not at the end
                raise failed[0]
            live = [w for w in writers if w.active]
            if not live:
                raise WritersGone()
            work: list[asyncio.Future[Any]] = []
            if data is None:
                if hashing:  # a hole of any length: one job
                    work.append(hash_later(hash_zeros, length))
                stats.skipped_holes += length
            else:
                if hashing:
                    work.append(hash_later(verifier.update, data))
                # Cut once, written by every writer: rbd's write takes bytes
                # only, so a piece is a copy, but the whole chunk goes as it
                # is when nothing in it is zero.
                pieces = [(offset + start, data if end - start == length else data[start:end])
                          for start, end in nonzero_runs(data)]
                if pieces:
                    work.extend(w._take(pieces, write_slots) for w in live)
                kept = sum(len(piece) for _, piece in pieces)
                stats.written += kept
                stats.skipped_zeros += length - kept
            chunk_done = asyncio.gather(*work, return_exceptions=True)
            in_flight.add(chunk_done)
            chunk_done.add_done_callback(settle)
            done += length
            for w in live:
                if w.progress is not None:
                    w.progress(done, source.size)
        if done != source.size:
            raise CopyError("short_read", f"got {done} of {source.size} bytes")
        await outlast(in_flight)
        if failed:
            raise failed[0]
        if not any(w.active for w in writers):
            raise WritersGone()
        complete = True
    finally:
        # Reads, hashes and writes already running on threads cannot be
        # stopped. Wait for them (a few chunks at most) before the caller
        # closes the images they use: closing one under them crashes librbd.
        # A cancellation meanwhile is held back until then.
        held: asyncio.CancelledError | None = None
        try:
            await chunks.aclose()  # its reads, too, must end before the source closes
        except asyncio.CancelledError as exc:
            held = exc
        if not complete:
            for w in writers:
                w.leave()
        hasher.shutdown(wait=False, cancel_futures=True)  # hashes not started never will be
        try:
            await outlast([*hashes, *(job for w in writers for job in w._jobs)])
        except asyncio.CancelledError as exc:
            held = held or exc
        if held is not None:
            raise held
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
    await outlast([asyncio.wrap_future(job) for job in jobs if not job.done()])


async def outlast(futures: Iterable[asyncio.Future[Any]]) -> None:
    """Wait until each of ``futures`` is done, even if this task is
    cancelled meanwhile; re-raise that cancellation afterwards."""
    cancelled = False
    pending = [f for f in futures if not f.done()]
    while pending:
        try:
            await asyncio.wait(pending)
        except asyncio.CancelledError:
            cancelled = True
        pending = [f for f in pending if not f.done()]
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
