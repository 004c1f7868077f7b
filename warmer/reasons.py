"""Every state and reason warmer reports, each with its meaning and remedy.

A status row (``warmer status``, ``GET /v1/images/{id}``, the
``warmer_images`` metric) is an image in a target with a :class:`State`
and a :class:`Reason`; a demand verdict has a reason too. Both are
:class:`~enum.StrEnum`: a member *is* its old string, so the API, the
metrics and the logs read exactly as before, and the strings from
``warmer/ceph`` and ``warmer/warming/target.py`` compare equal to them.

``reason.meaning`` says what the reason means, in one line, and
``reason.remedy`` what an operator can do about it ("nothing" where the
daemon handles it alone). The README's list of reasons an image is not
warm is checked against this module (``tests/unit/test_reasons.py``).
"""

from __future__ import annotations

from enum import StrEnum


class State(StrEnum):
    """The state of an image in a target."""

    WARM = "warm"              # cloneable there now
    COLD = "cold"              # wanted, but not cloneable there (the reason says why)
    BUSY = "busy"              # a copy or a change is under way; retried
    NOT_WANTED = "not_wanted"  # no demand or policy wants it there
    ERROR = "error"            # something failed that is not the image's fault; retried

    @property
    def meaning(self) -> str:
        return _STATE_MEANINGS[self]


_STATE_MEANINGS: dict[State, str] = {
    State.WARM: "Cinder clones the image in this target instead of downloading it",
    State.COLD: "wanted in this target, but not cloneable there; the reason says why",
    State.BUSY: "a copy or a change of its locations is under way; evaluated again soon",
    State.NOT_WANTED: "no demand or policy wants the image in this target",
    State.ERROR: "evaluating the image failed for a cause outside it; retried",
}


class Reason(StrEnum):
    """Why an image has its state (or its verdict) in a target."""

    # -- warm, or wanted -----------------------------------------------------
    CLONEABLE = "cloneable"
    PINNED = "pinned"
    THRESHOLD = "threshold"
    TOP_K = "top_k"
    WANTED_ANYWHERE = "wanted_anywhere"
    OPERATOR = "operator"
    # -- not wanted (the policy, or demand) ------------------------------------
    DISK_FORMAT_NOT_RAW = "disk_format_not_raw"
    DISK_FORMAT = "disk_format"
    NOT_ACTIVE = "not_active"
    TOO_LARGE = "too_large"
    VISIBILITY = "visibility"
    BELOW_THRESHOLD = "below_threshold"
    EVICTED_BY_OPERATOR = "evicted_by_operator"
    UNKNOWN = "unknown"
    # -- cold: what Glance shows, and the source in Ceph -----------------------
    NO_LOCATIONS_VISIBLE = "no_locations_visible"
    NO_RBD_LOCATION = "no_rbd_location"
    NO_LOCATION_IN_CLUSTER = "no_location_in_cluster"
    RBD_IMAGE_MISSING = "rbd_image_missing"
    POOL_MISSING = "pool_missing"
    SNAPSHOT_MISSING = "snapshot_missing"
    SNAPSHOT_UNPROTECTED = "snapshot_unprotected"
    PERMISSION_DENIED_READ = "permission_denied_read"
    PERMISSION_DENIED_WRITE = "permission_denied_write"
    SNAPSHOT_NOT_READABLE = "snapshot_not_readable"
    CINDER_USER_CANNOT_READ = "cinder_user_cannot_read"
    # -- cold: a copy ----------------------------------------------------------
    CHECKSUM_MISMATCH = "checksum_mismatch"
    NO_GLANCE_CHECKSUM = "no_glance_checksum"
    UNSUPPORTED_HASH = "unsupported_hash"
    SIZE_MISMATCH = "size_mismatch"
    SIZE_UNKNOWN = "size_unknown"
    SHORT_READ = "short_read"
    SHORT_WRITE = "short_write"
    TRUST_REVOKED = "trust_revoked"
    NAME_TAKEN_IN_TARGET = "name_taken_in_target"
    STALE_COPY_KEPT = "stale_copy_kept"
    OVER_BUDGET = "over_budget"
    TARGET_FULL = "target_full"
    COPY_POOL_UNKNOWN = "copy_pool_unknown"
    GLANCE_STORE_MISMATCH = "glance_store_mismatch"
    LEASE_LOST = "lease_lost"
    COPY_INCOMPLETE = "copy_incomplete"
    # -- cold: the copy's publication in Glance ----------------------------------
    LOCATIONS_HIDDEN = "locations_hidden"
    PUBLISH_REFUSED = "publish_refused"
    IMAGE_DELETED = "image_deleted"
    # -- busy ------------------------------------------------------------------
    COPY_IN_PROGRESS_ELSEWHERE = "copy_in_progress_elsewhere"
    COPYING = "copying"
    LOCATIONS_BUSY = "locations_busy"
    # -- error -----------------------------------------------------------------
    CEPH_UNAVAILABLE = "ceph_unavailable"
    GLANCE_UNAVAILABLE = "glance_unavailable"
    GLANCE_404_UNCONFIRMED = "glance_404_unconfirmed"
    CEPH_ERROR = "ceph_error"
    INTERNAL_ERROR = "internal_error"
    LOCATION_CONFLICT = "location_conflict"

    @property
    def meaning(self) -> str:
        return _REASONS[self][0]

    @property
    def remedy(self) -> str:
        return _REASONS[self][1]


