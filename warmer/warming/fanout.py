"""Fan-out: one source read and one hash for the copies of an image into
several targets.

When one evaluation copies an image into several targets (edge sites, say),
each target still does everything that is its own (warming/target.py): its
budget admits the copy, it holds its copy lease, creates its temporary
image, writes it, looks at the verification before it finishes the copy,
and publishes. What they share is the source. The :class:`Fanout` of the
evaluation opens it once, asks the shared state once whether that snapshot
was verified before, then reads it once, hashes it once, and writes every
chunk into each target that joined (:func:`warmer.warming.copy.copy_into`).

* **Who shares.** The copies that start together. The engine makes one
  Fanout per evaluation, naming the targets it warms. A target joins once
  its temporary image exists (:meth:`Fanout.copy`), or leaves
  (:meth:`Fanout.leave`: already warm, busy, over budget, failed, done).
  The read starts when every named target has joined or left, or ``wait``
  seconds after the first one joined, whichever comes first: a target on a
  sick cluster holds the others back for ``wait`` seconds at most. A
  target that joins after the start reads on its own, as every copy did
  before fan-out (a stream of its own, opened again).
* **Failures.** A target whose write fails, whose lease is lost, or whose
  copy is cancelled drops out, and the read goes on for the others (its
  writes already running end first, each bounded by its cluster's op
  timeouts). When the source or the hash fails, or the digest does not
  match Glance's, every target's copy fails. When no target is left, the
  read stops.
* **Memory.** At most ``window`` chunks in flight and ``window`` chunk
  writes, across all targets: the slowest target sets the pace, and memory
  does not grow with the number of targets.
* **Verification.** Each target gets its result (:class:`Copied`) only once
  the whole image was read and its digest matched (or was trusted), and
  finishes and publishes its copy only then (invariant 1). The snapshot is
  recorded as verified once, or its records revoked once on a mismatch
  (warming/records.py).

A crash leaves nothing of this module's: only each target's temporary
image, which that target cleans up as before.
"""

from __future__ import annotations

import asyncio
import dataclasses
import logging
from collections.abc import Awaitable, Callable, Iterable
from dataclasses import dataclass
from typing import Any

from warmer.events import ImageInfo
from warmer.state.store import SourceSnapshot
from warmer.warming.copy import (
    CHUNK,
    CopyError,
    CopyStats,
    Source,
    Verifier,
    Writer,
    WritersGone,
    copy_into,
    outlast,
    quiet,
)
from warmer.warming.records import CopyRecords

LOG = logging.getLogger(__name__)


@dataclass(frozen=True)
class OpenedSource:
    """A source opened for a stream: what to read, the RBD snapshot it is
    (None for a download through Glance: no identity, never trusted), and
    how to close it once nothing reads it any more."""

    source: Source
    snapshot: SourceSnapshot | None = None
    close: Callable[[], Awaitable[Any]] | None = None


Opener = Callable[[], Awaitable[OpenedSource]]


@dataclass(frozen=True)
class Copied:
    """A target's copy, read, written and checked: its own ``stats``, the
    digest it matched (``algo:hex``, or ``unverified``), how it was checked
    (``verified``, ``skipped_verified``, ``unverified``) and the stamp for
    its ``warmer.verified`` metadata (:attr:`Verifier.stamp`)."""

    stats: CopyStats
    digest: str
    outcome: str
    stamp: str


