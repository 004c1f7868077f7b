"""The daemon's side of the shared demand: what it writes, what it reads back.

:class:`FleetDemand` connects the :class:`~warmer.tracker.Tracker` to the
shared state (docs/state.md), one :class:`~warmer.state.demand.DemandWriter`
per site. Demand of site ``S`` lives in its own RADOS namespace,
``<[state] namespace>.demand.<S>`` (:func:`demand_namespace`), with the
store format unchanged: each site namespace has its own directory and one
shard per daemon. Settings (the half-life), tombstones and pins stay in the
base namespace (:class:`SiteStore` routes each call).

Local and remote. The tracker keeps, per site and image, a *local* part
(the demand events this process counted) and a *remote* part, which this
module sets whole:

    remote = the other daemons' shards + this daemon's own shard as it was
             when this process claimed it (its previous life)

Every event counted from then on goes to the tracker's local part and to
the writer's pending part (:meth:`FleetDemand.count`, the tracker's
``on_demand`` hook), never into remote: this daemon's own shard is not
read again after the claim, so nothing is counted twice, and a restarted
daemon starts with exactly what its predecessor had written.

Refresh. Every ``refresh_interval`` seconds: tombstones recorded here are
written, the tombstones in the state are read (an image tombstoned by
another daemon, or before a restart, is deleted in the tracker, and the
engine is asked to look at it: Glance still has the last word), and each
site's other shards are read (``read_demand`` skipping this daemon's
shard; the reads and the merge run on the Ceph thread pool). Only images
whose remote value changed, or dropped out (remote 0), are set in the
tracker; an image it did not track becomes tracked, which is how a
restarted daemon knows every image with demand at once.

Failures. A store that cannot be reached or refuses
(:class:`~warmer.state.store.StateError`) never stops the daemon: the
error is logged and counted (``on_error(op, exc)``), and the same step is
tried again at the next interval. Local counts are not lost meanwhile:
they stay in the tracker and pending in the writer, which writes them once
the store answers. A site whose shard could not be claimed at start is
claimed at a later refresh; until then its writer only counts in memory.
A :class:`~warmer.state.store.ShardLost` is handled by the writer (it
claims the shard back and writes on top; see its module doc).

Everything here runs on the event loop; :meth:`count` does no I/O.
"""

from __future__ import annotations

import asyncio
import contextlib
import datetime as dt
import logging
import math
import time
from collections.abc import AsyncIterator, Callable, Collection, Mapping, Sequence

from warmer.ids import bounded_token
from warmer.state.demand import DemandWriter
from warmer.state.store import (
    Contribution,
    CopyCost,
    DemandTotals,
    Pin,
    Settings,
    ShardInfo,
    StateError,
    StateStore,
    Tombstone,
    VerifiedSnapshot,
    pow2,
)
from warmer.tracker import Tracker

LOG = logging.getLogger(__name__)
# RADOS refuses namespaces longer than osd_max_object_namespace_len (256
# bytes by default) with ENAMETOOLONG; refuse them at start instead.
MAX_NAMESPACE_BYTES = 256
YIELD_EVERY = 5000  # set_remote calls between two yields to the loop


def demand_namespace(base: str, site: str) -> str:
    """The RADOS namespace that holds ``site``'s demand. Site names are
    target names: tokens (letters, digits, ``._:-``), so the namespace is
    one too, whatever the base. ``ValueError`` when it would be too long."""
    bounded_token(site, "site name")
    namespace = f"{base}.demand.{site}" if base else f"demand.{site}"
    if len(namespace.encode()) > MAX_NAMESPACE_BYTES:
        raise ValueError(f"the demand namespace {namespace[:64]!r}... of site {site!r} is "
                         f"longer than {MAX_NAMESPACE_BYTES} bytes: shorten [state] "
                         "namespace or the target name")
    return namespace


