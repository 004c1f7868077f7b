"""Demand per site, kept so that one verdict or one wanted set is cheap.

Every score decays at the same rate, so the order of images by score never
changes as time passes: only events change it. Demand is therefore kept
relative to a fixed *epoch* ``E``::

    value = sum(w * 2**((t - E) / h))      score(now) = value * 2**((E - now) / h)

(``w`` an event's weight, ``t`` its own timestamp, ``h`` the half-life). A
value is a plain sum of terms, one per event, so the order in which events
arrive changes nothing but float rounding. Each site keeps its eligible
images with a positive value in a sorted list, best first, ties broken by
image id: an event, or a change of eligibility, moves one entry per site in
O(log N); an image's rank is a bisection, O(log N); the images above a
threshold, or the first ``k``, are a prefix of the list.

Re-basing. A term grows as ``t`` moves away from ``E``. Before an event
would count more than ``2**REBASE_AFTER`` times its weight, the epoch moves
to that event's time: every value is scaled by the same factor, and the
sorted lists are rebuilt, O(N log N), once every few hundred half-lives.

Local and remote. Each site holds the demand this daemon counted (*local*)
apart from what other daemons counted (*remote*, set whole from the shared
state): replacing the remote part never touches local counts.

Not thread-safe: used on the event loop.
"""

from __future__ import annotations

import math
from collections.abc import Iterable, Iterator, Sequence

from sortedcontainers import SortedList

from warmer.state.store import REBASE_AFTER, pow2


class _Site:
    """One site's demand, and its eligible images in order."""

    __slots__ = ("local", "order", "ranked", "remote")

    def __init__(self) -> None:
        self.local: dict[str, float] = {}
        self.remote: dict[str, float] = {}
        # image id -> the value it is filed under in ``order`` (to find it again).
        self.ranked: dict[str, float] = {}
        # (-value, image id): best first, ties by image id.
        self.order: SortedList[tuple[float, str]] = SortedList()

    def value(self, image_id: str) -> float:
        return self.local.get(image_id, 0.0) + self.remote.get(image_id, 0.0)

    def place(self, image_id: str, eligible: bool) -> None:
        """File ``image_id`` where its value says, or nowhere when it is not
        eligible or has no demand here."""
        old = self.ranked.pop(image_id, None)
        if old is not None:
            self.order.remove((-old, image_id))
        if eligible:
            value = self.value(image_id)
            if value > 0:
                self.ranked[image_id] = value
                self.order.add((-value, image_id))

    def scale(self, factor: float, eligible: set[str]) -> None:
        """Multiply every value by ``factor`` and rebuild the order. Values
        that underflow to zero are worth nothing and are dropped."""
        self.local = _scaled(self.local, factor)
        self.remote = _scaled(self.remote, factor)
        self.ranked = {}
        for image_id in eligible:
            value = self.value(image_id)
            if value > 0:
                self.ranked[image_id] = value
        self.order = SortedList((-value, image_id) for image_id, value in self.ranked.items())


def _scaled(values: dict[str, float], factor: float) -> dict[str, float]:
    scaled = {image_id: value * factor for image_id, value in values.items()}
    return {image_id: value for image_id, value in scaled.items() if value > 0}


