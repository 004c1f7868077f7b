"""The status book: the last result of each image in each target.

Evaluations write it (and an operator's eviction, and the budget when it
evicts); metric scrapes, the admin API and the daemon's STATUS= line read
it, so that a read never touches Glance or Ceph. It lives in memory only:
a restart starts with an empty book, which the first reconciliation fills
again.
"""

from __future__ import annotations

from collections.abc import Callable, Iterable, Sequence
from dataclasses import dataclass

from warmer.locations import parse_rbd_url
from warmer.reasons import Reason, State
from warmer.warming.target import Target, TargetResult


@dataclass(frozen=True)
class ImageStatus:
    image_id: str
    target: str
    pool: str
    state: str  # a State (warm, cold, busy, not_wanted, error)
    reason: str  # a Reason
    location: str | None
    actions: tuple[str, ...]
    checked_at: float
    detail: str | None = None
    # Since when the row has said warm, without a break (for the hit ratio).
    warm_since: float | None = None


class StatusBook:
    """(image id, target name) -> :class:`ImageStatus`. A copy under way
    (the target's ``progress``) reads as ``busy copying``: a copy takes
    minutes, and the row of the evaluation before it is stale."""

    def __init__(self, targets: Sequence[Target], clock: Callable[[], float]) -> None:
        self.targets = targets
        self.clock = clock
        self._rows: dict[tuple[str, str], ImageStatus] = {}

    def get(self, image_id: str, target_name: str) -> ImageStatus | None:
        """The row as recorded (a copy under way is not shown as such)."""
        return self._rows.get((image_id, target_name))

    def recorded(self) -> Iterable[ImageStatus]:
        """Every row as recorded. O(rows)."""
        return self._rows.values()

    def record(self, image_id: str, target: Target, result: TargetResult) -> None:
        key = (image_id, target.name)
        now = self.clock()
        warm_since = None
        if result.state == State.WARM:
            last = self._rows.get(key)
            warm_since = last.warm_since if last is not None and last.warm_since is not None \
                else now
        self._rows[key] = ImageStatus(
            image_id, target.name, pool_of(result) or target.config.pool, result.state,
            result.reason, result.location, result.actions, now, result.detail, warm_since)

    def record_all(self, image_id: str, state: str, reason: str) -> None:
        """The same outcome in every target (an error before any target was
        tried, or an image warmer keeps its hands off)."""
        for target in self.targets:
            self.record(image_id, target, TargetResult(state, reason, None, ()))

    def drop(self, image_id: str, target_name: str | None = None) -> None:
        """Forget ``image_id``'s row in ``target_name`` (in every target when None)."""
        names = [t.name for t in self.targets] if target_name is None else [target_name]
        for name in names:
            self._rows.pop((image_id, name), None)

    def keep_only(self, known: Callable[[str], bool]) -> None:
        """Forget the rows of the images that are not ``known`` (any more)."""
        for key in [k for k in self._rows if not known(k[0])]:
            del self._rows[key]

    def _shown(self) -> list[ImageStatus]:
        rows = dict(self._rows)
        for target in self.targets:
            for image_id in list(target.progress):
                old = rows.get((image_id, target.name))
                rows[(image_id, target.name)] = ImageStatus(
                    image_id, target.name, old.pool if old else "", State.BUSY, Reason.COPYING,
                    None, (), old.checked_at if old else self.clock())
        return list(rows.values())

    def status(self, image_id: str | None = None) -> list[ImageStatus]:
        """The rows of ``image_id`` (of every image when None), as shown."""
        rows = [s for s in self._shown() if image_id is None or s.image_id == image_id]
        return sorted(rows, key=lambda s: (s.image_id, s.target))

    def status_rows(self) -> list[tuple[str, str, str, str, str]]:
        """(image, target, pool, state, reason) of every row, as shown: what
        the metrics' collector reads at each scrape."""
        return [(s.image_id, s.target, s.pool, s.state, s.reason) for s in self._shown()]


def pool_of(result: TargetResult) -> str:
    """The pool of the location ``result`` names ("" when none)."""
    loc = parse_rbd_url(result.location) if result.location else None
    return loc.pool if loc else ""
