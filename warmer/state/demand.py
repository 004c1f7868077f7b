"""This daemon's demand shard: counted in memory, written with a bounded delay.

:meth:`DemandWriter.add` folds one demand event into memory, on the event
loop, with no I/O: ``w * 2**((t - E) / h)`` (``t`` the event's own
timestamp, ``E`` this writer's epoch, ``h`` the shared half-life) is added
to the image's pending value. :meth:`DemandWriter.run` writes what is
pending at most every ``flush_interval`` seconds, and once more when the
daemon stops cleanly.

What a write holds. The writer keeps its whole shard in memory (read back
when it claims the shard at start) and writes *absolute* values, never
increments: ``stored + pending`` for every image that changed. A write
that timed out may be repeated whether or not it was applied, and the
result is the same. A failed write puts its batch back into pending, to
go with the next one.

What a crash loses. A kill -9 loses the events this daemon folded since
its last successful write: at most ``flush_interval`` seconds of its own
demand, plus the time a failing store kept it from writing. It never loses
what another daemon counted (no two daemons write the same object), nor
anything written before. A restarted daemon claims its shard, reads it
back, and carries on from there.

Two processes under one name. Claiming the shard makes this process its
only writer: every write is conditional on the shard still naming it
(``omap_cmp`` on ``_owner``). A process that finds its shard claimed by
another (:class:`~warmer.state.store.ShardLost`) logs an error, claims it
back, reloads it, and writes its batch on top: no count is lost, but the
two processes alternate, reloading the shard each time, until one stops.
Daemon names ([DEFAULT] host) must differ.

Re-basing. Before an event would count more than ``2**REBASE_AFTER``
times its weight, the writer moves its epoch to the event's time and
scales what is pending (never what is stored: each stored value names its
own epoch, and is moved when it is next written). Other daemons need not
know. Event times more than :data:`MAX_FUTURE` seconds ahead of this
daemon's clock are taken as that bound, so one bad timestamp cannot move
the epoch years ahead.

Clean-up. :meth:`DemandWriter.sweep` drops the images whose demand in this
shard has decayed below ``floor``, and those with a tombstone; they are
deleted from the shard at the next write. Each shard thus forgets less
than ``floor`` per image. :meth:`run` sweeps every :data:`SWEEP_INTERVAL`.
"""

from __future__ import annotations

import asyncio
import logging
import math
import time
import uuid
from collections.abc import Callable, Collection

from warmer.ids import bounded_token, canonical_image_id
from warmer.state.store import (
    REBASE_AFTER,
    Contribution,
    Settings,
    ShardLost,
    StateError,
    StateStore,
    pow2,
)

LOG = logging.getLogger(__name__)
MAX_FUTURE = 300.0  # seconds an event may be stamped ahead of this daemon's clock
SWEEP_INTERVAL = 300.0  # seconds between sweeps in run()


