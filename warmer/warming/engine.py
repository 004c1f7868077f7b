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
import time
from collections.abc import Callable
from dataclasses import dataclass

from warmer.ceph.client import CephUnavailable
from warmer.events import Event, ImageDeleted
from warmer.glance.client import GlanceClient, GlanceImage, GlanceUnavailable
from warmer.metrics import Metrics
from warmer.tracker import Tracker
from warmer.warming.target import Target, TargetResult

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


class Engine:
    def __init__(self, tracker: Tracker, glance: GlanceClient, targets: list[Target],
                 metrics: Metrics, *, workers: int, reconcile_interval: float,
                 retry_delay: float, clock: Callable[[], float] = time.time) -> None:
        self.tracker = tracker
        self.glance = glance
        self.targets = targets
        self.metrics = metrics
        self.workers = workers
        self.reconcile_interval = reconcile_interval
        self.retry_delay = retry_delay
        self.clock = clock
        self._queue: asyncio.Queue[str] = asyncio.Queue()
        self._pending: set[str] = set()
        self._active: set[str] = set()
        self._again: set[str] = set()
        self._status: dict[tuple[str, str], ImageStatus] = {}
        self._retries: dict[str, asyncio.TimerHandle] = {}
        self.accepting = True
        self.reconciled = asyncio.Event()

    # -- intake (on the loop, called by the bus bridge) -------------------------

    async def handle(self, event: Event) -> str:
        """Fold ``event`` into what warmer knows and queue the work it implies.
        Returns the outcome to count. Raises :class:`Draining` once the
        daemon stops taking work, so the bus requeues the message."""
        if not self.accepting:
            raise Draining()
        applied = self.tracker.apply(event)
        if isinstance(event, ImageDeleted):
            self._drop_status(event.image_id)
        elif applied.changed:
            self.enqueue(applied.image_id)
        return applied.outcome

    def enqueue(self, image_id: str) -> None:
        if image_id in self._pending:
            return
        self._pending.add(image_id)
        self._queue.put_nowait(image_id)
        self.metrics.queue_depth.set(self._queue.qsize())

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
        """Wait until the queue is empty and nothing is being evaluated."""
        await self._queue.join()

    async def evaluate(self, image_id: str) -> None:
        """Evaluate one image. Never two evaluations of the same image at
        once: a request that arrives meanwhile runs again right after."""
        if image_id in self._active:
            self._again.add(image_id)
            return
        self._active.add(image_id)
        try:
            await self._evaluate(image_id)
        except (GlanceUnavailable, CephUnavailable) as exc:
            LOG.warning("image %s: %s; retrying in %.0fs", image_id, exc, self.retry_delay)
            self._record_all(image_id, "error", _error_reason(exc), None, ())
            self._retry_later(image_id)
        finally:
            self._active.discard(image_id)
            if image_id in self._again:
                self._again.discard(image_id)
                self.enqueue(image_id)

    async def _evaluate(self, image_id: str) -> None:
        if self.tracker.is_deleted(image_id):
            self._drop_status(image_id)
            return
        fresh: GlanceImage | None = None
        if self.tracker.image(image_id) is None or self.tracker.is_stale(image_id):
            fresh = await self._refresh(image_id)
            if fresh is None:
                return
        verdict = self.tracker.verdict(image_id, self.clock())
        if verdict is not None and verdict.wanted and fresh is None:
            # About to act: use Glance's current view, with locations.
            fresh = await self._refresh(image_id)
            if fresh is None:
                return
            verdict = self.tracker.verdict(image_id, self.clock())
        if verdict is None:
            self._drop_status(image_id)
            return
        if not verdict.wanted or fresh is None:
            self._record_all(image_id, "not_wanted", verdict.reason, None, ())
            return
        for target in self.targets:
            started = time.monotonic()
            result = await target.warm(fresh)
            self.metrics.warm_duration.labels(target.name, result.state).observe(
                time.monotonic() - started)
            for action in result.actions:
                self.metrics.repairs.labels(target.name, _pool_of(result), action).inc()
            self._record(image_id, target, result)
            if result.copy is not None:
                self.metrics.copied_bytes.labels(target.name, "written").inc(result.copy.written)
                self.metrics.copied_bytes.labels(target.name, "hole").inc(
                    result.copy.skipped_holes)
                self.metrics.copied_bytes.labels(target.name, "zero").inc(
                    result.copy.skipped_zeros)
            if result.state == "busy":
                self._retry_later(image_id)

    async def _refresh(self, image_id: str) -> GlanceImage | None:
        fresh = await self.glance.get_image(image_id)
        if fresh is None:
            LOG.info("image %s is gone from Glance; forgetting it", image_id)
            self.tracker.forget(image_id)
            self._drop_status(image_id)
            return None
        self.tracker.observe(fresh.info, authoritative=True)
        return fresh

    def _retry_later(self, image_id: str) -> None:
        if image_id in self._retries:
            return
        loop = asyncio.get_running_loop()

        def fire() -> None:
            self._retries.pop(image_id, None)
            self.enqueue(image_id)
        self._retries[image_id] = loop.call_later(self.retry_delay, fire)

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

    # -- status (cached; read by scrapes and the admin API) -----------------------

    def _record(self, image_id: str, target: Target, result: TargetResult) -> None:
        self._status[(image_id, target.name)] = ImageStatus(
            image_id, target.name, target.config.pool, result.state, result.reason,
            result.location, result.actions, self.clock())

    def _record_all(self, image_id: str, state: str, reason: str, location: str | None,
                    actions: tuple[str, ...]) -> None:
        for target in self.targets:
            self._record(image_id, target, TargetResult(state, reason, location, actions))

    def _drop_status(self, image_id: str) -> None:
        for target in self.targets:
            self._status.pop((image_id, target.name), None)

    def status(self, image_id: str | None = None) -> list[ImageStatus]:
        rows = [s for s in self._status.values() if image_id is None or s.image_id == image_id]
        return sorted(rows, key=lambda s: (s.image_id, s.target))

    def status_rows(self) -> list[tuple[str, str, str, str, str]]:
        return [(s.image_id, s.target, s.pool, s.state, s.reason)
                for s in list(self._status.values())]

    def stop_intake(self) -> None:
        self.accepting = False
        for handle in self._retries.values():
            handle.cancel()
        self._retries.clear()


class Draining(Exception):
    """The daemon is stopping and takes no more events (the bus requeues)."""


def _error_reason(exc: Exception) -> str:
    return "ceph_unavailable" if isinstance(exc, CephUnavailable) else "glance_unavailable"


def _pool_of(result: TargetResult) -> str:
    from warmer.locations import parse_rbd_url
    loc = parse_rbd_url(result.location) if result.location else None
    return loc.pool if loc else ""
