"""Whether an image Glance does not show is deleted: a 404 is not a delete.

Glance answers 404 for an image it deleted, and also for every image when
warmer asks the wrong Glance (another region's, sharing the Ceph
clusters). Removing copies on a bare 404 would then remove them all
(invariant 8). So a 404, or an ``image.delete`` heard on the bus, is
confirmed only by known-good requests: Glance's stores must be the
targets' clusters, and, unless this daemon's own bus delivered the
``image.delete``, another image this Glance must hold still answers (a
*positive control*: one our bus named that this Glance showed, or one
warmer keeps a copy of, listed with warmer's own location).

Memory only: after a restart, a 404 waits for a new positive control.
"""

from __future__ import annotations

import collections
import random
from collections.abc import Sequence

from warmer.glance.client import GlanceClient, GlanceImage, GlanceUnavailable
from warmer.glance.stores import StoreCatalog
from warmer.locations import parse_rbd_url
from warmer.metrics import Metrics
from warmer.warming.target import Target

MAX_HEARD = 1000  # recent image ids our bus named: candidates for a positive control
MAX_HEARD_DELETED = 10_000


class UnconfirmedNotFound(GlanceUnavailable):
    """Glance answered 404 for an image, but no known-good request showed
    that the endpoint is the right Glance: nothing is removed, try later."""


class DeleteCheck:
    def __init__(self, glance: GlanceClient, stores: StoreCatalog | None,
                 targets: Sequence[Target], metrics: Metrics, copied: set[str]) -> None:
        self.glance = glance
        self.stores = stores
        self.targets = targets
        self.metrics = metrics
        # The images warmer keeps copies of (the engine's set, shared).
        self.copied = copied
        self._heard: dict[str, None] = {}
        # Images whose image.delete this daemon's own bus delivered: only
        # such a delete confirms a 404 without a positive control (a
        # tombstone from the shared state is not a notification).
        self._heard_deleted: collections.OrderedDict[str, None] = collections.OrderedDict()
        self._last_alive: str | None = None  # an image Glance showed recently

    def heard(self, image_id: str) -> None:
        """Our own bus named ``image_id`` (not in an image.delete): if
        Glance later shows it, that Glance is ours."""
        self._heard[image_id] = None
        if len(self._heard) > MAX_HEARD:
            del self._heard[next(iter(self._heard))]

    def heard_deleted(self, image_id: str) -> None:
        self._heard_deleted[image_id] = None
        if len(self._heard_deleted) > MAX_HEARD_DELETED:
            self._heard_deleted.popitem(last=False)

    def revived(self, image_id: str) -> None:
        """Glance still has an image whose delete was heard: the delete was
        replayed or forged, and confirms nothing any more."""
        self._heard_deleted.pop(image_id, None)

    def shown(self, image_id: str) -> None:
        """Glance showed ``image_id``: one our bus named is a positive control."""
        if image_id in self._heard:
            self._last_alive = image_id

    async def confirm_delete(self, image_id: str) -> None:
        """A delete was recorded for ``image_id`` and Glance answers 404:
        raise :class:`UnconfirmedNotFound` unless it is shown right (a
        delete our own bus delivered needs no positive control)."""
        await self._confirm(image_id, deleted=image_id in self._heard_deleted)

    async def confirm_404(self, image_id: str) -> None:
        """Glance answers 404 for ``image_id``, with no delete heard: raise
        :class:`UnconfirmedNotFound` unless it is shown right."""
        await self._confirm(image_id, deleted=False)

    async def _confirm(self, image_id: str, *, deleted: bool) -> None:
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
        others = list(self.copied - {image_id})
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
