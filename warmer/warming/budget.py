"""Each target's capacity budget: reservations, admission and eviction.

A target with ``capacity_bytes`` or ``capacity_images`` holds warmer's
copies up to that budget. A new copy is admitted (:meth:`Budget.admit`,
which the target asks before it copies) when it fits, or when copies
worth less than it can be evicted to make it fit. A copy's worth is its
image's demand in that target (for a ``wanted_anywhere`` target, the best
of every target's); a pinned image is worth every other copy; and a copy
must be worth more by the eviction margin to push another out, so equals
never take turns. One admission at a time per target, so two copies
cannot both take the last room; an admitted copy holds a reservation
until the target releases it, as it counts before it shows up in the
pool's inventory. The leader's reconciliation honours budgets that shrank
(or scores that decayed) through :meth:`Budget.fit`.

What a crash leaves behind: nothing of its own. Reservations are in
memory, and each eviction is the target's (the location first, then the
copy, under the copy lease).
"""

from __future__ import annotations

import asyncio
from collections.abc import Callable, Sequence

from warmer.glance.client import LocationConflict
from warmer.metrics import Metrics
from warmer.sites import SiteMap
from warmer.tracker import Tracker
from warmer.warming.hands_off import HandsOff
from warmer.warming.status import StatusBook
from warmer.warming.target import Target
from warmer.warming.views import GlanceViews


class Budget:
    """The budgets of all targets: a copy's worth in one target may depend
    on demand in the others (``wanted_anywhere``). Targets reach it as their
    :class:`~warmer.warming.target.Room`."""

    def __init__(self, tracker: Tracker, targets: Sequence[Target], metrics: Metrics, *,
                 views: GlanceViews, book: StatusBook, hands_off: HandsOff,
                 sites: SiteMap | None, clock: Callable[[], float],
                 eviction_margin: float) -> None:
        self.tracker = tracker
        self.targets = targets
        self.metrics = metrics
        # What an eviction changes besides the pool: Glance's view of the
        # image, and its row in that target.
        self.views = views
        self.book = book
        self.hands_off = hands_off
        self.sites = sites
        self.clock = clock
        self.eviction_margin = eviction_margin
        # Target name -> (image id -> size) of the copies under way there.
        self._reserved: dict[str, dict[str, int]] = {t.name: {} for t in targets}
        self._locks: dict[str, asyncio.Lock] = {}

    # -- worth -------------------------------------------------------------------------

    def site(self, target: Target) -> str | None:
        """The tracker's site for ``target`` (its name); a tracker with one
        shared site (no per-target demand) answers for every target."""
        return target.name if target.name in self.tracker.sites else None

    def demand_in(self, image_id: str, now: float, target: Target) -> float:
        """``image_id``'s demand in ``target`` (for ``wanted_anywhere``, the
        best of all targets')."""
        if self.sites is not None and target.name in self.sites.wanted_anywhere_targets():
            return max(self.tracker.score(image_id, now, self.site(t)) for t in self.targets)
        return self.tracker.score(image_id, now, self.site(target))

    def keep_score(self, image_id: str, now: float, target: Target) -> float:
        """How much ``target``'s copy of ``image_id`` is worth keeping there:
        its demand there; pinned copies (by Glance tag or property, or
        through warmer) are never evicted."""
        if self.tracker.is_pinned(image_id):
            return float("inf")
        return self.demand_in(image_id, now, target)

    # -- admission -----------------------------------------------------------------

    def admission(self, target: Target) -> asyncio.Lock:
        """Held by whatever changes what ``target`` holds against its budget
        (an admission, an operator's eviction, the leader's enforcement)."""
        return self._locks.setdefault(target.name, asyncio.Lock())

    async def admit(self, target: Target, image_id: str, size: int) -> bool:
        """Make room for a new copy of ``image_id`` (``size`` bytes) in
        ``target``, evicting copies worth less than it, and reserve it until
        :meth:`release`. False when the budget cannot hold it without
        evicting something worth more."""
        config = target.config
        if not config.capacity_bytes and not config.capacity_images:
            return True
        async with self.admission(target):
            if config.capacity_bytes and size > config.capacity_bytes:
                return False
            worth = self.keep_score(image_id, self.clock(), target)
            admitted = await self.fit(target, size, 1, worth, exclude=image_id)
            if admitted:
                self._reserved.setdefault(target.name, {})[image_id] = size
            return admitted

    def release(self, target: Target, image_id: str) -> None:
        """The copy of ``image_id`` into ``target`` ended (made or not): it
        counts through the pool's inventory from now on, if at all."""
        self._reserved.get(target.name, {}).pop(image_id, None)

    def reserved_ids(self) -> set[str]:
        """The images with a copy under way in some target."""
        return {i for reserved in self._reserved.values() for i in reserved}

    # -- eviction --------------------------------------------------------------------

    async def fit(self, target: Target, extra_bytes: int, extra_count: int, worth: float,
                  exclude: str | None = None,
                  check_leader: Callable[[], None] | None = None) -> bool:
        """Evict ``target``'s copies worth less than ``worth`` (by more than
        the eviction margin: no turns between equals), lowest first,
        until what it holds (copies, copies under way, and ``extra``) fits
        its budget. Pinned copies are worth infinitely much; a copy with
        clones is skipped (children win). Returns whether it fits now.
        The caller holds :meth:`admission`. ``check_leader``: for the
        reconciliation, called before each eviction; it raises once this
        daemon no longer leads."""
        config = target.config
        now = self.clock()
        reserved = self._reserved.setdefault(target.name, {})
        copies = [c for c in await target.inventory()
                  if c.name != exclude and c.name not in reserved]
        sizes = [s for i, s in reserved.items() if i != exclude]
        used_bytes = sum(c.size for c in copies) + sum(sizes) + extra_bytes
        used_count = len(copies) + len(sizes) + extra_count

        def fits() -> bool:
            return ((not config.capacity_bytes or used_bytes <= config.capacity_bytes)
                    and (not config.capacity_images or used_count <= config.capacity_images))
        for copy_ in sorted(copies, key=lambda c: (self.keep_score(c.name, now, target),
                                                   c.name)):
            keep = self.keep_score(copy_.name, now, target)
            if fits() or keep * (1.0 + self.eviction_margin) >= worth:
                break
            if copy_.name in self.hands_off:
                continue
            if self.tracker.image(copy_.name) is None:
                # Worth unknown here (pinned in Glance, or wanted by another
                # daemon's demand this one has not read yet): never evict it
                # on a guess; the leader's reconciliation looks it up.
                continue
            if check_leader is not None:
                check_leader()
            try:
                result = await target.evict(copy_.name)
            except LocationConflict as exc:
                self.hands_off.let_go(copy_.name, exc)
                continue
            self.metrics.evictions.labels(target.name, "budget", result).inc()
            self.views.drop(copy_.name)  # its locations changed
            if result in ("removed", "gone"):
                used_bytes -= copy_.size
                used_count -= 1
                self.book.drop(copy_.name, target.name)
        return fits()