class Rankings:
    """Demand of every tracked image in every site, and each site's order.

    Only images marked eligible (:meth:`set_eligible`) are ranked; demand of
    the others is kept, and ranks them as soon as they become eligible.
    Demand for sites not named at construction is ignored (it may come from
    events or other daemons that know other sites); asking about such a
    site raises ``KeyError``.
    """

    def __init__(self, sites: Sequence[str], half_life: float) -> None:
        if not sites or len(set(sites)) != len(sites):
            raise ValueError(f"sites must be distinct and at least one: {sites!r}")
        self.sites = tuple(sites)
        self.half_life = half_life
        # Set by the first demand; values are relative to it.
        self.epoch: float | None = None
        self._sites = {site: _Site() for site in self.sites}
        self._eligible: set[str] = set()

    # -- demand ---------------------------------------------------------------

    def add(self, image_id: str, weight: float, at: float,
            sites: Iterable[str] | None = None) -> tuple[str, ...]:
        """Count an event of ``weight`` at unix time ``at`` in ``sites``
        (``None``: every site). Returns the sites it counted in."""
        if weight <= 0:
            return ()
        self._move_epoch_for(at)
        assert self.epoch is not None
        amount = weight * pow2((at - self.epoch) / self.half_life)
        eligible = image_id in self._eligible
        counted = tuple(self._known(sites))
        for site in counted:
            entry = self._sites[site]
            entry.local[image_id] = entry.local.get(image_id, 0.0) + amount
            entry.place(image_id, eligible)
        return counted

    def _known(self, sites: Iterable[str] | None) -> Iterable[str]:
        if sites is None:
            return self.sites
        # Once each: a site named twice does not count an event twice.
        return [site for site in dict.fromkeys(sites) if site in self._sites]

    def set_remote(self, site: str, image_id: str, value: float, epoch: float) -> None:
        """Replace what other daemons counted for ``image_id`` in ``site``:
        ``value`` relative to ``epoch`` (unix seconds)."""
        entry = self._sites.get(site)
        if entry is None:
            return
        if value > 0:
            self._move_epoch_for(epoch)
            assert self.epoch is not None
            converted = value * pow2((epoch - self.epoch) / self.half_life)
        else:
            converted = 0.0
        if converted > 0:
            entry.remote[image_id] = converted
        elif entry.remote.pop(image_id, None) is None:
            return
        entry.place(image_id, image_id in self._eligible)

    def _move_epoch_for(self, at: float) -> None:
        """Make ``at`` safe to count relative to the epoch (see module doc)."""
        if self.epoch is None:
            self.epoch = float(math.floor(at))
        elif (at - self.epoch) / self.half_life > REBASE_AFTER:
            self.rebase(float(math.floor(at)))

    def rebase(self, epoch: float) -> None:
        """Make ``epoch`` the epoch: the same scores, other values. O(N log N)."""
        if self.epoch is not None:
            self._scale(pow2((self.epoch - epoch) / self.half_life))
        self.epoch = epoch

    def set_half_life(self, half_life: float, now: float) -> None:
        """Decay with ``half_life`` from ``now`` on: scores at ``now`` stay."""
        if self.epoch is not None:
            self._scale(pow2((self.epoch - now) / self.half_life))
            self.epoch = now
        self.half_life = half_life

    def _scale(self, factor: float) -> None:
        for entry in self._sites.values():
            entry.scale(factor, self._eligible)

    def forget(self, image_id: str) -> None:
        """Drop every count of ``image_id``, local and remote, everywhere."""
        self._eligible.discard(image_id)
        for entry in self._sites.values():
            entry.place(image_id, False)
            entry.local.pop(image_id, None)
            entry.remote.pop(image_id, None)

    # -- eligibility ----------------------------------------------------------

    def set_eligible(self, image_id: str, eligible: bool) -> None:
        """Rank ``image_id`` (where it has demand) or stop ranking it."""
        if eligible == (image_id in self._eligible):
            return
        if eligible:
            self._eligible.add(image_id)
        else:
            self._eligible.discard(image_id)
        for entry in self._sites.values():
            entry.place(image_id, eligible)

    # -- reading --------------------------------------------------------------

    def _factor(self, now: float) -> float:
        """What a value is worth at ``now``."""
        if self.epoch is None:
            return 0.0
        return pow2((self.epoch - now) / self.half_life)

    def _site(self, site: str) -> _Site:
        try:
            return self._sites[site]
        except KeyError:
            raise KeyError(f"no such site: {site!r}") from None

    def score(self, image_id: str, site: str, now: float) -> float:
        return self._site(site).value(image_id) * self._factor(now)

    def warm(self, now: float, floor: float) -> set[str]:
        """The images whose score reaches ``floor`` in at least one site.
        O(entries): for a periodic sweep."""
        factor = self._factor(now)
        warm: set[str] = set()
        for entry in self._sites.values():
            for image_id in entry.local.keys() | entry.remote.keys():
                if entry.value(image_id) * factor >= floor:
                    warm.add(image_id)
        return warm

    def scores(self, site: str, now: float) -> dict[str, float]:
        """Every image with demand in ``site``, eligible or not. O(N)."""
        entry = self._site(site)
        factor = self._factor(now)
        # Summed in the order value() sums them, so that both give equal scores.
        values = dict(entry.local)
        for image_id, remote in entry.remote.items():
            values[image_id] = values.get(image_id, 0.0) + remote
        return {image_id: value * factor for image_id, value in values.items()}

    def position(self, image_id: str, site: str) -> int | None:
        """The rank of ``image_id`` in ``site`` (0 is the best), ``None``
        when it is not ranked there. O(log N)."""
        entry = self._site(site)
        value = entry.ranked.get(image_id)
        if value is None:
            return None
        return entry.order.bisect_left((-value, image_id))

    def ranked(self, site: str) -> Iterator[tuple[str, float]]:
        """``site``'s ranked images with their values, best first."""
        for negative, image_id in self._site(site).order:
            yield image_id, -negative

    def best(self, site: str, now: float, *, threshold: float, top_k: int) -> list[str]:
        """The ranked images of ``site`` with a positive score that is at
        least ``threshold`` or among the first ``top_k``, best first.
        O(log N + the length of the answer)."""
        factor = self._factor(now)
        chosen: list[str] = []
        for image_id, value in self.ranked(site):
            score = value * factor
            if score <= 0 or (len(chosen) >= top_k and score < threshold):
                break
            chosen.append(image_id)
        return chosen
