"""The work queue, its workers and the retry timers.

It knows no handler: :meth:`Scheduler.work` runs the coroutine it is given
on each image id taken off the queue. An image id is at most once in the
queue, however often it is asked for. A handler that raises is retried
after ``retry_delay``; a failure that does not pass by itself (Glance
refusing a location, clones that keep a copy, an unconfirmed 404) is
retried with :meth:`Scheduler.retry_backing_off`, each time twice as late,
up to ``max_retry_delay``, until :meth:`Scheduler.settled` says it passed.

Memory only: a restart forgets the queue and the timers, and the first
reconciliation queues every known image again.
"""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Awaitable, Callable

from warmer.metrics import Metrics

LOG = logging.getLogger(__name__)


class Scheduler:
    def __init__(self, metrics: Metrics, *, retry_delay: float,
                 max_retry_delay: float) -> None:
        self.metrics = metrics
        self.retry_delay = retry_delay
        self.max_retry_delay = max_retry_delay
        # False once the daemon stops: queued images are dropped, not handled.
        self.accepting = True
        self._queue: asyncio.Queue[str] = asyncio.Queue()
        self._pending: set[str] = set()  # what the queue holds, for O(1) dedup
        self._retries: dict[str, asyncio.TimerHandle] = {}
        # Consecutive retries per image that do not pass by themselves.
        self._refusals: dict[str, int] = {}

    def enqueue(self, image_id: str) -> None:
        """Queue ``image_id`` (once: already queued, nothing changes). Not
        bounded: events and reconciliation queue what they must."""
        if image_id in self._pending:
            return
        self._pending.add(image_id)
        self._queue.put_nowait(image_id)
        self.metrics.queue_depth.set(self._queue.qsize())

    def has_room(self, image_id: str, limit: int) -> bool:
        """Whether an operator's request for ``image_id`` fits a queue
        bounded at ``limit`` images: an image already queued always does."""
        return image_id in self._pending or self._queue.qsize() < limit

    def request(self, image_id: str, limit: int) -> bool:
        """An operator asks for ``image_id`` to be evaluated (admin API).
        Refused (False) while the queue holds ``limit`` images or more, so
        requests cannot grow it without bound."""
        if not self.has_room(image_id, limit):
            return False
        self.enqueue(image_id)
        return True

    def depth(self) -> int:
        return self._queue.qsize()

    def is_queued(self, image_id: str) -> bool:
        return image_id in self._pending

    def waiting(self) -> set[str]:
        """The image ids queued or waiting for a retry."""
        return self._pending | set(self._retries)

    async def work(self, handle: Callable[[str], Awaitable[None]]) -> None:
        """One worker: ``handle`` each image id taken off the queue, until
        cancelled. Once the daemon stops taking work, queued images are
        dropped: the next start's reconciliation queues them again."""
        while True:
            image_id = await self._queue.get()
            self._pending.discard(image_id)
            self.metrics.queue_depth.set(self._queue.qsize())
            if not self.accepting:
                self._queue.task_done()
                continue
            try:
                await handle(image_id)
            except asyncio.CancelledError:
                raise
            except Exception:
                LOG.exception("evaluating image %s failed", image_id)
                self.retry_later(image_id)
            finally:
                self._queue.task_done()

    async def idle(self) -> None:
        """Wait until the queue is empty and no worker is handling an image."""
        await self._queue.join()

    def retry_later(self, image_id: str, delay: float | None = None) -> None:
        """Queue ``image_id`` again after ``delay`` (``retry_delay`` when
        None); an image already waiting for a retry keeps its timer."""
        if image_id in self._retries:
            return
        loop = asyncio.get_running_loop()

        def fire() -> None:
            self._retries.pop(image_id, None)
            self.enqueue(image_id)
        self._retries[image_id] = loop.call_later(
            self.retry_delay if delay is None else delay, fire)

    def retry_backing_off(self, image_id: str) -> float:
        """Retry ``image_id`` one back-off step later than the last time
        (``retry_delay`` doubled per step, up to ``max_retry_delay``).
        Returns the delay."""
        attempts = self._refusals[image_id] = self._refusals.get(image_id, 0) + 1
        delay = float(min(self.retry_delay * 2.0 ** min(attempts - 1, 30),
                          self.max_retry_delay))
        self.retry_later(image_id, delay)
        return delay

    def settled(self, image_id: str) -> None:
        """What kept ``image_id`` backing off passed: start again from the
        first step next time."""
        self._refusals.pop(image_id, None)

    def stop(self) -> None:
        """Take no more work: queued images are dropped, timers cancelled."""
        self.accepting = False
        for handle in self._retries.values():
            handle.cancel()
        self._retries.clear()