class DemandWriter:
    """The writer of one daemon's shard. Its methods run on the event loop;
    :meth:`add`, :meth:`forget` and :meth:`sweep` never wait for I/O."""

    def __init__(self, store: StateStore, daemon: str, *, half_life: float,
                 flush_interval: float, floor: float = 0.0,
                 clock: Callable[[], float] = time.time, instance: str | None = None) -> None:
        self.store = store
        self.daemon = bounded_token(daemon, "daemon name")
        self.instance = instance or uuid.uuid4().hex
        self.configured_half_life = half_life
        self.half_life = half_life  # the store's, once started
        self.flush_interval = flush_interval
        self.floor = floor
        self._clock = clock
        self._epoch = math.floor(clock())
        self._base: dict[str, Contribution] = {}  # the shard as last read or written
        self._pending: dict[str, float] = {}  # relative to self._epoch
        self._removals: set[str] = set()
        self._forgotten: set[str] = set()  # since the write in flight began
        self._flush_lock = asyncio.Lock()
        self._stop = asyncio.Event()
        self.started = False
        self.last_flush: float | None = None
        self.writes = 0  # successful writes
        # Told of every write that failed in run() (for a metric); must not raise.
        self.on_error: Callable[[StateError], None] | None = None

    @property
    def epoch(self) -> int:
        return self._epoch

    @property
    def pending(self) -> int:
        """How many images have changes not yet written."""
        return len(self._pending) + len(self._removals)

    async def start(self) -> None:
        """Agree on the half-life, claim this daemon's shard and read it."""
        settings = await self.store.settings(Settings(self.configured_half_life, self._clock()))
        if settings.half_life != self.configured_half_life:
            LOG.warning("shared demand uses a half-life of %s s (recorded %s), not the "
                        "configured %s s: using the recorded one", settings.half_life,
                        time.strftime("%Y-%m-%d %H:%M:%S", time.gmtime(settings.since)),
                        self.configured_half_life)
        if self._pending and settings.half_life != self.half_life:
            raise StateError("demand was added before start() with another half-life")
        self.half_life = settings.half_life
        self._base = await self.store.claim_shard(self.daemon, self.instance)
        self.started = True

    # -- in memory --------------------------------------------------------------

    def add(self, image_id: str, weight: float, at: float) -> None:
        """Count ``weight`` of demand for ``image_id`` at unix time ``at``."""
        canonical_image_id(image_id)
        if not (math.isfinite(weight) and math.isfinite(at)) or weight <= 0:
            return
        at = min(at, self._clock() + MAX_FUTURE)
        exponent = (at - self._epoch) / self.half_life
        if exponent > REBASE_AFTER:
            self._rebase(math.floor(at))
            exponent = (at - self._epoch) / self.half_life
        term = weight * pow2(exponent)
        if term == 0.0:
            return  # older than ~1000 half-lives: below the float range
        self._pending[image_id] = self._pending.get(image_id, 0.0) + term
        self._removals.discard(image_id)

    def forget(self, image_id: str) -> None:
        """Drop ``image_id`` from this shard (at the next write)."""
        self._pending.pop(image_id, None)
        self._base.pop(image_id, None)
        # Even if it is not in _base: a write in flight may be storing it.
        self._removals.add(image_id)
        self._forgotten.add(image_id)

    def score(self, image_id: str, now: float) -> float:
        """This shard's demand for ``image_id``, written or not."""
        total = self._pending.get(image_id, 0.0) * pow2((self._epoch - now) / self.half_life)
        stored = self._base.get(image_id)
        if stored is not None:
            total += stored.score(now, self.half_life)
        return total

    def image_ids(self) -> set[str]:
        return set(self._base) | set(self._pending)

    def stored(self) -> dict[str, Contribution]:
        """The shard as last read or written: right after :meth:`start`,
        what this daemon's previous processes wrote."""
        return dict(self._base)

    def sweep(self, now: float, tombstoned: Collection[str] = ()) -> int:
        """Forget images whose demand here is below ``floor``, and
        ``tombstoned`` ones. Returns how many were dropped."""
        dropped = [i for i in self.image_ids()
                   if i in tombstoned or (self.floor > 0 and self.score(i, now) < self.floor)]
        for image_id in dropped:
            self.forget(image_id)
        return len(dropped)

    def _rebase(self, epoch: int) -> None:
        factor = pow2((self._epoch - epoch) / self.half_life)
        for image_id, value in self._pending.items():
            self._pending[image_id] = value * factor
        LOG.debug("demand shard %s re-based from %d to %d", self.daemon, self._epoch, epoch)
        self._epoch = epoch

    # -- writes ------------------------------------------------------------------

    async def flush(self) -> int:
        """Write what is pending. Returns how many keys were written or
        deleted. On failure what was not written stays pending, and the
        error is raised."""
        if not self.started:
            raise StateError("DemandWriter.flush() before start()")
        async with self._flush_lock:
            if not self._pending and not self._removals:
                return 0
            batch, self._pending = self._pending, {}
            removals, self._removals = self._removals, set()
            self._forgotten = set()
            epoch = self._epoch
            put = {image_id: Contribution(self._total(image_id, value, epoch), epoch)
                   for image_id, value in batch.items()}
            try:
                await self.store.write_shard(self.daemon, self.instance, put, removals)
            except ShardLost as exc:
                # What was applied before the refusal is in the shard, and
                # comes back with it below: only the rest stays pending.
                self._restore({k: v for k, v in batch.items() if k not in exc.applied},
                              epoch, removals - exc.applied)
                LOG.error("demand shard %s was claimed by another process: two daemons "
                          "use the name %s, or an old one is still running; claiming "
                          "it back", self.daemon, self.daemon)
                self._base = await self.store.claim_shard(self.daemon, self.instance)
                raise
            except BaseException:
                self._restore(batch, epoch, removals)
                raise
            for image_id in removals:
                self._base.pop(image_id, None)
            for image_id, contribution in put.items():
                # Forgotten while in flight: it is in _removals (or was
                # added again, and the next write overwrites it).
                if image_id not in self._forgotten:
                    self._base[image_id] = contribution
            self.last_flush = self._clock()
            self.writes += 1
            return len(put) + len(removals)

    def _total(self, image_id: str, pending: float, epoch: int) -> float:
        stored = self._base.get(image_id)
        if stored is None:
            return pending
        return pending + stored.relative_to(epoch, self.half_life)

    def _restore(self, batch: dict[str, float], epoch: int, removals: set[str]) -> None:
        """Put a batch that was not written back in front of what arrived
        since (which may be relative to a newer epoch)."""
        factor = pow2((epoch - self._epoch) / self.half_life)
        for image_id, value in batch.items():
            if image_id not in self._forgotten:
                self._pending[image_id] = self._pending.get(image_id, 0.0) + value * factor
        self._removals |= removals - self._pending.keys()

    async def run(self) -> None:
        """Write every ``flush_interval`` seconds and sweep every
        :data:`SWEEP_INTERVAL`, until :meth:`stop`; then write once more
        and return. A failed write is logged and retried at the next tick;
        if the last one fails, what it held is lost, and logged. Cancelled
        instead of stopped, it does not write again."""
        next_sweep = self._clock() + SWEEP_INTERVAL
        while not self._stop.is_set():
            try:
                await asyncio.wait_for(self._stop.wait(), self.flush_interval)
            except TimeoutError:
                pass
            if self._stop.is_set():
                break
            try:
                if self._clock() >= next_sweep:
                    next_sweep = self._clock() + SWEEP_INTERVAL
                    tombstones = await self.store.tombstones()
                    self.sweep(self._clock(), tombstones)
                await self.flush()
            except StateError as exc:
                LOG.warning("demand shard %s: write failed, %d images stay pending: %s",
                            self.daemon, self.pending, exc)
                if self.on_error is not None:
                    self.on_error(exc)
        try:
            await self.flush()
        except StateError as exc:
            if self.on_error is not None:
                self.on_error(exc)
            LOG.error("demand shard %s: the last write failed, the demand of %d images "
                      "counted since the previous one is lost: %s",
                      self.daemon, self.pending, exc)

    def stop(self) -> None:
        """Ask :meth:`run` to write a last time and return."""
        self._stop.set()
