"""The images warmer keeps its hands off.

When Glance's locations change under a removal warmer made (Glance's
:class:`~warmer.glance.client.LocationConflict`), somebody else's location
may be gone with it. warmer then stops touching that image: no publish, no
eviction, no removal, until the daemon restarts. It says so loudly: an
error log, a metric, and an ``error location_conflict`` row in every
target. Memory only: a restart forgets it, and looks again.
"""

from __future__ import annotations

import logging
from collections.abc import Iterator, Mapping

from warmer.glance.client import LocationConflict
from warmer.metrics import Metrics
from warmer.reasons import Reason, State
from warmer.warming.status import StatusBook

LOG = logging.getLogger(__name__)


class HandsOff(Mapping[str, str]):
    """Image id -> why warmer keeps its hands off it."""

    def __init__(self, metrics: Metrics, book: StatusBook) -> None:
        self.metrics = metrics
        self.book = book
        self._why: dict[str, str] = {}

    def let_go(self, image_id: str, exc: LocationConflict) -> None:
        LOG.error("%s; warmer will not touch image %s again until restarted", exc, image_id)
        self._why[image_id] = Reason.LOCATION_CONFLICT
        self.metrics.glance_refusals.labels("", Reason.LOCATION_CONFLICT).inc()
        self.book.record_all(image_id, State.ERROR, Reason.LOCATION_CONFLICT)

    def __getitem__(self, image_id: str) -> str:
        return self._why[image_id]

    def __iter__(self) -> Iterator[str]:
        return iter(self._why)

    def __len__(self) -> int:
        return len(self._why)