class Fanout:
    """The copies of ``image`` that one evaluation makes into ``targets``
    (names). Use it as an async context manager around the targets' work:
    leaving it waits until every read it started has ended and its source
    is closed."""

    def __init__(self, image: ImageInfo, targets: Iterable[str], *, window: int = 4,
                 wait: float = 5.0, chunk_size: int = CHUNK,
                 on_read: Callable[[CopyStats], None] | None = None) -> None:
        self.image = image
        self.window = window
        self.wait = wait
        self.chunk_size = chunk_size
        # Told of each read that reached the end of its source (metrics).
        self.on_read = on_read
        self._shared = _Stream(self, set(targets))
        self._streams = [self._shared]
        self._bound: dict[str, _Stream] = {}  # the stream each target opened its source on
        self._openers: dict[str, tuple[Opener, CopyRecords | None]] = {}

    async def __aenter__(self) -> Fanout:
        return self

    async def __aexit__(self, *exc: object) -> None:
        await self.close()

    async def source(self, name: str, opener: Opener, records: CopyRecords | None) -> Source:
        """The source target ``name`` will copy, to size its temporary image
        by. The first target to ask opens it with its ``opener`` (every
        target of a daemon reads sources alike) and ``records``; the others
        wait for that. Raises what opening it raised, to every target:
        ``size_mismatch`` when it is not the size Glance records."""
        self._openers[name] = (opener, records)
        stream = self._shared if not self._shared.started else self._private(name)
        self._bound[name] = stream
        stream.open(opener, records)
        return await asyncio.shield(stream.opened)

    async def copy(self, name: str, writer: Writer) -> Copied:
        """Join the read with ``writer`` (into the temporary image sized by
        :meth:`source`), and return once this target's copy is written and
        the whole image verified. Raises this target's write error, or the
        read's (source, hash, ``checksum_mismatch``). Cancelled, it drops
        out and returns only once its writes have ended."""
        stream = self._bound[name]
        if stream.started:
            # Too late for the read it was sized by: one of its own.
            size = (await asyncio.shield(stream.opened)).size
            stream = self._private(name)
            source = await asyncio.shield(stream.opened)
            if source.size != size:
                stream.leave(name)
                raise CopyError("size_mismatch", f"source has {source.size} bytes now, "
                                                 f"{size} when the copy began")
        stream.join(name, writer)
        try:
            waits: set[asyncio.Future[Any]] = {writer.dropped, stream.result}
            await asyncio.wait(waits, return_when=asyncio.FIRST_COMPLETED)
            if writer.error is not None:
                raise writer.error
            copied = stream.result.result()
            return dataclasses.replace(copied, stats=dataclasses.replace(copied.stats))
        finally:
            writer.leave()
            stream.writer_left()
            await writer.settled()

    def leave(self, name: str) -> None:
        """Target ``name`` copies nothing more here (it never needed to, gave
        up, or is done): the read no longer waits for it."""
        for stream in self._streams:
            stream.leave(name)

    async def close(self) -> None:
        """Start what still waits for targets (none is coming now), and wait
        until every read has ended and its source is closed."""
        for stream in self._streams:
            stream.expected.clear()
            stream.check()
        await outlast([s.task for s in self._streams if s.task is not None])

    def _private(self, name: str) -> _Stream:
        stream = _Stream(self, {name})
        self._streams.append(stream)
        self._bound[name] = stream
        opener, records = self._openers[name]
        stream.open(opener, records)
        return stream


