"""The engine: turns events into work, does the work, remembers the result.

Events are folded into the :class:`~warmer.tracker.Tracker` on the loop
(that is the hand-off the bus acks on) and the image is queued. Workers
take images off the queue one at a time per image, ask Glance for its
current view when they are about to act, and warm every target. A
reconciliation pass re-queues everything periodically and discovers
pinned images, which repairs whatever missed or reordered notifications
left behind (notifications are at-most-once).

This module keeps the intake of events and the evaluation of an image:
is it wanted in each target, warm each target, and purge warmer's copies
of an image Glance no longer has. The parts it composes live
beside it, each told what it needs when the engine builds it: the queue,
workers and retries (``scheduler.py``), the status book (``status.py``),
Glance's views of images (``views.py``), the budgets (``budget.py``), the
leader's reconciliation (``reconciler.py``), the check of a 404
(``deletes.py``) and the images warmer keeps its hands off
(``hands_off.py``). Targets get only their budget.

What a crash leaves behind: in-memory knowledge only. The snapshot
repairs themselves are single, idempotent RBD operations (create, then
protect), so a kill between them leaves an unprotected snapshot that the
next evaluation protects; nothing is published by this module.
"""

from __future__ import annotations

import asyncio
import logging
import time
from collections.abc import Callable

from warmer.ceph.client import CephUnavailable
from warmer.events import (
    Event,
    ImageCacheUsed,
    ImageChanged,
    ImageDeleted,
    VolumeCreatedFromImage,
)
from warmer.glance.client import GlanceClient, GlanceImage, GlanceUnavailable, LocationConflict
from warmer.glance.stores import StoreCatalog
from warmer.metrics import NO_TARGET, Metrics
from warmer.popularity import Verdict
from warmer.reasons import Reason, State
from warmer.sites import SiteMap
from warmer.tracker import Tracker
from warmer.warming.budget import Budget
from warmer.warming.copy import CopyStats
from warmer.warming.deletes import DeleteCheck, UnconfirmedNotFound
from warmer.warming.fanout import Fanout
from warmer.warming.hands_off import HandsOff
from warmer.warming.operator import Operator
from warmer.warming.reconciler import Alone, Leader, Reconciler
from warmer.warming.scheduler import Scheduler
from warmer.warming.status import ImageStatus, StatusBook, pool_of
from warmer.warming.target import Target, TargetProblem, TargetResult
from warmer.warming.views import GlanceViews

LOG = logging.getLogger(__name__)