# Reasons that come with a warm state or a wanted verdict: not problems.
GOOD: frozenset[Reason] = frozenset({Reason.CLONEABLE, Reason.PINNED, Reason.THRESHOLD,
                                     Reason.TOP_K, Reason.WANTED_ANYWHERE, Reason.OPERATOR})

NOTHING = "nothing: expected"
RETRIED = "nothing: retried; if it lasts, see the log"

# reason: (meaning, remedy)
_REASONS: dict[Reason, tuple[str, str]] = {
    Reason.CLONEABLE: ("the image is cloneable in this target", NOTHING),
    Reason.PINNED: ("pinned (Glance tag or property, or through warmer): always wanted",
                    "unpin it to let demand decide"),
    Reason.THRESHOLD: ("its demand score is above [popularity] threshold", NOTHING),
    Reason.TOP_K: ("among the [popularity] top_k images by demand", NOTHING),
    Reason.WANTED_ANYWHERE: ("wanted in another target, and this one is wanted_anywhere",
                             NOTHING),
    Reason.OPERATOR: ("an operator asked to warm it (warmer warm)", NOTHING),
    Reason.DISK_FORMAT_NOT_RAW: ("not a raw image: Cinder cannot clone it from RBD",
                                 "convert the image to raw in Glance"),
    Reason.DISK_FORMAT: ("its disk format is not one of [popularity] disk_formats",
                         "convert the image, or widen disk_formats"),
    Reason.NOT_ACTIVE: ("Glance does not show the image active", "nothing: wait for upload"),
    Reason.TOO_LARGE: ("larger than the policy's size limit", "raise the limit, or accept it"),
    Reason.VISIBILITY: ("its visibility is not one the policy warms",
                        "change the image's visibility or the policy"),
    Reason.BELOW_THRESHOLD: ("too little demand in this target (below threshold, not top_k)",
                             "lower [popularity] threshold or raise top_k, or pin it"),
    Reason.EVICTED_BY_OPERATOR: ("held out after warmer evict, until new demand",
                                 "warmer warm, or pin it"),
    Reason.UNKNOWN: ("warmer has no verdict for this target", NOTHING),
    Reason.NO_LOCATIONS_VISIBLE: ("Glance shows the image without locations",
                                  "enable show_multiple_locations for warmer's user"),
    Reason.NO_RBD_LOCATION: ("none of the image's locations is in RBD",
                             "nothing, unless copy_images is on for the target"),
    Reason.NO_LOCATION_IN_CLUSTER: ("no location of the image is in this target's cluster",
                                    "turn copy_images on for the target"),
    Reason.RBD_IMAGE_MISSING: ("the RBD image a location names does not exist",
                               "fix or remove the image's location in Glance"),
    Reason.POOL_MISSING: ("the pool a location names does not exist",
                          "fix the location, or the target's pool"),
    Reason.SNAPSHOT_MISSING: ("the location's snapshot does not exist (repair off)",
                              "turn snapshot repair on, or create the snapshot"),
    Reason.SNAPSHOT_UNPROTECTED: ("the location's snapshot is not protected (repair off)",
                                  "turn snapshot repair on, or protect the snapshot"),
    Reason.PERMISSION_DENIED_READ: ("warmer's Ceph user cannot read the source",
                                    "grant the caps in docs/cephx.md"),
    Reason.PERMISSION_DENIED_WRITE: ("warmer's Ceph user cannot write in the target",
                                     "grant the caps in docs/cephx.md"),
    Reason.SNAPSHOT_NOT_READABLE: ("the snapshot cannot be opened for reading",
                                   "check the cluster and the snapshot"),
    Reason.CINDER_USER_CANNOT_READ: ("Cinder's Ceph user (cinder_user) cannot read the image",
                                     "grant cinder_user read caps (docs/cephx.md)"),
    Reason.CHECKSUM_MISMATCH: ("the copy does not match Glance's hash",
                               "check the source: a corrupt image or a wrong location"),
    Reason.NO_GLANCE_CHECKSUM: ("Glance has no hash to verify a copy against",
                                "re-upload the image, or allow_unverified_copies"),
    Reason.UNSUPPORTED_HASH: ("Glance's os_hash_algo is one warmer cannot compute",
                              "re-upload with a supported hash algorithm"),
    Reason.SIZE_MISMATCH: ("the source's size is not Glance's size",
                           "check the source: a corrupt image or a wrong location"),
    Reason.SIZE_UNKNOWN: ("Glance does not know the image's size", "fix the image in Glance"),
    Reason.SHORT_READ: ("the source ended before its size", "check the source"),
    Reason.SHORT_WRITE: ("a write into the target wrote fewer bytes than it was given",
                         "check the target cluster (and its python3-rbd); retried"),
    Reason.TRUST_REVOKED: ("a copy made without a hash (its source snapshot was verified "
                           "before) was not published: a mismatch of that snapshot was "
                           "recorded while it ran, or the shared state did not answer",
                           "none: retried, and the next copy hashes"),
    Reason.NAME_TAKEN_IN_TARGET: ("an RBD image warmer does not own has the copy's name",
                                  "find out whose it is; warmer never touches it"),
    Reason.STALE_COPY_KEPT: ("an old copy could not be removed to make a new one",
                             "the detail says why (clones keep it); retried"),
    Reason.OVER_BUDGET: ("the target's budget is full of copies worth more",
                         "raise capacity_bytes/capacity_images, or unpin images"),
    Reason.TARGET_FULL: ("the target pool is at its quota or the cluster is full",
                         "raise the quota or add capacity"),
    Reason.COPY_POOL_UNKNOWN: ("the target's glance_store is not among Glance's stores",
                               "make glance_store name one of Glance's RBD stores"),
    Reason.GLANCE_STORE_MISMATCH: ("Glance's store and the target disagree on the cluster "
                                   "or pool", "fix the target's glance_store or pool"),
    Reason.LEASE_LOST: ("the copy lease was lost mid-copy", RETRIED),
    Reason.COPY_INCOMPLETE: ("the copy is not complete (not finished or not protected)",
                             RETRIED),
    Reason.LOCATIONS_HIDDEN: ("Glance does not show locations, so none can be changed",
                              "enable show_multiple_locations for warmer's user"),
    Reason.PUBLISH_REFUSED: ("Glance refused to add the copy's location (detail: its message)",
                             "see WarmerGlanceRefusesLocations in docs/operations.md"),
    Reason.IMAGE_DELETED: ("the image was deleted while warmer worked on it", NOTHING),
    Reason.COPY_IN_PROGRESS_ELSEWHERE: ("another daemon holds the copy lease", NOTHING),
    Reason.COPYING: ("a copy is under way in this daemon", NOTHING),
    Reason.LOCATIONS_BUSY: ("another change holds the image's locations", RETRIED),
    Reason.CEPH_UNAVAILABLE: ("the target's cluster does not answer", "check the cluster"),
    Reason.GLANCE_UNAVAILABLE: ("Glance does not answer", "check Glance and [glance]"),
    Reason.GLANCE_404_UNCONFIRMED: ("Glance answered 404, but its endpoint could not be "
                                    "shown right", "check [glance]"),
    Reason.CEPH_ERROR: ("a Ceph operation failed", "the detail and the log say which"),
    Reason.INTERNAL_ERROR: ("a bug in warmer", "report the traceback from the log"),
    Reason.LOCATION_CONFLICT: ("Glance's locations changed under a removal; warmer stops "
                               "touching the image", "check its locations, then restart"),
}