class _Stream:
    """One read of the source, hashed once and written into the targets
    that joined it before it started."""

    def __init__(self, fanout: Fanout, expected: set[str]) -> None:
        loop = asyncio.get_running_loop()
        self.fanout = fanout
        self.expected = expected  # targets it still waits for
        self.writers: dict[str, Writer] = {}
        self.started = False
        self.task: asyncio.Task[None] | None = None
        self.opened: asyncio.Future[Source] = loop.create_future()
        self.result: asyncio.Future[Copied] = loop.create_future()
        for future in (self.opened, self.result):
            future.add_done_callback(quiet)  # may have no reader at all
        self._go = asyncio.Event()
        self._timer: asyncio.TimerHandle | None = None
        self._pumping = False

    def open(self, opener: Opener, records: CopyRecords | None) -> None:
        if self.task is None:
            self.task = asyncio.create_task(self._run(opener, records))

    def join(self, name: str, writer: Writer) -> None:
        self.writers[name] = writer
        if len(self.writers) == 1 and self.fanout.wait > 0:
            self._timer = asyncio.get_running_loop().call_later(self.fanout.wait, self._start)
        self.check()

    def leave(self, name: str) -> None:
        self.expected.discard(name)
        self.check()

    def check(self) -> None:
        """Start once every target it waits for has joined or left (with
        no wait at all: as soon as one joined)."""
        if self.started:
            return
        if self.expected <= self.writers.keys() or (self.fanout.wait <= 0 and self.writers):
            self._start()

    def _start(self) -> None:
        if not self.started:
            # From here on, whoever comes reads on its own (Fanout.copy).
            self.started = True
            if self._timer is not None:
                self._timer.cancel()
            self._go.set()

    def writer_left(self) -> None:
        """A target's copy ended: if it was the last one still written, stop
        reading (no point reading on for nobody)."""
        if self._pumping and self.task is not None and \
                not any(w.active for w in self.writers.values()):
            self.task.cancel()

    async def _run(self, opener: Opener, records: CopyRecords | None) -> None:
        image = self.fanout.image
        opened: OpenedSource | None = None
        try:
            opened = await opener()
            source, snapshot = opened.source, opened.snapshot
            if image.size is not None and source.size != image.size:
                raise CopyError("size_mismatch", f"source has {source.size} bytes, Glance "
                                                 f"says {image.size}")
            # Each target refused a copy it could not accept (no digest and
            # allow_unverified_copies off) before it asked for the source.
            verifier = Verifier(image, allow_unverified=True)
            if records is not None and snapshot is not None and verifier.digest is not None \
                    and await records.trusted(snapshot, verifier.digest, source.size):
                verifier.trust()  # this very snapshot matched Glance's digest before
            self.opened.set_result(source)
            await self._go.wait()
            writers = list(self.writers.values())
            if not writers:
                return  # every target left before it started
            if len(writers) > 1:
                LOG.info("image %s: one read of %s for %d targets (%s)", image.id,
                         source.description, len(writers),
                         ", ".join(name for name, w in self.writers.items() if w.active))
            self._pumping = True
            try:
                stats = await copy_into(source, writers, verifier, window=self.fanout.window,
                                        chunk_size=self.fanout.chunk_size)
            finally:
                self._pumping = False
            if self.fanout.on_read is not None:
                self.fanout.on_read(stats)
            try:
                digest = verifier.verify()
            except CopyError:
                if records is not None:  # before failing: no daemon may trust it now
                    await records.revoke(image.id, snapshot, verifier.actual, source.size)
                raise
            if records is not None and snapshot is not None and verifier.outcome == "verified":
                # Every byte read and matched: only now is the snapshot vouched for.
                await records.verified(snapshot, digest, source.size)
            if records is not None and snapshot is not None \
                    and verifier.outcome == "skipped_verified" \
                    and not await records.still_trusted(snapshot):
                # Trusted when the source opened; another daemon's copy of it
                # mismatched since (or the state no longer answers): this
                # unhashed copy is not published, the next one hashes.
                raise CopyError("trust_revoked", f"{snapshot.key} was recorded as mismatched "
                                "(or could not be checked) during this unhashed copy")
            stats.fanout = sum(1 for w in writers if w.active)
            self.result.set_result(Copied(stats, digest, verifier.outcome, verifier.stamp))
        except WritersGone:  # nobody waits for the result any more
            self._fail(CopyError("short_read", "every target dropped out of the read"))
        except asyncio.CancelledError:  # read no further: a stop, or nobody left
            self._fail(CopyError("short_read", "the shared read was stopped"))
            raise
        except Exception as exc:
            self._fail(exc)  # every target's copy fails with it
        finally:
            if opened is not None and opened.close is not None:
                # Nothing reads it any more (copy_into saw to it); the close
                # itself runs to its end, whatever cancels this task.
                await outlast([asyncio.ensure_future(_close(opened))])

    def _fail(self, exc: BaseException) -> None:
        for future in (self.opened, self.result):
            if not future.done():
                future.set_exception(exc)


async def _close(opened: OpenedSource) -> None:
    assert opened.close is not None
    try:
        await opened.close()
    except Exception as exc:  # its cluster may be what failed; the handle goes anyway
        LOG.warning("closing %s failed: %s", opened.source.description, exc)