class SiteStore:
    """One site's view of the state: demand (shards, directory) in
    ``demand``, everything else (settings, pins, tombstones, costs,
    verified snapshots) in ``base``. Closing it closes nothing: the stores are the caller's."""

    def __init__(self, base: StateStore, demand: StateStore) -> None:
        self.base = base
        self.demand = demand

    async def settings(self, proposed: Settings) -> Settings:
        return await self.base.settings(proposed)

    async def claim_shard(self, daemon: str, instance: str) -> dict[str, Contribution]:
        return await self.demand.claim_shard(daemon, instance)

    async def write_shard(self, daemon: str, instance: str, put: Mapping[str, Contribution],
                          remove: Collection[str]) -> None:
        await self.demand.write_shard(daemon, instance, put, remove)

    async def shards(self) -> dict[str, ShardInfo]:
        return await self.demand.shards()

    async def read_demand(self, half_life: float, skip: Collection[str] = ()) -> DemandTotals:
        return await self.demand.read_demand(half_life, skip)

    async def demand_of(self, image_ids: Collection[str], half_life: float) -> DemandTotals:
        return await self.demand.demand_of(image_ids, half_life)

    async def put_pin(self, pin: Pin) -> None:
        await self.base.put_pin(pin)

    async def remove_pin(self, image_id: str) -> None:
        await self.base.remove_pin(image_id)

    async def pins(self) -> dict[str, Pin]:
        return await self.base.pins()

    async def put_tombstone(self, tombstone: Tombstone) -> None:
        await self.base.put_tombstone(tombstone)

    async def remove_tombstones(self, image_ids: Collection[str]) -> None:
        await self.base.remove_tombstones(image_ids)

    async def tombstones(self) -> dict[str, Tombstone]:
        return await self.base.tombstones()

    async def put_cost(self, cost: CopyCost) -> None:
        await self.base.put_cost(cost)

    async def remove_cost(self, target: str, image_id: str) -> None:
        await self.base.remove_cost(target, image_id)

    async def costs(self, target: str) -> dict[str, CopyCost]:
        return await self.base.costs(target)

    async def verified(self, image_id: str) -> dict[str, VerifiedSnapshot]:
        return await self.base.verified(image_id)

    async def put_verified(self, record: VerifiedSnapshot) -> None:
        await self.base.put_verified(record)

    async def remove_verified(self, image_ids: Collection[str]) -> None:
        await self.base.remove_verified(image_ids)

    async def mismatched(self, image_id: str) -> set[str]:
        return await self.base.mismatched(image_id)

    async def put_mismatched(self, record: VerifiedSnapshot) -> None:
        await self.base.put_mismatched(record)

    async def remove_mismatched(self, image_ids: Collection[str]) -> None:
        await self.base.remove_mismatched(image_ids)

    async def close(self) -> None:
        pass


