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
* demand counts in the sites the caller names (``apply(event, sites=...)``,
  every site by default): each site has its own scores and wanted set, kept
  up to date by :class:`~warmer.ranking.Rankings` as events arrive, so that
  one verdict costs O(log N), not a pass over every image;
* warmer's own downloads are not demand (invariant 9): an ``image.send``
  whose receiver is one of :attr:`Tracker.own_users` is counted as
  ``own_download`` and changes nothing, not even which images are tracked;
* every demand event that counted is told to ``on_demand`` (the shared
  state's writers, :mod:`warmer.state.fleet`), once, with the sites it
  counted in: never a duplicate, an own download, or demand for a deleted
  image.

All of it lives on the event loop, in memory. :meth:`Tracker.sweep` drops
the images that went cold, so that memory follows the images in use.
"""

from __future__ import annotations

import collections
import datetime as dt
import math
import time
from collections.abc import Callable, Iterable, Sequence
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
from warmer.popularity import DedupWindow, Policy, Verdict, decide
from warmer.ranking import Rankings
from warmer.reasons import Reason

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


# (image id, weight, unix time of the event, the sites it counted in)
DemandHook = Callable[[str, float, float, tuple[str, ...]], None]


@dataclass(frozen=True)
class Applied:
    """What an event changed: the image it concerns, and whether it was new."""

    image_id: str
    changed: bool
    outcome: str  # handled, duplicate, stale, deleted, own_download


class Tracker:
    def __init__(self, *, half_life: float, weights: Weights, policy: Policy,
                 threshold: float, top_k: int, dedup_window: int,
                 own_users: frozenset[str] = frozenset(),
                 sites: Sequence[str] = ("*",),
                 on_demand: DemandHook | None = None) -> None:
        self._rankings = Rankings(sites, half_life)
        # Told of every demand event counted here (see the module doc); it
        # must not raise, and must be cheap: it runs once per event.
        self.on_demand = on_demand
        # Glance user ids whose downloads are warmer's own (its copies).
        self.own_users = own_users
        self.weights = weights
        self._policy = policy
        self.threshold = threshold
        self.top_k = top_k
        self._images: dict[str, ImageInfo] = {}
        # Eligible images that are pinned, by the policy (a Glance tag or
        # property) or through warmer (:meth:`set_pins`): wanted in every
        # site, whatever their demand.
        self._pinned: set[str] = set()
        # Images pinned through warmer (the shared state's pins), eligible
        # or not: an ineligible one is pinned once Glance shows it eligible.
        self._state_pins: frozenset[str] = frozenset()
        # Images whose view came from notifications only (Cinder's copy of
        # the metadata, or a Glance change): ask Glance's API before acting.
        self._stale: set[str] = set()
        # When a notification last changed each image's view
        # (time.monotonic()): a Glance read that began before then may show
        # the image as it was, and must not undo the change (a pin added or
        # removed by a tag or property). Glance's updated_at cannot order
        # them: it has whole seconds. An answer taken from Glance's API
        # ends it (the entry goes), so that only images with a change not
        # read back yet are kept here.
        self._changed_at: dict[str, float] = {}
        self._dedup = DedupWindow(dedup_window)
        self._tombstones: collections.OrderedDict[str, dt.datetime] = collections.OrderedDict()

    # -- configuration --------------------------------------------------------

    @property
    def sites(self) -> tuple[str, ...]:
        return self._rankings.sites

    @property
    def policy(self) -> Policy:
        return self._policy

    @policy.setter
    def policy(self, policy: Policy) -> None:
        """A new policy re-decides every image's eligibility: O(N log N),
        on a reload only."""
        self._policy = policy
        for image_id in self._images:
            self._classify(image_id)

    @property
    def half_life(self) -> float:
        return self._rankings.half_life

    def set_half_life(self, half_life: float, now: float) -> None:
        """Scores at ``now`` stay; from then on they decay with ``half_life``."""
        self._rankings.set_half_life(half_life, now)

    # -- knowledge ------------------------------------------------------------

    def image(self, image_id: str) -> ImageInfo | None:
        return self._images.get(image_id)

    def is_stale(self, image_id: str) -> bool:
        return image_id in self._stale

    def stale_ids(self) -> list[str]:
        """Images whose view came from notifications only: Glance is asked
        before acting on them."""
        return list(self._stale)

    def image_ids(self) -> list[str]:
        return list(self._images)

    def is_deleted(self, image_id: str) -> bool:
        return image_id in self._tombstones

    def is_pinned(self, image_id: str) -> bool:
        """Pinned by the policy (Glance tag or property) or through warmer,
        eligible or not: what budgets never evict."""
        if image_id in self._state_pins:
            return True
        image = self._images.get(image_id)
        return image is not None and self._policy.pinned(image)

    def pinned_through_warmer(self, image_id: str) -> bool:
        return image_id in self._state_pins

    def set_pins(self, image_ids: Iterable[str]) -> set[str]:
        """The images pinned through warmer (the shared state's pins), all of
        them: replaces the previous set. A pinned image is wanted in every
        site once it is eligible (Glance is asked about an image not
        tracked yet, which is tracked from now on); a deleted one stays
        deleted. Returns the images whose pin changed. O(changes)."""
        new = frozenset(image_ids)
        changed = set(new ^ self._state_pins)
        self._state_pins = new
        for image_id in changed:
            if image_id in self._tombstones:
                continue
            if image_id not in self._images:
                if image_id in new:
                    self._track(ImageInfo(id=image_id, status="unknown"))
                continue
            self._classify(image_id)
        return changed

    def _site(self, site: str | None) -> str:
        return self._rankings.sites[0] if site is None else site

    def score(self, image_id: str, now: float, site: str | None = None) -> float:
        """``image_id``'s demand in ``site`` (the first site by default)."""
        return self._rankings.score(image_id, self._site(site), now)

    def verdict(self, image_id: str, now: float, site: str | None = None) -> Verdict | None:
        """Whether ``image_id`` is wanted in ``site`` (the first site by
        default); ``None`` when it is not tracked. O(log N)."""
        image = self._images.get(image_id)
        if image is None:
            return None
        site = self._site(site)
        score = self._rankings.score(image_id, site, now)
        reason = self._policy.ineligible_reason(image)
        if reason is not None:
            return Verdict(False, reason, score)
        if image_id in self._pinned:
            return Verdict(True, Reason.PINNED, score)
        if score > 0 and score >= self.threshold:
            return Verdict(True, Reason.THRESHOLD, score)
        if score > 0:
            # Scores above this one are positive too: its rank is its rank
            # among the positive scores.
            rank = self._rankings.position(image_id, site)
            if rank is not None and rank < self.top_k:
                return Verdict(True, Reason.TOP_K, score)
        return Verdict(False, Reason.BELOW_THRESHOLD, score)

    def wanted(self, site: str, now: float) -> list[str]:
        """The images wanted in ``site``: ranked ones best first, then the
        other pinned ones by id. O(k log N + pinned + above threshold)."""
        chosen = self._rankings.best(site, now, threshold=self.threshold, top_k=self.top_k)
        chosen_set = set(chosen)
        return chosen + sorted(i for i in self._pinned if i not in chosen_set)

    def verdicts(self, now: float, site: str | None = None) -> dict[str, Verdict]:
        """Every tracked image's verdict in ``site``. O(N log N): for status
        pages, never on the per-event or per-evaluation path."""
        scores = self._rankings.scores(self._site(site), now)
        return decide(self._images, scores, self._policy,
                      threshold=self.threshold, top_k=self.top_k)

    # -- changes --------------------------------------------------------------

    def apply(self, event: Event, sites: Iterable[str] | None = None) -> Applied:
        """Fold ``event`` in. Demand counts in ``sites`` (``None``: every
        site; sites this tracker does not have are ignored)."""
        if isinstance(event, ImageDeleted):
            return self.delete(event.image_id, event.timestamp)
        if isinstance(event, ImageChanged):
            applied = self.observe(event.image)
            if applied.changed:
                # Notifications say that something changed; Glance's API
                # says what. Ask it before acting, whatever the order was.
                self._stale.add(event.image.id)
                self._changed_at[event.image.id] = time.monotonic()
            return applied

        image_id = event.image_id
        if image_id in self._tombstones:
            return Applied(image_id, False, "deleted")
        if isinstance(event, VolumeCreatedFromImage):
            key, weight = f"volume:{event.volume_id}", self.weights.volume_create
            if image_id not in self._images:
                # Cinder's copy of the image metadata; Glance is asked later.
                self._track(ImageInfo(id=image_id, status="unknown",
                                      disk_format=event.disk_format, size=event.size))
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
            self._track(ImageInfo(id=image_id, status="unknown"))
        at = event.timestamp.timestamp()
        counted = self._rankings.add(image_id, weight, at, sites)
        if counted and self.on_demand is not None:
            self.on_demand(image_id, weight, at, counted)
        return Applied(image_id, True, "handled")

    def set_remote(self, site: str, image_id: str, value: float, epoch: float) -> None:
        """What other daemons counted for ``image_id`` in ``site``: ``value``
        relative to ``epoch`` (unix seconds), as the shared state keeps it.
        Replaces the previous remote value; this daemon's own counts stay.
        An image not tracked yet is tracked (and asked about), unless
        deleted."""
        if image_id in self._tombstones:
            return
        if image_id not in self._images:
            if value <= 0:
                return
            self._track(ImageInfo(id=image_id, status="unknown"))
        self._rankings.set_remote(site, image_id, value, epoch)

    def observe(self, image: ImageInfo, *, authoritative: bool = False,
                read_at: float | None = None) -> Applied:
        """Take Glance's view of an image: from a notification, or (with
        ``authoritative``) from Glance's API, which is current when it
        answers. ``read_at``: when that request began (time.monotonic()); an
        answer to a request that began before a notification changed the
        image is ``stale`` and ignored: the image stays stale, and the
        evaluation that notification queued asks Glance again. An
        authoritative answer that is taken drops the notification's time:
        it is the newer view. (A still older read of the same image landing
        after it is then taken, as are any two reads of Glance that land
        out of order.)"""
        if image.id in self._tombstones:
            return Applied(image.id, False, "deleted")
        if image.status in ("deleted", "pending_delete"):
            return self.delete(image.id, image.updated_at or dt.datetime.now(dt.UTC))
        if read_at is not None and self._changed_at.get(image.id, -math.inf) >= read_at:
            return Applied(image.id, False, "stale")
        current = self._images.get(image.id)
        if not authoritative and current is not None and _newer(current, image):
            return Applied(image.id, False, "stale")
        changed = current != image
        self._images[image.id] = image
        self._stale.discard(image.id)
        if authoritative:
            self._changed_at.pop(image.id, None)
        self._classify(image.id)
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
            self._track(ImageInfo(id=image_id, status="unknown"))

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
        self._changed_at.pop(image_id, None)
        self._pinned.discard(image_id)
        self._rankings.forget(image_id)

    def sweep(self, now: float, floor: float, keep: Callable[[str], bool]) -> int:
        """Forget the images that went cold: a score below ``floor`` in every
        site, not pinned, and not kept by ``keep`` (the caller's "warmer has
        a copy of it"). Their tombstones, if any, stay. Returns how many
        were dropped. O(N): run it now and then, not per event."""
        warm = self._rankings.warm(now, floor)
        cold = [image_id for image_id, image in self._images.items()
                if image_id not in warm and not self._policy.pinned(image)
                and image_id not in self._state_pins and not keep(image_id)]
        for image_id in cold:
            self.forget(image_id)
        return len(cold)

    def _track(self, image: ImageInfo) -> None:
        """Start tracking an image known only by id (or from Cinder)."""
        self._images[image.id] = image
        self._stale.add(image.id)
        self._classify(image.id)

    def _classify(self, image_id: str) -> None:
        """Rank the image, and count it as pinned, iff the policy allows."""
        image = self._images[image_id]
        eligible = self._policy.ineligible_reason(image) is None
        self._rankings.set_eligible(image_id, eligible)
        if eligible and (image_id in self._state_pins or self._policy.pinned(image)):
            self._pinned.add(image_id)
        else:
            self._pinned.discard(image_id)


def _newer(current: ImageInfo, incoming: ImageInfo) -> bool:
    """True when ``current`` is strictly newer than ``incoming``."""
    if current.updated_at is None or incoming.updated_at is None:
        return False
    if current.updated_at != incoming.updated_at:
        return current.updated_at > incoming.updated_at
    return _STATUS_RANK.get(current.status, 0) > _STATUS_RANK.get(incoming.status, 0)
