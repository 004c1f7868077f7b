"""The eligibility policy, and what makes an image wanted.

A score is a sum of weighted demand events, each halved every
``half_life`` seconds since it happened. Each event is decayed from its own
timestamp, so the result does not depend on the order in which events
arrive: reordered notifications give the same scores (up to float
rounding). Duplicates are filtered before they reach the model (see
:class:`DedupWindow`). Scores are kept by :mod:`warmer.ranking`;
:func:`decide` states the rule over all images at once, which the tracker
applies one image at a time.
"""

from __future__ import annotations

import collections
from collections.abc import Mapping
from dataclasses import dataclass

from warmer.events import ImageInfo
from warmer.reasons import Reason

_TRUE = frozenset({"1", "true", "yes", "on"})


@dataclass(frozen=True)
class Policy:
    """Which images may be warmed at all (DESIGN.md §2.2)."""

    disk_formats: frozenset[str] = frozenset({"raw"})
    max_image_size: int = 0
    visibilities: frozenset[str] = frozenset({"public", "community", "shared", "private"})
    pin_property: str = "warmer_pin"
    pin_tag: str = "warmer-pin"

    def ineligible_reason(self, image: ImageInfo) -> str | None:
        """``None`` when eligible, else a short machine-readable reason."""
        if image.status != "active":
            return Reason.NOT_ACTIVE
        if image.disk_format not in self.disk_formats:
            return (Reason.DISK_FORMAT_NOT_RAW if self.disk_formats == {"raw"}
                    else Reason.DISK_FORMAT)
        if self.max_image_size and (image.size is None or image.size > self.max_image_size):
            return Reason.TOO_LARGE
        if image.visibility is not None and image.visibility not in self.visibilities:
            return Reason.VISIBILITY
        return None

    def pinned(self, image: ImageInfo) -> bool:
        if self.pin_tag and self.pin_tag in image.tags:
            return True
        if self.pin_property:
            return image.properties.get(self.pin_property, "").strip().lower() in _TRUE
        return False


@dataclass(frozen=True)
class Verdict:
    wanted: bool
    reason: str  # why (not) wanted: pinned, threshold, top_k, below_threshold, or ineligible reason
    score: float


def decide(images: Mapping[str, ImageInfo], scores: Mapping[str, float], policy: Policy, *,
           threshold: float, top_k: int) -> dict[str, Verdict]:
    """The verdict for every image in ``images``, given their ``scores``
    (missing: 0).

    Wanted = eligible and (pinned, or score >= threshold, or among the
    ``top_k`` eligible images with a positive score). Ties at the top-k
    boundary are broken by image id, so the result is deterministic.
    """
    scored = {i: scores.get(i, 0.0) for i in images}
    eligible = {i for i, image in images.items() if policy.ineligible_reason(image) is None}
    ranked = sorted((i for i in eligible if scored[i] > 0), key=lambda i: (-scored[i], i))
    top = set(ranked[:top_k])
    verdicts: dict[str, Verdict] = {}
    for image_id, image in images.items():
        score = scored[image_id]
        if image_id not in eligible:
            reason = policy.ineligible_reason(image) or "ineligible"
            verdicts[image_id] = Verdict(False, reason, score)
        elif policy.pinned(image):
            verdicts[image_id] = Verdict(True, Reason.PINNED, score)
        elif score > 0 and score >= threshold:
            verdicts[image_id] = Verdict(True, Reason.THRESHOLD, score)
        elif image_id in top:
            verdicts[image_id] = Verdict(True, Reason.TOP_K, score)
        else:
            verdicts[image_id] = Verdict(False, Reason.BELOW_THRESHOLD, score)
    return verdicts


class DedupWindow:
    """Remembers the last ``size`` keys, so a redelivered demand event
    (same volume id, same message id) is counted once."""

    def __init__(self, size: int) -> None:
        self.size = size
        self._seen: collections.OrderedDict[str, None] = collections.OrderedDict()

    def first_time(self, key: str) -> bool:
        if self.size == 0:
            return True
        if key in self._seen:
            self._seen.move_to_end(key)
            return False
        self._seen[key] = None
        if len(self._seen) > self.size:
            self._seen.popitem(last=False)
        return True