class FleetDemand:
    """This daemon's demand shards (one per site of ``tracker``) and the
    fleet's demand read back into ``tracker``. ``stores`` gives each site's
    :class:`SiteStore` (or any store); ``base`` holds the tombstones.

    ``on_error(op, exc)`` is told of every failed state operation (op:
    ``start``, ``refresh``, ``tombstone``, ``flush``); ``on_changed(image)``
    of every image whose remote demand changed or that another daemon saw
    deleted (the service queues it for evaluation). Neither may raise."""

    def __init__(self, tracker: Tracker, base: StateStore, stores: Mapping[str, StateStore],
                 *, daemon: str, flush_interval: float, refresh_interval: float,
                 floor: float = 0.0, clock: Callable[[], float] = time.time,
                 tombstone_ttl: float = 0.0,
                 on_error: Callable[[str, Exception], None] | None = None,
                 on_changed: Callable[[str], None] | None = None) -> None:
        missing = set(tracker.sites) - set(stores)
        if missing:
            raise ValueError(f"no demand store for sites {sorted(missing)}")
        self.tracker = tracker
        self.base = base
        self.daemon = bounded_token(daemon, "daemon name")
        self.refresh_interval = refresh_interval
        # Seconds a tombstone stays in the state (0: for ever). Long enough
        # for every daemon, and one restarted after an outage, to apply it;
        # after that it only makes the tombstone object grow.
        self.tombstone_ttl = tombstone_ttl
        self._clock = clock
        self._on_error = on_error
        self._on_changed = on_changed
        self.writers: dict[str, DemandWriter] = {}
        for site in tracker.sites:
            writer = DemandWriter(stores[site], daemon, half_life=tracker.half_life,
                                  flush_interval=flush_interval, floor=floor, clock=clock)
            # The writer logs its own failures: only count them.
            writer.on_error = lambda exc: self._count("flush", exc)
            self.writers[site] = writer
        # Per site: this daemon's shard as its previous process left it.
        self._previous: dict[str, dict[str, Contribution]] = {}
        # Per site: the remote value last given to the tracker, and its epoch.
        self._remote: dict[str, dict[str, tuple[float, int]]] = {s: {} for s in tracker.sites}
        self._tombstones_seen: set[str] = set()
        # The pins set through warmer, as last read (or set here).
        self.pins: dict[str, Pin] = {}
        # A read of the pins is applied only if no pin or unpin of this
        # daemon was under way at any time while it was read: one that
        # began before a local change may land after it, and would undo it
        # here until the next refresh, which reads again. ``_pin_changes``
        # counts the local changes' starts and ends. The lock is held across
        # a pin or unpin and its apply, never across a read (a read of a
        # sick state waits for its op timeouts, and ``warmer pin`` must
        # not): pins and unpins of this daemon reach the state in the order
        # they are applied here.
        self._pin_changes = 0
        self._pins_lock = asyncio.Lock()
        self._tombstones_pending: dict[str, Tombstone] = {}
        # Tombstones to take out of the state (Glance still has the image),
        # and the ones this daemon applied (to notice when one goes).
        self._revived_pending: set[str] = set()
        self._applied: set[str] = set()
        self._runs: dict[str, asyncio.Task[None]] = {}
        self._stop = asyncio.Event()
        self.refreshes = 0  # refreshes that read every site
        self.last_refresh: float | None = None
        self.last_refresh_seconds: float | None = None

    @property
    def sites(self) -> tuple[str, ...]:
        return tuple(self.writers)

    @property
    def started(self) -> bool:
        """Every site's shard is claimed."""
        return all(w.started for w in self.writers.values())

    # -- intake: the tracker's on_demand hook, on the loop, no I/O ---------------------

    def count(self, image_id: str, weight: float, at: float, sites: Sequence[str]) -> None:
        """A demand event the tracker counted in ``sites``."""
        for site in sites:
            writer = self.writers.get(site)
            if writer is not None:
                writer.add(image_id, weight, at)

    def record_deleted(self, image_id: str) -> None:
        """The engine confirmed ``image_id`` deleted: record a tombstone (at
        the next refresh) and drop it from this daemon's shards."""
        if image_id not in self._tombstones_seen:
            self._tombstones_pending[image_id] = Tombstone(image_id, self._clock(), self.daemon)
            self._tombstones_seen.add(image_id)
        self._drop(image_id)

    def record_revived(self, image_id: str) -> None:
        """Glance still has ``image_id``, which a tombstone said was deleted
        (forged, or written after a 404 from a wrong endpoint): take the
        tombstone out of the state at the next refresh, so that no daemon
        keeps dropping the image's demand."""
        self._tombstones_pending.pop(image_id, None)
        self._tombstones_seen.discard(image_id)
        self._applied.discard(image_id)
        self._revived_pending.add(image_id)

    def _drop(self, image_id: str) -> None:
        for site, writer in self.writers.items():
            writer.forget(image_id)
            self._previous.get(site, {}).pop(image_id, None)
            self._remote[site].pop(image_id, None)

    # -- start, refresh, run -------------------------------------------------------------

    async def start(self) -> bool:
        """Claim every site's shard not claimed yet, then refresh. Returns
        whether everything succeeded; what failed is retried by
        :meth:`run`."""
        for site, writer in self.writers.items():
            if writer.started:
                continue
            try:
                await writer.start()
            except StateError as exc:
                self._failed("start", exc, site)
                continue
            self._previous[site] = writer.stored()
            if writer.half_life != self.tracker.half_life:
                # The writer warned already: the recorded half-life wins.
                self.tracker.set_half_life(writer.half_life, self._clock())
            LOG.info("demand of site %s: shard %s claimed, %d images from its previous "
                     "process", site, self.daemon, len(self._previous[site]))
        return await self.refresh() and self.started

    async def refresh(self) -> bool:
        """Write pending tombstones, apply the recorded ones, read the pins,
        and set every claimed site's remote demand. Returns whether all of
        it worked."""
        ok = await self._sync_tombstones()
        ok = await self._sync_pins() and ok
        started = time.perf_counter()
        complete = True
        for site, writer in self.writers.items():
            if not writer.started:
                complete = False
                continue
            try:
                others = await writer.store.read_demand(writer.half_life, skip=(self.daemon,))
            except StateError as exc:
                self._failed("refresh", exc, site)
                complete = False
                continue
            others.add_all(self._previous[site].items())
            await self._set_remote(site, others)
        if complete:
            self.refreshes += 1
            self.last_refresh = self._clock()
            self.last_refresh_seconds = time.perf_counter() - started
        return ok and complete

    async def _set_remote(self, site: str, totals: DemandTotals) -> None:
        last = self._remote[site]
        epoch = totals.epoch
        seen: set[str] = set()
        calls = 0
        for image_id in totals.image_ids():
            if self.tracker.is_deleted(image_id):
                continue
            seen.add(image_id)
            assert epoch is not None
            value = totals.value(image_id)
            before = last.get(image_id)
            last[image_id] = (value, epoch)
            if before is not None and math.isclose(
                    before[0] * pow2((before[1] - epoch) / totals.half_life), value,
                    rel_tol=1e-12):
                # The same demand, only relative to a newer epoch (a peer
                # restarted or re-based): nothing to tell the tracker.
                continue
            self.tracker.set_remote(site, image_id, value, float(epoch))
            self._changed(image_id)
            calls += 1
            if calls % YIELD_EVERY == 0:
                await asyncio.sleep(0)
        for image_id in [i for i in last if i not in seen]:
            del last[image_id]
            self.tracker.set_remote(site, image_id, 0.0, 0.0)
            self._changed(image_id)

    async def _sync_tombstones(self) -> bool:
        pending = list(self._tombstones_pending.values())
        try:
            for tombstone in pending:
                await self.base.put_tombstone(tombstone)
                del self._tombstones_pending[tombstone.image_id]
            if self._revived_pending:
                revived = list(self._revived_pending)
                await self.base.remove_tombstones(revived)
                self._revived_pending.difference_update(revived)
            recorded = await self.base.tombstones()
        except StateError as exc:
            self._failed("tombstone", exc)
            return False
        for image_id, tombstone in recorded.items():
            if image_id in self._tombstones_seen:
                continue
            self._tombstones_seen.add(image_id)
            if not self.tracker.is_deleted(image_id):
                LOG.info("image %s: deleted (tombstone by %s)", image_id,
                         tombstone.by or "another daemon")
                self.tracker.delete(image_id, _utc(tombstone.at))
                self._applied.add(image_id)
                self._changed(image_id)
            self._drop(image_id)
        expired = await self._expire_tombstones(recorded)
        for image_id in [i for i in self._applied if i not in recorded]:
            self._applied.discard(image_id)
            if image_id in expired:
                # Still seen: a later confirmation of the same delete (the
                # engine repeats it while a purge waits, e.g. for clones)
                # must not record it again and restart its TTL.
                continue
            # Its tombstone was taken out (Glance still has the image): look
            # again, and Glance's answer revives it here too.
            self._tombstones_seen.discard(image_id)
            self._changed(image_id)
        return True

    async def _expire_tombstones(self, recorded: dict[str, Tombstone]) -> set[str]:
        """Take the tombstones older than ``tombstone_ttl`` out of the state
        (any daemon may: removing one twice is harmless) and out of
        ``recorded``. Returns the ids taken out, or none if that failed
        (the next refresh tries again)."""
        if self.tombstone_ttl <= 0:
            return set()
        cutoff = self._clock() - self.tombstone_ttl
        expired = {i for i, t in recorded.items() if t.at < cutoff}
        if not expired:
            return set()
        try:
            await self.base.remove_tombstones(sorted(expired))
        except StateError as exc:
            self._failed("tombstone", exc)
            return set()
        for image_id in expired:
            del recorded[image_id]
        LOG.info("shared state: %d tombstones older than %.0fs removed", len(expired),
                 self.tombstone_ttl)
        return expired

    # -- pins set through warmer (the admin API and CLI) -------------------------------

    async def _sync_pins(self) -> bool:
        """Read every pin: the tracker wants pinned images in every site
        (once eligible), and images whose pin came or went are evaluated.
        This is how every daemon of the fleet honours a pin another one
        set, within ``refresh_interval``, and a restarted one at start. A
        read that overlapped a pin or unpin here is dropped (see
        ``_pin_changes``): the next refresh reads again."""
        changes, busy = self._pin_changes, self._pins_lock.locked()
        try:
            recorded = await self.base.pins()
        except StateError as exc:
            self._failed("pins", exc)
            return False
        if busy or self._pin_changes != changes:
            LOG.debug("pins read overlapped a pin or unpin here: dropped, read again at the "
                      "next refresh")
            return True
        self._apply_pins(recorded)
        return True

    def _apply_pins(self, pins: dict[str, Pin]) -> None:
        self.pins = pins
        for image_id in sorted(self.tracker.set_pins(pins)):
            LOG.info("image %s: %s through warmer", image_id,
                     "pinned" if image_id in pins else "unpinned")
            self._changed(image_id)

    async def pin(self, image_id: str, by: str, reason: str = "") -> Pin:
        """Pin ``image_id`` for the whole fleet: written to the shared state
        first (:class:`~warmer.state.store.StateError` when it cannot be:
        nothing is pinned then), applied here at once, and by the other
        daemons at their next refresh. Pinning again replaces who, when and
        why. Never waits for a read of the pins (see ``_pin_changes``); waits
        for a pin or unpin under way here."""
        async with self._local_pin_change():
            pin = Pin(image_id, by, self._clock(), reason)
            await self.base.put_pin(pin)
            self._apply_pins({**self.pins, image_id: pin})
        return pin

    async def unpin(self, image_id: str) -> bool:
        """Remove the pin (idempotent); whether it was pinned, as this daemon
        last read the pins."""
        async with self._local_pin_change():
            await self.base.remove_pin(image_id)
            was = image_id in self.pins
            self._apply_pins({i: p for i, p in self.pins.items() if i != image_id})
        return was

    @contextlib.asynccontextmanager
    async def _local_pin_change(self) -> AsyncIterator[None]:
        async with self._pins_lock:
            self._pin_changes += 1
            try:
                yield
            finally:
                self._pin_changes += 1

    async def run(self) -> None:
        """Write each site's shard (the writers' own loops) and refresh every
        ``refresh_interval``, retrying whatever failed, until :meth:`stop`;
        then write a last time and return."""
        self._spawn_writers()
        while not self._stop.is_set():
            try:
                await asyncio.wait_for(self._stop.wait(), self.refresh_interval)
            except TimeoutError:
                pass
            if self._stop.is_set():
                break
            try:
                if not self.started:
                    await self.start()
                    self._spawn_writers()
                else:
                    await self.refresh()
            except Exception as exc:  # a bug here must not stop the daemon
                LOG.exception("shared state: refresh failed unexpectedly")
                self._count("refresh", exc)
        for writer in self.writers.values():
            writer.stop()
        if self._runs:
            await asyncio.gather(*self._runs.values())
        await self._sync_tombstones()

    def _spawn_writers(self) -> None:
        for site, writer in self.writers.items():
            if writer.started and site not in self._runs:
                self._runs[site] = asyncio.create_task(writer.run(), name=f"demand-{site}")

    def stop(self) -> None:
        """Ask :meth:`run` to write a last time and return."""
        self._stop.set()

    # -- helpers ---------------------------------------------------------------------------

    def _changed(self, image_id: str) -> None:
        if self._on_changed is not None:
            self._on_changed(image_id)

    def _failed(self, op: str, exc: Exception, site: str | None = None) -> None:
        where = f" (site {site})" if site else ""
        LOG.warning("shared state: %s failed%s, retried in %.0fs: %s", op, where,
                    self.refresh_interval, exc)
        self._count(op, exc)

    def _count(self, op: str, exc: Exception) -> None:
        if self._on_error is not None:
            self._on_error(op, exc)


def _utc(at: float) -> dt.datetime:
    return dt.datetime.fromtimestamp(at, dt.UTC)
