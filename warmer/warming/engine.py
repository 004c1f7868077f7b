"""The engine: turns events into work, does the work, remembers the result.

Events are folded into the :class:`~warmer.tracker.Tracker` on the loop
(that is the hand-off the bus acks on) and the image is queued. Workers
take images off the queue one at a time per image, ask Glance for its
current view when they are about to act, and warm every target. A
reconciliation pass re-queues everything periodically and discovers
pinned images, which repairs whatever missed or reordered notifications
left behind (notifications are at-most-once).

What a crash leaves behind: in-memory knowledge only. The snapshot
repairs themselves are single, idempotent RBD operations (create, then
protect), so a kill between them leaves an unprotected snapshot that the
next evaluation protects; nothing is published by this module.
"""

from __future__ import annotations

import asyncio
import logging
import random
import time
from collections.abc import Callable
from dataclasses import dataclass

from warmer.ceph.bindings import errors as ceph_errors
from warmer.ceph.client import CephUnavailable
from warmer.events import Event, ImageDeleted
from warmer.glance.client import GlanceClient, GlanceImage, GlanceUnavailable, LocationConflict
from warmer.glance.stores import StoreCatalog
from warmer.locations import parse_rbd_url
from warmer.metrics import Metrics
from warmer.popularity import Verdict
from warmer.sites import SiteMap
from warmer.tracker import Tracker
from warmer.warming.copy import CopyStats
from warmer.warming.target import Target, TargetProblem, TargetResult

LOG = logging.getLogger(__name__)


@dataclass(frozen=True)
class ImageStatus:
    image_id: str
    target: str
    pool: str
    state: str  # warm, cold, not_wanted, error
    reason: str
    location: str | None
    actions: tuple[str, ...]
    checked_at: float
    detail: str | None = None


