"""What warmer reads of Glance's images, and how long it trusts a read.

Glance's view of an image (its record and its locations) as last read, by
a GET or in a page of a listing, is reused for ``ttl`` seconds: a burst of
events for one image makes one Glance read, not one per event, and a
reconciliation lists the images it will ask about in pages instead of one
GET each. A change notification bumps the generation, so that a read that
began before it is not remembered (it may show the image as it was).
Every read is also folded into the tracker, as Glance's word on the image
as of the moment the read began (``read_at``: a notification since wins).

Memory only: a restart reads Glance again.
"""

from __future__ import annotations

import collections
import time

from warmer.glance.client import GlanceClient, GlanceImage
from warmer.tracker import Tracker

VIEW_BATCH = 50  # image ids per listing request (?id=in:...): a URL of ~2 KB
MAX_VIEWS = 100_000


class GlanceViews:
    def __init__(self, glance: GlanceClient, tracker: Tracker, ttl: float) -> None:
        self.glance = glance
        self.tracker = tracker
        self.ttl = ttl  # 0: nothing is remembered
        self._views: collections.OrderedDict[str, tuple[float, GlanceImage]] = \
            collections.OrderedDict()
        self._generation = 0

    def changed(self, image_id: str) -> None:
        """A notification says the image changed: forget its view, and any
        read under way (of any image) that began before."""
        self._views.pop(image_id, None)
        self._generation += 1

    def drop(self, image_id: str) -> None:
        """The image's locations changed, or will: read it again next time."""
        self._views.pop(image_id, None)

    def recent(self, image_id: str) -> GlanceImage | None:
        """The image's view if read less than ``ttl`` seconds ago."""
        seen = self._views.get(image_id)
        if seen is None:
            return None
        if time.monotonic() - seen[0] >= self.ttl:
            del self._views[image_id]
            return None
        return seen[1]

    async def fetch(self, image_id: str) -> GlanceImage | None:
        """Glance's current view of ``image_id`` (one GET), folded into the
        tracker and remembered; None on a 404, which says nothing more (a
        404 is not a delete). Raises what the client raises."""
        started, generation = time.monotonic(), self._generation
        fresh = await self.glance.get_image(image_id)
        if fresh is not None:
            self.tracker.observe(fresh.info, authoritative=True, read_at=started)
            self._remember(fresh, started, generation)
        return fresh

    async def read(self, image_ids: list[str]) -> int:
        """Glance's current view of ``image_ids``, listed in pages of
        :data:`VIEW_BATCH` ids (``?id=in:...``) instead of one GET each, and
        remembered for ``ttl``. An image Glance does not list is left to
        its own GET (and its 404 to the usual confirmation)."""
        read = 0
        for at in range(0, len(image_ids), VIEW_BATCH):
            batch = image_ids[at:at + VIEW_BATCH]
            started, generation = time.monotonic(), self._generation
            # One more than asked for: a full page would make Glance link
            # a next one, an extra request for nothing.
            async for image in self.glance.list_images(id="in:" + ",".join(batch),
                                                       limit=str(len(batch) + 1)):
                if self.tracker.image(image.info.id) is None:
                    continue  # forgotten meanwhile (or not asked for)
                self.tracker.observe(image.info, authoritative=True, read_at=started)
                self._remember(image, started, generation)
                read += 1
        return read

    async def discover_pins(self) -> None:
        """Images pinned in Glance (tag or property), listed in pages: the
        tracker learns them, so that budget decisions know what they are
        worth."""
        policy = self.tracker.policy
        filters: list[dict[str, str]] = []
        if policy.pin_tag:
            filters.append({"tag": policy.pin_tag})
        if policy.pin_property:
            filters.append({policy.pin_property: "true"})
        for flt in filters:
            started = time.monotonic()
            async for image in self.glance.list_images(**flt):
                self.tracker.observe(image.info, authoritative=True, read_at=started)

    def _remember(self, image: GlanceImage, at: float, generation: int) -> None:
        if self.ttl <= 0 or generation != self._generation:
            return
        self._views[image.info.id] = (at, image)
        self._views.move_to_end(image.info.id)
        while len(self._views) > MAX_VIEWS:
            self._views.popitem(last=False)
