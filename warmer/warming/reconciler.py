"""The leader's periodic pass over everything warmer knows.

Notifications are at-most-once, so every ``interval`` the leader of the
fleet (the only daemon, without shared state) repairs what missed or
reordered ones left behind: it discovers the images pinned in Glance,
reads Glance's view of the images it will ask about (in pages), queues
every known image for evaluation, removes the temporary images a crash
left in the targets, and enforces the budgets (copies of images Glance no
longer has go; budgets that shrank are honoured). Each step starts only
while this daemon leads (:class:`NotLeader` otherwise), so a daemon that
loses leadership mid-pass stops at the next step.
"""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Awaitable, Callable, Sequence
from typing import Protocol

from warmer.ceph.bindings import errors as ceph_errors
from warmer.ceph.client import CephUnavailable
from warmer.glance.client import GlanceUnavailable
from warmer.metrics import Metrics
from warmer.tracker import Tracker
from warmer.warming.budget import Budget
from warmer.warming.hands_off import HandsOff
from warmer.warming.scheduler import Scheduler
from warmer.warming.target import Target, TargetProblem
from warmer.warming.views import GlanceViews

LOG = logging.getLogger(__name__)


class Leader(Protocol):
    """Whether this daemon runs the fleet-wide work (reconciliation, with
    its clean-up and budget enforcement): one daemon of a fleet does
    (:class:`warmer.coordination.leader.Leadership`)."""

    def is_leader(self) -> bool: ...

    async def wait(self) -> None:
        """Return once this daemon leads."""


class Alone:
    """The only daemon: it always leads."""

    def is_leader(self) -> bool:
        return True

    async def wait(self) -> None:
        return None


class NotLeader(Exception):
    """The fleet-wide work stops: this daemon does not lead (any more)."""


class Reconciler:
    def __init__(self, tracker: Tracker, targets: Sequence[Target], metrics: Metrics, *,
                 views: GlanceViews, scheduler: Scheduler, budget: Budget,
                 hands_off: HandsOff, copied: set[str],
                 look_up: Callable[[str], Awaitable[None]], leader: Leader,
                 interval: float, clock: Callable[[], float]) -> None:
        self.tracker = tracker
        self.targets = targets
        self.metrics = metrics
        self.views = views
        self.scheduler = scheduler
        self.budget = budget
        self.hands_off = hands_off
        # The images warmer keeps copies of: the pass adds what the targets'
        # inventories show (the engine's set, shared).
        self.copied = copied
        # Asks Glance about an image warmer holds a copy of but does not
        # know: a live image is tracked then, a confirmed delete purges the
        # copy, a bare 404 changes nothing (the engine's refresh).
        self.look_up = look_up
        self.leader = leader
        self.interval = interval
        self.clock = clock
        # Set after each pass, whatever its outcome (tests and start-up wait).
        self.reconciled = asyncio.Event()

    async def loop(self) -> None:
        """Reconcile every ``interval`` while this daemon leads: a daemon
        that becomes leader reconciles at once; one that loses leadership
        mid-pass stops at the next step."""
        while True:
            await self.leader.wait()
            try:
                await self.reconcile()
                self.metrics.reconciles.labels("ok").inc()
            except asyncio.CancelledError:
                raise
            except NotLeader as exc:
                LOG.info("reconciliation stopped: %s", exc)
                self.metrics.reconciles.labels("lost_leadership").inc()
            except Exception:
                LOG.exception("reconciliation failed; next one in %.0fs", self.interval)
                self.metrics.reconciles.labels("failed").inc()
            self.reconciled.set()
            await asyncio.sleep(self.interval)

    def check_leader(self) -> None:
        if not self.leader.is_leader():
            raise NotLeader("this daemon no longer leads")

    async def reconcile(self) -> None:
        """Discover pinned images in Glance and re-evaluate everything known.
        Leader's work: each step starts only while this daemon leads
        (:class:`NotLeader` otherwise)."""
        self.check_leader()
        await self.views.discover_pins()
        self.check_leader()
        # Those the evaluations will ask Glance about (not yet seen there,
        # wanted somewhere, or copied): listed in pages, not one GET each.
        now = self.clock()
        asked = set(self.tracker.stale_ids()) | self.copied
        for site in self.tracker.sites:
            asked.update(self.tracker.wanted(site, now))
        if self.views.ttl > 0:
            await self.views.read(sorted(i for i in asked if self.tracker.image(i)))
        self.check_leader()
        for image_id in self.tracker.image_ids():
            self.scheduler.enqueue(image_id)
        for target in self.targets:
            self.check_leader()
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

    async def enforce_budgets(self) -> None:
        """Reconciliation's half of eviction: copies of images Glance no
        longer has go, and budgets that shrank (or scores that decayed) are
        honoured, lowest-scored first, pinned never. Only while this
        daemon leads: raises :class:`NotLeader` otherwise."""
        failures: tuple[type[BaseException], ...] = (CephUnavailable, TargetProblem,
                                                     GlanceUnavailable,
                                                     *ceph_errors())
        for target in self.targets:
            if not target.config.copy_images:
                continue
            self.check_leader()
            try:
                for copy_ in await target.inventory():
                    self.copied.add(copy_.name)
                    if self.tracker.image(copy_.name) is None and \
                            copy_.name not in self.hands_off:
                        # Worth unknown: ask Glance before the budget judges.
                        await self.look_up(copy_.name)
                if target.config.capacity_bytes or target.config.capacity_images:
                    async with self.budget.admission(target):
                        await self.budget.fit(target, 0, 0, float("inf"),
                                              check_leader=self.check_leader)
            except failures as exc:
                LOG.warning("target %s: budget enforcement skipped: %s", target.name, exc)