class Engine:
    def __init__(self, tracker: Tracker, glance: GlanceClient, targets: list[Target],
                 metrics: Metrics, *, workers: int, reconcile_interval: float,
                 retry_delay: float, stores: StoreCatalog | None = None,
                 max_retry_delay: float = 3600.0, sites: SiteMap | None = None,
                 clock: Callable[[], float] = time.time,
                 leader: Leader | None = None, forget_below: float = 0.0,
                 eviction_margin: float = 0.0, view_ttl: float = 0.0,
                 fanout_wait: float = 5.0) -> None:
        self.tracker = tracker
        # Glance's views of images, reused for view_ttl (warming/views.py).
        self.views = GlanceViews(glance, tracker, view_ttl)
        self.forget_below = forget_below
        # Where each demand event counts (None: in every target, through
        # the tracker's one shared site).
        self.sites = sites
        if sites is not None and not set(sites.targets) <= set(tracker.sites):
            raise ValueError(f"the tracker has sites {tracker.sites}, not the targets "
                             f"{sites.targets}: their demand would be lost")
        self._glance = glance
        self.targets = targets
        self.metrics = metrics
        self.workers = workers
        self.reconcile_interval = reconcile_interval
        self.clock = clock
        # How long a copy that is ready waits for the other targets of its
        # evaluation to share its source read (warming/fanout.py).
        self.fanout_wait = fanout_wait
        # The queue, its workers and the retry timers (warming/scheduler.py).
        self.scheduler = Scheduler(metrics, retry_delay=retry_delay,
                                   max_retry_delay=max_retry_delay)
        self._active: set[str] = set()
        self._again: set[str] = set()
        # The last result of each image in each target (warming/status.py).
        self.book = StatusBook(targets, self._now)
        # Images whose Glance locations changed under a removal warmer made.
        self.hands_off = HandsOff(metrics, self.book)
        # Each target's budget, which its copies ask for room (budget.py).
        self.budget = Budget(tracker, targets, metrics, views=self.views, book=self.book,
                             hands_off=self.hands_off, sites=sites, clock=self._now,
                             eviction_margin=eviction_margin)
        # The images warmer keeps copies of (what it purges on a delete, and
        # positive controls of a 404).
        self._copied: set[str] = set()
        # Whether Glance's 404 is a delete (warming/deletes.py).
        self.deletes = DeleteCheck(glance, stores, targets, metrics, self._copied)
        # Told of every image.delete that Glance confirmed (the shared
        # state records a tombstone); must not raise.
        self.on_deleted: Callable[[str], None] | None = None
        # Told when Glance still has an image a delete was recorded for (a
        # replayed or forged image.delete, or another daemon's tombstone).
        self.on_revived: Callable[[str], None] | None = None
        # The leader's periodic pass (warming/reconciler.py).
        self.reconciler = Reconciler(tracker, targets, metrics, views=self.views,
                                     scheduler=self.scheduler, budget=self.budget,
                                     hands_off=self.hands_off, copied=self._copied,
                                     look_up=self._look_up, leader=leader or Alone(),
                                     interval=reconcile_interval, clock=self._now)
        for target in targets:
            target.budget = self.budget
        metrics.start_targets([t.name for t in targets],
                              shared_site=sites is None and len(targets) > 1)
        # Operator requests (warm now, evict now; warming/operator.py).
        self.ops = Operator(self)

    @property
    def glance(self) -> GlanceClient:
        """The one Glance client every part (views, deletes) was given:
        fixed at construction, so that no part asks another Glance."""
        return self._glance

    def _now(self) -> float:
        # The parts read the engine's clock at each call: it may be replaced.
        return self.clock()

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
        where = None if self.sites is None else self.sites.sites_of(event)
        applied = self.tracker.apply(event, sites=where)
        if applied.outcome == "handled" and isinstance(
                event, VolumeCreatedFromImage | ImageCacheUsed):
            self._count_cinder(event, where)
        if not isinstance(event, ImageDeleted):
            self.deletes.heard(applied.image_id)
        if isinstance(event, ImageChanged | ImageDeleted):
            self.views.changed(applied.image_id)
        if isinstance(event, ImageDeleted):
            self.deletes.heard_deleted(event.image_id)
            self.book.drop(event.image_id)
            self.enqueue(event.image_id)  # to remove warmer's copies of it, once confirmed
        elif applied.changed:
            self.enqueue(applied.image_id)
        return applied.outcome

    def _count_cinder(self, event: VolumeCreatedFromImage | ImageCacheUsed,
                      where: frozenset[str] | None) -> None:
        """Count what Cinder did, once per event (redeliveries are not
        ``handled``), in the target its backend maps to. A site shared by
        several targets (no site map, or patterns that overlap) has no one
        target: it is counted under ``target=""``, warm only if the image
        was warm in each of them. Demand that maps to no target is not
        counted: warmer serves none of that backend."""
        names = frozenset(t.name for t in self.targets) if where is None else where
        if not names:
            return
        target = next(iter(names)) if len(names) == 1 else NO_TARGET
        if isinstance(event, ImageCacheUsed):
            self.metrics.cinder_image_cache.labels(target, event.kind).inc()
            return
        # Cinder chose between a clone and a download when it created the
        # volume (created_at), not when it said it was done: warm only if the
        # image was warm there since before then. A daemon that has no row
        # for it (a follower, a fresh restart) does not know: "unknown".
        when = event.created_at or event.timestamp
        # Cinder's created_at may have whole seconds only: within that second
        # it decided after the record was made, so give it the whole second.
        decided = when.timestamp() + (1.0 if when.microsecond == 0 else 0.0)
        rows = [self.book.get(event.image_id, name) for name in names]
        if any(row is None for row in rows):
            state = "unknown"
        elif all(row is not None and row.warm_since is not None and row.warm_since <= decided
                 for row in rows):
            state = State.WARM
        else:
            state = State.COLD
        self.metrics.volume_creates.labels(target, state).inc()

    def enqueue(self, image_id: str) -> None:
        self.scheduler.enqueue(image_id)

    def request(self, image_id: str, limit: int) -> bool:
        """An operator asks for ``image_id`` to be evaluated (admin API);
        False while the queue is full (:meth:`Scheduler.request`)."""
        return self.scheduler.request(image_id, limit)

    @property
    def accepting(self) -> bool:
        """False once the daemon stops taking work (:meth:`stop_intake`)."""
        return self.scheduler.accepting

    # -- work --------------------------------------------------------------------

    async def run(self) -> None:
        """Run the workers and the reconciler until cancelled."""
        async with asyncio.TaskGroup() as tg:
            for n in range(self.workers):
                tg.create_task(self.scheduler.work(self.evaluate), name=f"warm-worker-{n}")
            tg.create_task(self.reconciler.loop(), name="reconciler")
            tg.create_task(self._housekeeping_loop(), name="housekeeping")

    async def _housekeeping_loop(self) -> None:
        """Every daemon's own periodic work (the leader's is reconcile()):
        learn the images pinned in Glance, so that its budget decisions know
        them, and forget the images that went cold."""
        while True:
            try:
                await self.views.discover_pins()
            except asyncio.CancelledError:
                raise
            except Exception as exc:  # Glance down: next time
                LOG.warning("pin discovery failed: %s", exc)
            self.forget_cold()
            await asyncio.sleep(self.reconcile_interval)

    def forget_cold(self) -> int:
        """Drop from memory the images that went cold (below
        ``forget_below`` everywhere) and that warmer holds nothing of: no
        copy, no work queued or under way, no warm row. Every daemon does
        it, for its own memory; O(N), every reconcile_interval."""
        if self.forget_below <= 0:
            return 0
        held = set(self._copied) | self.scheduler.waiting() | self._active | self._again
        held |= set(self.hands_off) | set(self.ops.forced)
        held |= self.budget.reserved_ids()
        for target in self.targets:
            held |= set(target.progress)
        held |= {row.image_id for row in self.book.recorded() if row.state == State.WARM}
        dropped = self.tracker.sweep(self.clock(), self.forget_below, held.__contains__)
        if dropped:
            self.book.keep_only(lambda image_id: self.tracker.image(image_id) is not None)
            self.ops.forget([i for i, _ in self.ops.holds if self.tracker.image(i) is None]
                            + [i for i in self.ops.requests if self.tracker.image(i) is None])
            LOG.info("forgot %d images that went cold (below %s everywhere, no copy)",
                     dropped, self.forget_below)
        return dropped

    async def idle(self) -> None:
        """Wait until the queue is empty and nothing is being evaluated
        (once draining, queued images are dropped, not evaluated)."""
        await self.scheduler.idle()

    async def evaluate(self, image_id: str) -> None:
        """Evaluate one image. Never two evaluations of the same image at
        once: a request that arrives meanwhile runs again right after."""
        if image_id in self._active:
            self._again.add(image_id)
            return
        self._active.add(image_id)
        forced = self.ops.take(image_id)  # an operator's warm request, if any
        try:
            if image_id in self.hands_off:
                self.book.record_all(image_id, State.ERROR, self.hands_off[image_id])
                return
            await self._evaluate(image_id, forced)
        except (GlanceUnavailable, CephUnavailable) as exc:
            if isinstance(exc, UnconfirmedNotFound):
                delay = self.scheduler.retry_backing_off(image_id)
            else:
                delay = self.scheduler.retry_delay
                self.scheduler.retry_later(image_id)
            LOG.warning("image %s: %s; retrying in %.0fs", image_id, exc, delay)
            self.book.record_all(image_id, State.ERROR, _error_reason(exc))
        except LocationConflict as exc:
            self.hands_off.let_go(image_id, exc)
        finally:
            self.ops.finished(image_id, forced)
            self._active.discard(image_id)
            if image_id in self._again:
                self._again.discard(image_id)
                self.enqueue(image_id)

    async def _evaluate(self, image_id: str, forced: set[str] | None = None) -> None:
        if self.tracker.is_deleted(image_id):
            # A notification said so; Glance has the last word (a replayed or
            # forged image.delete must not remove a copy Glance still lists).
            alive = await self.glance.get_image(image_id)
            if alive is not None:
                LOG.warning("image %s: image.delete received, but Glance still has it "
                            "(%s); keeping its copies", image_id, alive.info.status)
                self.tracker.revive(alive.info)
                self.deletes.revived(image_id)
                if self.on_revived is not None:
                    self.on_revived(image_id)
                self.enqueue(image_id)
                return
            await self.deletes.confirm_delete(image_id)
            LOG.info("image %s was deleted in Glance; removing warmer's copies of it", image_id)
            if self.on_deleted is not None:
                self.on_deleted(image_id)
            self.book.drop(image_id)
            await self._purge_everywhere(image_id, "deleted")
            return
        fresh: GlanceImage | None = None
        if self.tracker.image(image_id) is None or self.tracker.is_stale(image_id):
            fresh = await self._refresh(image_id)
            if fresh is None:
                return
        verdicts = self.ops.override(image_id, forced, self.verdicts(image_id))
        if fresh is None and any(v is not None and v.wanted for v in verdicts.values()):
            # About to act: use Glance's current view, with locations.
            fresh = await self._refresh(image_id)
            if fresh is None:
                return
            verdicts = self.ops.override(image_id, forced, self.verdicts(image_id))
        if all(v is None for v in verdicts.values()):
            self.book.drop(image_id)
            return
        wanted = []
        for target in self.targets:
            verdict = verdicts[target.name]
            if verdict is not None and verdict.wanted:
                wanted.append(target)
                continue
            last = self.book.get(image_id, target.name)
            if last is not None and last.state == State.WARM and verdict is not None \
                    and verdict.reason == Reason.BELOW_THRESHOLD:
                # Demand alone went: the copy is still published and
                # cloneable, and stays so (and says so) until the budget
                # needs the room.
                continue
            # Demand elsewhere is not demand here (site-local demand).
            self.book.record(image_id, target, TargetResult(
                State.NOT_WANTED, verdict.reason if verdict else Reason.UNKNOWN, None))
        if not wanted:
            return
        assert fresh is not None  # refreshed above, as something is wanted
        # The targets that copy the image now read and hash it once.
        async with Fanout(fresh.info, [t.name for t in wanted],
                          window=min(t.config.copy_window for t in wanted),
                          wait=self.fanout_wait, on_read=self._count_read) as fanout:
            results = await asyncio.gather(*(self._warm_one(target, fresh, fanout)
                                             for target in wanted))
        if any(r.actions or r.state != State.WARM for r in results):
            self.views.drop(image_id)  # it changed, or will be tried again
        refused = any(r.reason == Reason.PUBLISH_REFUSED for r in results)
        if refused:
            # Glance refusing a location does not pass by itself: back off.
            self.scheduler.retry_backing_off(image_id)
        else:
            self.scheduler.settled(image_id)
            if any(r.state in (State.BUSY, State.ERROR) or r.reason == Reason.IMAGE_DELETED
                   for r in results):
                self.scheduler.retry_later(image_id)

    async def _warm_one(self, target: Target, image: GlanceImage,
                        fanout: Fanout) -> TargetResult:
        """Warm one target and record its result on its own: a sick cluster
        fails only its own row, never the other targets' work or status."""
        started = time.monotonic()
        try:
            result = await target.warm(image, fanout)
        except asyncio.CancelledError:
            raise
        except (GlanceUnavailable, CephUnavailable) as exc:
            LOG.warning("image %s, target %s: %s; retrying in %.0fs", image.info.id,
                        target.name, exc, self.scheduler.retry_delay)
            result = TargetResult(State.ERROR, _error_reason(exc), detail=str(exc))
        except LocationConflict:
            raise
        except Exception:
            LOG.exception("image %s, target %s: warming failed", image.info.id, target.name)
            result = TargetResult(State.ERROR, Reason.INTERNAL_ERROR)
        self.metrics.warm_duration.labels(target.name, result.state).observe(
            time.monotonic() - started)
        for action in result.actions:
            self.metrics.changes.labels(target.name, pool_of(result), action).inc()
        if result.reason == Reason.PUBLISH_REFUSED:
            self.metrics.glance_refusals.labels(target.name, Reason.PUBLISH_REFUSED).inc()
        if "copied" in result.actions or "published_location" in result.actions:
            self._copied.add(image.info.id)
        self.book.record(image.info.id, target, result)
        return result

    def _count_read(self, stats: CopyStats) -> None:
        """A copy's source was read to its end, for one target or several."""
        self.metrics.copy_source_reads.inc()
        self.metrics.copy_source_read_bytes.inc(stats.read)

    async def _refresh(self, image_id: str) -> GlanceImage | None:
        recent = self.views.recent(image_id)
        if recent is not None:
            return recent
        fresh = await self.views.fetch(image_id)
        if fresh is None:
            try:
                await self.deletes.confirm_404(image_id)
            except UnconfirmedNotFound:
                # Keep it, and its demand: nothing is removed or forgotten
                # on a 404 that could be the wrong Glance's.
                self.tracker.keep(image_id)
                raise
            LOG.info("image %s is gone from Glance; forgetting it", image_id)
            self.tracker.forget(image_id)
            self.book.drop(image_id)
            await self._purge_everywhere(image_id, "deleted")
            return None
        self.deletes.shown(image_id)
        return fresh

    async def _look_up(self, image_id: str) -> None:
        """The reconciler asks about a copy whose image this daemon does not
        know: :meth:`_refresh`, with what it raises handled here."""
        try:
            await self._refresh(image_id)
        except UnconfirmedNotFound:
            self.scheduler.retry_backing_off(image_id)
        except LocationConflict as exc:
            self.hands_off.let_go(image_id, exc)

    async def _purge_everywhere(self, image_id: str, reason: str) -> None:
        """Glance no longer has the image: remove warmer's copies of it.
        Either order of events converges: if Glance deleted them first
        (it deletes the data at every location), this finds them gone."""
        self.views.drop(image_id)
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
            delay = self.scheduler.retry_backing_off(image_id)
            LOG.info("image %s: some copies cannot be removed yet; trying again in %.0fs",
                     image_id, delay)
        else:
            self._copied.discard(image_id)
            self.scheduler.settled(image_id)

    # -- wanted, per target -----------------------------------------------------------

    def verdicts(self, image_id: str, now: float | None = None) -> dict[str, Verdict | None]:
        """Whether ``image_id`` is wanted, per target: by that target's own
        demand or policy, or, for a target configured ``wanted_anywhere``,
        by any target's. O(targets · log N)."""
        now = self.clock() if now is None else now
        found = {t.name: self.tracker.verdict(image_id, now, self.budget.site(t))
                 for t in self.targets}
        anywhere = self.sites.wanted_anywhere_targets() if self.sites else frozenset()
        if anywhere:
            best = max((v for v in found.values() if v is not None and v.wanted),
                       key=lambda v: v.score, default=None)
            for name in anywhere:
                mine = found.get(name)
                if best is not None and mine is not None and not mine.wanted:
                    found[name] = Verdict(True, Reason.WANTED_ANYWHERE, best.score)
        if self.ops.holds:
            self.ops.apply_holds(image_id, now, found)
        return found

    # -- status (the book the API and scrapes read) ----------------------------------

    def status(self, image_id: str | None = None) -> list[ImageStatus]:
        return self.book.status(image_id)

    def status_rows(self) -> list[tuple[str, str, str, str, str]]:
        return self.book.status_rows()

    def stop_intake(self) -> None:
        """Take no more events nor work: :meth:`fold` raises :class:`Draining`,
        queued images are dropped and retry timers cancelled."""
        self.scheduler.stop()


class Draining(Exception):
    """The daemon is stopping and takes no more events (the bus requeues)."""


def _error_reason(exc: Exception) -> str:
    if isinstance(exc, CephUnavailable):
        return Reason.CEPH_UNAVAILABLE
    if isinstance(exc, UnconfirmedNotFound):
        return Reason.GLANCE_404_UNCONFIRMED
    return Reason.GLANCE_UNAVAILABLE