class Engine:
    def __init__(self, tracker: Tracker, glance: GlanceClient, targets: list[Target],
                 metrics: Metrics, *, workers: int, reconcile_interval: float,
                 retry_delay: float, stores: StoreCatalog | None = None,
                 max_retry_delay: float = 3600.0, sites: SiteMap | None = None,
                 clock: Callable[[], float] = time.time) -> None:
        self.tracker = tracker
        # Where each demand event counts (None: in every target).
        self.sites = sites
        self.glance = glance
        self.stores = stores
        self.max_retry_delay = max_retry_delay
        self.targets = targets
        self.metrics = metrics
        self.workers = workers
        self.reconcile_interval = reconcile_interval
        self.retry_delay = retry_delay
        self.clock = clock
        self._queue: asyncio.Queue[str] = asyncio.Queue()
        self._pending: set[str] = set()
        self._active: set[str] = set()
        self._admission_locks: dict[str, asyncio.Lock] = {}
        self._again: set[str] = set()
        self._status: dict[tuple[str, str], ImageStatus] = {}
        self._retries: dict[str, asyncio.TimerHandle] = {}
        # Consecutive retries per image that do not pass by themselves
        # (publish_refused, clones that keep a copy, an unconfirmed 404):
        # each one waits longer, up to max_retry_delay.
        self._refusals: dict[str, int] = {}
        # Images warmer stopped touching (their Glance locations changed
        # under a removal), with the reason; until an operator looks.
        self.hands_off: dict[str, str] = {}
        # An image Glance showed recently, and images warmer keeps copies
        # of: the positive controls of a 404.
        self._last_alive: str | None = None
        self._copied: set[str] = set()
        self._from_bus: dict[str, None] = {}  # recent image ids from notifications
        self.accepting = True
        self.reconciled = asyncio.Event()
        for target in targets:
            target.admit = self.admit
            target.on_copied = self._count_copy

    # -- intake (on the loop, called by the bus bridge) -------------------------

    async def handle(self, event: Event) -> str:
        """:meth:`fold`, as a coroutine."""
        return self.fold(event)

    def fold(self, event: Event) -> str:
        """Fold ``event`` into what warmer knows and queue the work it implies.
        Returns the outcome to count. Raises :class:`Draining` once the
        daemon stops taking work, so the bus requeues the message.

        Synchronous, on the loop, and bounded (no I/O): the bus bridge relies
        on a fold that has started being finished soon after."""
        if not self.accepting:
            raise Draining()
        applied = self.tracker.apply(
            event, sites=None if self.sites is None else self.sites.sites_of(event))
        if not isinstance(event, ImageDeleted):
            # An image our own bus spoke of: if Glance later shows it, that
            # Glance is ours (a positive control for 404s).
            self._from_bus[applied.image_id] = None
            if len(self._from_bus) > 1000:
                del self._from_bus[next(iter(self._from_bus))]
        if isinstance(event, ImageDeleted):
            self._drop_status(event.image_id)
            self.enqueue(event.image_id)  # to remove warmer's copies of it, once confirmed
        elif applied.changed:
            self.enqueue(applied.image_id)
        return applied.outcome

    def enqueue(self, image_id: str) -> None:
        if image_id in self._pending:
            return
        self._pending.add(image_id)
        self._queue.put_nowait(image_id)
        self.metrics.queue_depth.set(self._queue.qsize())

    def request(self, image_id: str, limit: int) -> bool:
        """An operator asks for ``image_id`` to be evaluated (admin API).
        Refused (False) while the queue holds ``limit`` images or more, so
        requests cannot grow it without bound; an image already queued is
        accepted without growing it. :meth:`enqueue`, used by events and
        reconciliation, is not bounded."""
        if image_id not in self._pending and self._queue.qsize() >= limit:
            return False
        self.enqueue(image_id)
        return True

    # -- work --------------------------------------------------------------------

    async def run(self) -> None:
        """Run the workers and the reconciler until cancelled."""
        async with asyncio.TaskGroup() as tg:
            for n in range(self.workers):
                tg.create_task(self._worker(), name=f"warm-worker-{n}")
            tg.create_task(self._reconcile_loop(), name="reconciler")

    async def _worker(self) -> None:
        while True:
            image_id = await self._queue.get()
            self._pending.discard(image_id)
            self.metrics.queue_depth.set(self._queue.qsize())
            if not self.accepting:  # draining: leave the backlog to the next start
                self._queue.task_done()
                continue
            try:
                await self.evaluate(image_id)
            except asyncio.CancelledError:
                raise
            except Exception:
                LOG.exception("evaluating image %s failed", image_id)
                self._retry_later(image_id)
            finally:
                self._queue.task_done()

    async def idle(self) -> None:
        """Wait until the queue is empty and nothing is being evaluated
        (once draining, queued images are dropped, not evaluated)."""
        await self._queue.join()

    async def evaluate(self, image_id: str) -> None:
        """Evaluate one image. Never two evaluations of the same image at
        once: a request that arrives meanwhile runs again right after."""
        if image_id in self._active:
            self._again.add(image_id)
            return
        self._active.add(image_id)
        try:
            if image_id in self.hands_off:
                self._record_all(image_id, "error", self.hands_off[image_id], None, ())
                return
            await self._evaluate(image_id)
        except (GlanceUnavailable, CephUnavailable) as exc:
            delay = (self._backoff(self._bump(image_id))
                     if isinstance(exc, UnconfirmedNotFound) else self.retry_delay)
            LOG.warning("image %s: %s; retrying in %.0fs", image_id, exc, delay)
            self._record_all(image_id, "error", _error_reason(exc), None, ())
            self._retry_later(image_id, delay)
        except LocationConflict as exc:
            self._let_go(image_id, exc)
        finally:
            self._active.discard(image_id)
            if image_id in self._again:
                self._again.discard(image_id)
                self.enqueue(image_id)

    async def _evaluate(self, image_id: str) -> None:
        if self.tracker.is_deleted(image_id):
            # A notification said so; Glance has the last word (a replayed or
            # forged image.delete must not remove a copy Glance still lists).
            alive = await self.glance.get_image(image_id)
            if alive is not None:
                LOG.warning("image %s: image.delete received, but Glance still has it "
                            "(%s); keeping its copies", image_id, alive.info.status)
                self.tracker.revive(alive.info)
                self.enqueue(image_id)
                return
            await self._confirm_gone(image_id, deleted=True)
            LOG.info("image %s was deleted in Glance; removing warmer's copies of it", image_id)
            self._drop_status(image_id)
            await self._purge_everywhere(image_id, "deleted")
            return
        fresh: GlanceImage | None = None
        if self.tracker.image(image_id) is None or self.tracker.is_stale(image_id):
            fresh = await self._refresh(image_id)
            if fresh is None:
                return
        verdicts = self.verdicts(image_id)
        if fresh is None and any(v is not None and v.wanted for v in verdicts.values()):
            # About to act: use Glance's current view, with locations.
            fresh = await self._refresh(image_id)
            if fresh is None:
                return
            verdicts = self.verdicts(image_id)
        if all(v is None for v in verdicts.values()):
            self._drop_status(image_id)
            return
        wanted = []
        for target in self.targets:
            verdict = verdicts[target.name]
            if verdict is not None and verdict.wanted:
                wanted.append(target)
            else:
                # Demand elsewhere is not demand here (site-local demand).
                self._record(image_id, target, TargetResult(
                    "not_wanted", verdict.reason if verdict else "unknown", None))
        if not wanted:
            return
        assert fresh is not None  # refreshed above, as something is wanted
        results = await asyncio.gather(*(self._warm_one(target, fresh)
                                         for target in wanted))
        refused = any(r.reason == "publish_refused" for r in results)
        if refused:
            # Glance refusing a location does not pass by itself: back off.
            self._retry_later(image_id, self._backoff(self._bump(image_id)))
        else:
            self._refusals.pop(image_id, None)
            if any(r.state in ("busy", "error") or r.reason == "image_deleted"
                   for r in results):
                self._retry_later(image_id)

    async def _warm_one(self, target: Target, image: GlanceImage) -> TargetResult:
        """Warm one target and record its result on its own: a sick cluster
        fails only its own row, never the other targets' work or status."""
        started = time.monotonic()
        try:
            result = await target.warm(image)
        except asyncio.CancelledError:
            raise
        except (GlanceUnavailable, CephUnavailable) as exc:
            LOG.warning("image %s, target %s: %s; retrying in %.0fs", image.info.id,
                        target.name, exc, self.retry_delay)
            result = TargetResult("error", _error_reason(exc), detail=str(exc))
        except LocationConflict:
            raise
        except Exception:
            LOG.exception("image %s, target %s: warming failed", image.info.id, target.name)
            result = TargetResult("error", "internal_error")
        self.metrics.warm_duration.labels(target.name, result.state).observe(
            time.monotonic() - started)
        for action in result.actions:
            self.metrics.changes.labels(target.name, _pool_of(result), action).inc()
        if result.reason == "publish_refused":
            self.metrics.glance_refusals.labels(target.name, "publish_refused").inc()
        if "copied" in result.actions or "published_location" in result.actions:
            self._copied.add(image.info.id)
        self._record(image_id=image.info.id, target=target, result=result)
        return result

    def _bump(self, image_id: str) -> int:
        self._refusals[image_id] = self._refusals.get(image_id, 0) + 1
        return self._refusals[image_id]

    def _backoff(self, attempts: int) -> float:
        return float(min(self.retry_delay * 2.0 ** min(attempts - 1, 30),
                         self.max_retry_delay))

    def _let_go(self, image_id: str, exc: LocationConflict) -> None:
        """Glance's locations changed under a removal warmer made: somebody
        else's location may be gone. Stop touching the image (no publish,
        no eviction, no removal) until the daemon restarts or an operator
        acts, and say so loudly."""
        LOG.error("%s; warmer will not touch image %s again until restarted", exc, image_id)
        self.hands_off[image_id] = "location_conflict"
        self.metrics.glance_refusals.labels("", "location_conflict").inc()
        self._record_all(image_id, "error", "location_conflict", None, ())

    async def _refresh(self, image_id: str) -> GlanceImage | None:
        fresh = await self.glance.get_image(image_id)
        if fresh is None:
            try:
                await self._confirm_gone(image_id)
            except UnconfirmedNotFound:
                # Keep it, and its demand: nothing is removed or forgotten
                # on a 404 that could be the wrong Glance's.
                self.tracker.keep(image_id)
                raise
            LOG.info("image %s is gone from Glance; forgetting it", image_id)
            self.tracker.forget(image_id)
            self._drop_status(image_id)
            await self._purge_everywhere(image_id, "deleted")
            return None
        self.tracker.observe(fresh.info, authoritative=True)
        if image_id in self._from_bus:
            self._last_alive = image_id  # our bus named it, and this Glance has it
        return fresh

    async def _confirm_gone(self, image_id: str, *, deleted: bool = False) -> None:
        """Glance said 404 (or deleted) for ``image_id``. A 404 is not a
        delete (invariant 8): raise UnconfirmedNotFound unless known-good
        requests show this is the right Glance: its stores are the targets'
        clusters, and, unless an ``image.delete`` said so too, another image
        that warmer knows this Glance holds (one it showed lately, or one
        warmer keeps a copy of) still answers. Another region's Glance that
        shares the Ceph clusters passes the first check, never the second."""
        right = self.stores is not None and await self.stores.endpoint_is_right(
            self.expected_stores())
        if right and not deleted:
            right = await self._a_known_image_answers(image_id)
        if not right:
            self.metrics.glance_refusals.labels("", "unconfirmed_404").inc()
            raise UnconfirmedNotFound(f"GET image {image_id}: 404, and Glance's endpoint "
                                      "could not be shown right")

    def expected_stores(self) -> dict[str, str]:
        """Glance store id -> cluster fsid, for each copying target whose
        cluster answered: what the right Glance's stores must say."""
        return {t.config.glance_store: t.ceph.fsid for t in self.targets
                if t.ceph.fsid is not None and t.config.copy_images}

    async def _a_known_image_answers(self, image_id: str) -> bool:
        """A positive control: another image that this Glance must hold and
        still shows: one our own bus named that it showed before, or one warmer
        copied, listed with warmer's own location. Another region's Glance,
        sharing the clusters, can show neither. Without such an image the
        404 stays unconfirmed (an image.delete still confirms it)."""
        if self._last_alive not in (None, image_id):
            assert self._last_alive is not None
            if await self.glance.get_image(self._last_alive) is not None:
                return True
        others = list(self._copied - {image_id})
        for control in random.sample(others, min(3, len(others))):
            image = await self.glance.get_image(control)
            if image is not None and self._lists_our_copy(image):
                self._last_alive = control
                return True
        return False

    def _lists_our_copy(self, image: GlanceImage) -> bool:
        fsids = {t.ceph.fsid for t in self.targets if t.ceph.fsid is not None}
        for loc in image.locations:
            rbd = parse_rbd_url(loc.url)
            if rbd is not None and rbd.fsid in fsids and rbd.image == image.info.id \
                    and rbd.snapshot == "snap":
                return True
        return False

    async def _purge_everywhere(self, image_id: str, reason: str) -> None:
        """Glance no longer has the image: remove warmer's copies of it.
        Either order of events converges: if Glance deleted them first
        (it deletes the data at every location), this finds them gone."""
        deferred = False
        for target in self.targets:
            if not target.config.copy_images:
                continue
            try:
                result = await target.purge(image_id)
            except (TargetProblem, CephUnavailable) as exc:
                LOG.warning("target %s: cannot remove the copy of %s now: %s", target.name,
                            image_id, exc)
                result = "error"
            if result != "gone":
                self.metrics.evictions.labels(target.name, reason, result).inc()
            deferred = deferred or result in ("has_children", "busy", "error")
        if deferred:
            delay = self._backoff(self._bump(image_id))
            LOG.info("image %s: some copies cannot be removed yet; trying again in %.0fs",
                     image_id, delay)
            self._retry_later(image_id, delay)
        else:
            self._copied.discard(image_id)
            self._refusals.pop(image_id, None)

    # -- budgets -------------------------------------------------------------------

    def _site(self, target: Target) -> str | None:
        """The tracker's site for ``target`` (its name); a tracker with one
        shared site (no per-target demand) answers for every target."""
        return target.name if target.name in self.tracker.sites else None

    def verdicts(self, image_id: str) -> dict[str, Verdict | None]:
        """Whether ``image_id`` is wanted, per target: by that target's own
        demand or policy, or, for a target configured ``wanted_anywhere``,
        by any target's. O(targets · log N)."""
        now = self.clock()
        found = {t.name: self.tracker.verdict(image_id, now, self._site(t))
                 for t in self.targets}
        anywhere = self.sites.wanted_anywhere_targets() if self.sites else frozenset()
        if anywhere:
            best = max((v for v in found.values() if v is not None and v.wanted),
                       key=lambda v: v.score, default=None)
            for name in anywhere:
                mine = found.get(name)
                if best is not None and mine is not None and not mine.wanted:
                    found[name] = Verdict(True, "wanted_anywhere", best.score)
        return found

    def _keep_score(self, image_id: str, now: float, target: Target) -> float:
        """How much ``target``'s copy of ``image_id`` is worth keeping there:
        its demand in that target (for ``wanted_anywhere``, the best of all
        targets'); pinned copies are never evicted."""
        info = self.tracker.image(image_id)
        if info is not None and self.tracker.policy.pinned(info):
            return float("inf")
        if self.sites is not None and target.name in self.sites.wanted_anywhere_targets():
            return max(self.tracker.score(image_id, now, self._site(t)) for t in self.targets)
        return self.tracker.score(image_id, now, self._site(target))

    async def admit(self, target: Target, image_id: str, size: int) -> bool:
        """Make room for a new copy of ``image_id`` (``size`` bytes) in
        ``target``, evicting copies worth less than it. False when the
        budget cannot hold it without evicting something worth more."""
        config = target.config
        if not config.capacity_bytes and not config.capacity_images:
            return True
        async with self._admission(target):
            admitted = await self._admit(target, image_id, size)
            if admitted:
                target.reserved[image_id] = size
            return admitted

    def _admission(self, target: Target) -> asyncio.Lock:
        # One admission at a time per target, so two copies cannot both take
        # the last room.
        return self._admission_locks.setdefault(target.name, asyncio.Lock())

    async def _admit(self, target: Target, image_id: str, size: int) -> bool:
        if target.config.capacity_bytes and size > target.config.capacity_bytes:
            return False
        return await self._fit(target, size, 1, self._keep_score(image_id, self.clock(), target),
                               exclude=image_id)

    async def _fit(self, target: Target, extra_bytes: int, extra_count: int, worth: float,
                   exclude: str | None = None) -> bool:
        """Evict ``target``'s copies worth less than ``worth``, lowest first,
        until what it holds (copies, copies under way, and ``extra``) fits
        its budget. Pinned copies are worth infinitely much; a copy with
        clones is skipped (children win). Returns whether it fits now."""
        config = target.config
        now = self.clock()
        copies = [c for c in await target.inventory()
                  if c.name != exclude and c.name not in target.reserved]
        reserved = [s for i, s in target.reserved.items() if i != exclude]
        used_bytes = sum(c.size for c in copies) + sum(reserved) + extra_bytes
        used_count = len(copies) + len(reserved) + extra_count

        def fits() -> bool:
            return ((not config.capacity_bytes or used_bytes <= config.capacity_bytes)
                    and (not config.capacity_images or used_count <= config.capacity_images))
        for copy_ in sorted(copies, key=lambda c: (self._keep_score(c.name, now, target),
                                                   c.name)):
            if fits() or self._keep_score(copy_.name, now, target) >= worth:
                break
            if copy_.name in self.hands_off:
                continue
            try:
                result = await target.evict(copy_.name)
            except LocationConflict as exc:
                self._let_go(copy_.name, exc)
                continue
            self.metrics.evictions.labels(target.name, "budget", result).inc()
            if result in ("removed", "gone"):
                used_bytes -= copy_.size
                used_count -= 1
                self._status.pop((copy_.name, target.name), None)
        return fits()

    async def enforce_budgets(self) -> None:
        """Reconciliation's half of eviction: copies of images Glance no
        longer has go, and budgets that shrank (or scores that decayed) are
        honoured, lowest-scored first, pinned never."""
        failures: tuple[type[BaseException], ...] = (CephUnavailable, TargetProblem,
                                                     GlanceUnavailable,
                                                     *ceph_errors())
        for target in self.targets:
            if not target.config.copy_images:
                continue
            try:
                for copy_ in await target.inventory():
                    self._copied.add(copy_.name)
                    if self.tracker.image(copy_.name) is None and \
                            copy_.name not in self.hands_off:
                        # Glance's current view decides, never a bare 404.
                        self.enqueue(copy_.name)
                if target.config.capacity_bytes or target.config.capacity_images:
                    async with self._admission(target):
                        await self._fit(target, 0, 0, float("inf"))
            except failures as exc:
                LOG.warning("target %s: budget enforcement skipped: %s", target.name, exc)

    def _count_copy(self, target: Target, stats: CopyStats) -> None:
        # Counted when the copy completes, whatever happens to its publication.
        self.metrics.copied_bytes.labels(target.name, "written").inc(stats.written)
        self.metrics.copied_bytes.labels(target.name, "hole").inc(stats.skipped_holes)
        self.metrics.copied_bytes.labels(target.name, "zero").inc(stats.skipped_zeros)
        self.metrics.copy_duration.labels(target.name).observe(stats.seconds)

    def _retry_later(self, image_id: str, delay: float | None = None) -> None:
        if image_id in self._retries:
            return
        loop = asyncio.get_running_loop()

        def fire() -> None:
            self._retries.pop(image_id, None)
            self.enqueue(image_id)
        self._retries[image_id] = loop.call_later(
            self.retry_delay if delay is None else delay, fire)

    async def _reconcile_loop(self) -> None:
        while True:
            try:
                await self.reconcile()
                self.metrics.reconciles.labels("ok").inc()
            except asyncio.CancelledError:
                raise
            except Exception:
                LOG.exception("reconciliation failed; next one in %.0fs",
                              self.reconcile_interval)
                self.metrics.reconciles.labels("failed").inc()
            self.reconciled.set()
            await asyncio.sleep(self.reconcile_interval)

    async def reconcile(self) -> None:
        """Discover pinned images in Glance and re-evaluate everything known."""
        policy = self.tracker.policy
        filters: list[dict[str, str]] = []
        if policy.pin_tag:
            filters.append({"tag": policy.pin_tag})
        if policy.pin_property:
            filters.append({policy.pin_property: "true"})
        for flt in filters:
            async for image in self.glance.list_images(**flt):
                self.tracker.observe(image.info, authoritative=True)
        for image_id in self.tracker.image_ids():
            self.enqueue(image_id)
        for target in self.targets:
            await self._clean_up(target)
        await self.enforce_budgets()

    async def _clean_up(self, target: Target) -> None:
        """Temporary images a crash left behind (never published). Best
        effort: what fails now is tried again at the next reconciliation."""
        failures: tuple[type[BaseException], ...] = (CephUnavailable, TargetProblem,
                                                     *ceph_errors())
        try:
            await target.clean_up()
        except failures as exc:
            LOG.warning("target %s: clean-up of leftovers failed: %s", target.name, exc)

    # -- status (cached; read by scrapes and the admin API) -----------------------

    def _record(self, image_id: str, target: Target, result: TargetResult) -> None:
        self._status[(image_id, target.name)] = ImageStatus(
            image_id, target.name, _pool_of(result) or target.config.pool, result.state,
            result.reason, result.location, result.actions, self.clock(), result.detail)

    def _record_all(self, image_id: str, state: str, reason: str, location: str | None,
                    actions: tuple[str, ...]) -> None:
        for target in self.targets:
            self._record(image_id, target, TargetResult(state, reason, location, actions))

    def _drop_status(self, image_id: str) -> None:
        for target in self.targets:
            self._status.pop((image_id, target.name), None)

    def _rows(self) -> list[ImageStatus]:
        """The status book, with copies under way shown as such: a copy
        takes minutes, and the row of the evaluation before it is stale."""
        rows = dict(self._status)
        for target in self.targets:
            for image_id in list(target.progress):
                old = rows.get((image_id, target.name))
                rows[(image_id, target.name)] = ImageStatus(
                    image_id, target.name, old.pool if old else "", "busy", "copying",
                    None, (), old.checked_at if old else self.clock())
        return list(rows.values())

    def status(self, image_id: str | None = None) -> list[ImageStatus]:
        rows = [s for s in self._rows() if image_id is None or s.image_id == image_id]
        return sorted(rows, key=lambda s: (s.image_id, s.target))

    def status_rows(self) -> list[tuple[str, str, str, str, str]]:
        return [(s.image_id, s.target, s.pool, s.state, s.reason) for s in self._rows()]

    def stop_intake(self) -> None:
        self.accepting = False
        for handle in self._retries.values():
            handle.cancel()
        self._retries.clear()


class Draining(Exception):
    """The daemon is stopping and takes no more events (the bus requeues)."""


class UnconfirmedNotFound(GlanceUnavailable):
    """Glance answered 404 for an image, but no known-good request showed
    that the endpoint is the right Glance: nothing is removed, try later."""


def _error_reason(exc: Exception) -> str:
    if isinstance(exc, CephUnavailable):
        return "ceph_unavailable"
    if isinstance(exc, UnconfirmedNotFound):
        return "glance_404_unconfirmed"
    return "glance_unavailable"


def _pool_of(result: TargetResult) -> str:
    loc = parse_rbd_url(result.location) if result.location else None
    return loc.pool if loc else ""
