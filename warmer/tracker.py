"""What warmer knows about images: catalog, demand, deletions.

:meth:`Tracker.apply` folds one parsed event into that knowledge. It is
idempotent and order-insensitive, which is what lets the bus deliver
duplicates and reorderings (DESIGN.md invariant 3):

* image changes carry Glance's ``updated_at``; an older view never
  replaces a newer one, and on a tie the later lifecycle status wins;
* demand events are counted once per volume id (``volume.create.end``) or
  message id (others), within a bounded window, and are decayed from their
  own timestamps, so their order does not matter;
* a deleted image leaves a tombstone; nothing that arrives after (or was
  reordered behind) the delete brings it back;
* warmer's own downloads are not demand (invariant 9): an ``image.send``
  whose receiver is one of :attr:`Tracker.own_users` is counted as
  ``own_download`` and changes nothing, not even which images are tracked.

All of it lives on the event loop, in memory.
"""

from __future__ import annotations

import collections
import datetime as dt
from dataclasses import dataclass

from warmer.events import (
    Event,
    ImageCacheUsed,
    ImageChanged,
    ImageDeleted,
    ImageInfo,
    ImageSent,
    VolumeCreatedFromImage,
)
from warmer.popularity import DedupWindow, Policy, Scores, Verdict, decide

# Later statuses win a tie on updated_at (upload and activate often share a second).
_STATUS_RANK = {"queued": 0, "uploading": 1, "importing": 1, "saving": 2,
                "active": 3, "deactivated": 3, "killed": 4, "pending_delete": 5,
                "deleted": 6}
MAX_TOMBSTONES = 100_000


@dataclass(frozen=True)
class Weights:
    volume_create: float = 1.0
    cache_miss: float = 0.5
    cache_hit: float = 0.5
    image_send: float = 0.5


@dataclass(frozen=True)
class Applied:
    """What an event changed: the image it concerns, and whether it was new."""

    image_id: str
    changed: bool
    outcome: str  # handled, duplicate, stale, deleted, own_download


class Tracker:
    def __init__(self, *, half_life: float, weights: Weights, policy: Policy,
                 threshold: float, top_k: int, dedup_window: int,
                 own_users: frozenset[str] = frozenset()) -> None:
        self.scores = Scores(half_life)
        # Glance user ids whose downloads are warmer's own (its copies).
        self.own_users = own_users
        self.weights = weights
        self.policy = policy
        self.threshold = threshold
        self.top_k = top_k
        self._images: dict[str, ImageInfo] = {}
        # Images whose view came from notifications only (Cinder's copy of
        # the metadata, or a Glance change): ask Glance's API before acting.
        self._stale: set[str] = set()
        self._dedup = DedupWindow(dedup_window)
        self._tombstones: collections.OrderedDict[str, dt.datetime] = collections.OrderedDict()

    # -- knowledge ------------------------------------------------------------

    def image(self, image_id: str) -> ImageInfo | None:
        return self._images.get(image_id)

    def is_stale(self, image_id: str) -> bool:
        return image_id in self._stale

    def image_ids(self) -> list[str]:
        return list(self._images)

    def is_deleted(self, image_id: str) -> bool:
        return image_id in self._tombstones

    def verdicts(self, now: float) -> dict[str, Verdict]:
        return decide(self._images, self.scores, self.policy,
                      threshold=self.threshold, top_k=self.top_k, now=now)

    def verdict(self, image_id: str, now: float) -> Verdict | None:
        return self.verdicts(now).get(image_id)

    # -- changes --------------------------------------------------------------

    def apply(self, event: Event) -> Applied:
        if isinstance(event, ImageDeleted):
            return self.delete(event.image_id, event.timestamp)
        if isinstance(event, ImageChanged):
            applied = self.observe(event.image)
            if applied.changed:
                # Notifications say that something changed; Glance's API
                # says what. Ask it before acting, whatever the order was.
                self._stale.add(event.image.id)
            return applied

        image_id = event.image_id
        if image_id in self._tombstones:
            return Applied(image_id, False, "deleted")
        if isinstance(event, VolumeCreatedFromImage):
            key, weight = f"volume:{event.volume_id}", self.weights.volume_create
            if image_id not in self._images:
                # Cinder's copy of the image metadata; Glance is asked later.
                self._images[image_id] = ImageInfo(
                    id=image_id, status="unknown", disk_format=event.disk_format,
                    size=event.size)
                self._stale.add(image_id)
        elif isinstance(event, ImageCacheUsed):
            key = f"msg:{event.message_id}"
            weight = self.weights.cache_hit if event.kind == "hit" else self.weights.cache_miss
        else:
            assert isinstance(event, ImageSent)
            if event.receiver_user_id is not None and event.receiver_user_id in self.own_users:
                return Applied(image_id, False, "own_download")
            key, weight = f"msg:{event.message_id}", self.weights.image_send
        if not self._dedup.first_time(key):
            return Applied(image_id, False, "duplicate")
        if image_id not in self._images:
            self._images[image_id] = ImageInfo(id=image_id, status="unknown")
            self._stale.add(image_id)
        self.scores.add(image_id, weight, event.timestamp.timestamp())
        return Applied(image_id, True, "handled")

    def observe(self, image: ImageInfo, *, authoritative: bool = False) -> Applied:
        """Take Glance's view of an image: from a notification, or (with
        ``authoritative``) from Glance's API, which is current by definition."""
        if image.id in self._tombstones:
            return Applied(image.id, False, "deleted")
        if image.status in ("deleted", "pending_delete"):
            return self.delete(image.id, image.updated_at or dt.datetime.now(dt.UTC))
        current = self._images.get(image.id)
        if not authoritative and current is not None and _newer(current, image):
            return Applied(image.id, False, "stale")
        changed = current != image
        self._images[image.id] = image
        self._stale.discard(image.id)
        return Applied(image.id, changed, "handled")

    def delete(self, image_id: str, when: dt.datetime) -> Applied:
        existed = image_id in self._images
        self.forget(image_id)
        self._tombstones[image_id] = when
        self._tombstones.move_to_end(image_id)
        while len(self._tombstones) > MAX_TOMBSTONES:
            self._tombstones.popitem(last=False)
        return Applied(image_id, existed, "handled")

    def keep(self, image_id: str) -> None:
        """Track ``image_id`` even with nothing known of it (a copy warmer
        holds, whose image Glance cannot be asked about now)."""
        if image_id not in self._images and image_id not in self._tombstones:
            self._images[image_id] = ImageInfo(id=image_id, status="unknown")
            self._stale.add(image_id)

    def revive(self, image: ImageInfo) -> None:
        """Glance still has an image a notification said was deleted (a
        replayed or forged ``image.delete``): drop the tombstone and take
        Glance's view. The demand counted before the delete is gone."""
        self._tombstones.pop(image.id, None)
        self.observe(image, authoritative=True)

    def forget(self, image_id: str) -> None:
        """Drop an image without a tombstone (e.g. Glance says 404)."""
        self._images.pop(image_id, None)
        self._stale.discard(image_id)
        self.scores.forget(image_id)


def _newer(current: ImageInfo, incoming: ImageInfo) -> bool:
    """True when ``current`` is strictly newer than ``incoming``."""
    if current.updated_at is None or incoming.updated_at is None:
        return False
    if current.updated_at != incoming.updated_at:
        return current.updated_at > incoming.updated_at
    return _STATUS_RANK.get(current.status, 0) > _STATUS_RANK.get(incoming.status, 0)
