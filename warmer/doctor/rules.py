"""The doctor's rules: pure functions from what was probed to diagnoses.

They replay, from the facts, what Cinder 29 does when it creates a volume
from an image with the RBD driver:

1. ``cinder.image.glance.get_location``: it reads Glance's locations API
   (``GET /v2/images/{id}/locations``) with the service credentials of its
   ``[glance]`` section; without them (403) it falls back on
   ``GET /v2/images/{id}``, and there it uses ``locations`` only when
   ``direct_url`` is shown too (``show_image_direct_url``), else nothing.
2. ``RBDDriver.clone_image``: all those locations (or ``direct_url`` alone
   when ``locations`` is empty), in order; the **first** that passes
   ``_is_cloneable`` is cloned, and a failing clone is not caught.
3. ``_is_cloneable``: ``rbd://fsid/pool/image/snapshot`` (four non-empty
   URL-quoted parts), the fsid of the backend's cluster, ``disk_format``
   raw, and the snapshot opens read-only as ``rbd_user``. It does not look
   at protection: under clone v1 an unprotected snapshot that passes is
   cloned, the clone fails, and the volume goes to ``error``.
"""

from __future__ import annotations

from dataclasses import dataclass, replace

from warmer.doctor.report import Diagnosis, Verdict
from warmer.locations import RBD_PREFIX, parse_rbd_url

# Ceph releases in order: clone v2 needs require_min_compat_client >= mimic.
RELEASES = ("argonaut", "bobtail", "cuttlefish", "dumpling", "emperor", "firefly", "giant",
            "hammer", "infernalis", "jewel", "kraken", "luminous", "mimic", "nautilus",
            "octopus", "pacific", "quincy", "reef", "squid", "tentacle")

OK = "ok"
PERMISSION = "permission_denied"


def caps_plus(user: str, osd_caps: str) -> str:
    """The remedy that adds ``osd_caps`` to a cephx user's caps. ``ceph auth
    caps`` replaces all of a user's caps with those it is given: the
    operator must give the current ones too, or lose them."""
    return f"ceph auth caps client.{user} with its current caps plus '{osd_caps}' on osd"


@dataclass(frozen=True)
class SnapProbe:
    """Opening ``pool/image@snapshot`` read-only as one user: ``ok``,
    ``pool_missing``, ``rbd_image_missing``, ``snapshot_missing``,
    ``permission_denied`` or ``error`` (with ``detail``)."""

    result: str
    protected: bool | None = None
    detail: str = ""


@dataclass(frozen=True)
class GlanceView:
    """What Glance shows of one image's locations, to warmer's credentials."""

    direct_url: str | None
    locations: list[str] | None  # None: no ``locations`` key (show_multiple_locations off)
    api_status: int  # GET /v2/images/{id}/locations: 200, 403, 404...; 0 unknown
    api_urls: list[str] | None = None


def clone_v1(clone_format: str | None, min_compat: str | None) -> bool | None:
    """Whether librbd makes v1 clones (snapshots must be protected):
    ``rbd_default_clone_format`` 1, or auto with ``require_min_compat_client``
    older than mimic. None when it cannot be told (``clone_format`` None:
    not known)."""
    if clone_format in ("1", "2"):
        return clone_format == "1"
    if clone_format == "auto" and min_compat in RELEASES:
        return RELEASES.index(min_compat) < RELEASES.index("mimic")
    return None


@dataclass(frozen=True)
class CloneFacts:
    """What decides the format of the clones Cinder makes in one target.

    librbd takes ``rbd_default_clone_format`` from the overrides of the
    pool the clone is created in (``rbd config pool set``: Cinder's pool),
    above the client's own config, in which Cinder's ceph.conf
    (``rbd_ceph_conf``) wins over the cluster's config database; ``auto``
    follows the cluster's ``require_min_compat_client``. warmer's own
    ceph.conf and config section say nothing of Cinder's clones.
    """

    pool: str
    pool_setting: str | None  # Cinder's pool's override; "" none; None: not read
    user: str | None  # Cinder's rbd_user, when known
    client_setting: str | None  # as Cinder's own librados sees it; None: not read
    client_source: str  # where client_setting was read, or why it was not
    min_compat: str | None
    db_setting: str | None = None  # the config database for client.<user>: a hint only

    @property
    def setting(self) -> str | None:
        if self.pool_setting:
            return self.pool_setting
        return self.client_setting if self.pool_setting == "" else None

    @property
    def v1(self) -> bool | None:
        return clone_v1(self.setting, self.min_compat)

    def describe(self) -> str:
        who = f"client.{self.user}" if self.user else "Cinder's rbd_user"
        pool = ("not read" if self.pool_setting is None
                else self.pool_setting or "not set")
        text = (f"pool {self.pool} override: {pool}; {who}: "
                f"{self.client_setting or 'not read'} ({self.client_source})")
        if self.client_setting is None and self.db_setting is not None:
            text += (f"; the config database gives {who} "
                     f"{self.db_setting or 'nothing'}, which a setting in Cinder's ceph.conf "
                     "would override")
        return text + f"; require_min_compat_client={self.min_compat or '?'}"


UNKNOWN_CLONE_FORMAT = "Cinder's clone format is unknown"


def clone_format_note(facts: CloneFacts) -> Diagnosis:
    v1 = facts.v1
    if v1 is None:
        if facts.pool_setting is None:
            fix = (f"let warmer's user read Cinder's pool {facts.pool} ('profile "
                   f"rbd-read-only pool={facts.pool}'), or give --cinder-conf")
        elif facts.setting is None:
            fix = ("give --cinder-conf (run as root) so that the doctor connects as Cinder's "
                   "rbd_user with its rbd_ceph_conf, as Cinder's librbd does")
        elif facts.setting == "auto":
            fix = ("let warmer's user run the mon command 'osd dump' (mon 'profile rbd' "
                   "allows it)")
        else:
            fix = (f"set rbd_default_clone_format to 1, 2 or auto (it is "
                   f"{facts.setting!r})")
        return Diagnosis("clone_format_unknown",
                         f"{UNKNOWN_CLONE_FORMAT} ({facts.describe()}): an unprotected "
                         "snapshot is not taken to clone", fix)
    if v1:
        return Diagnosis("clone_v1", f"Cinder's clones are v1 ({facts.describe()}): it can "
                                     "clone only protected snapshots")
    return Diagnosis("clone_v2", f"Cinder's clones are v2 ({facts.describe()}): snapshots "
                                 "need no protection")


GLANCE_LOCATIONS_REMEDY = (
    "give Cinder service credentials in cinder.conf [glance] (auth_type and its options, "
    "a user with the service role) so it reads GET /v2/images/{id}/locations; or set "
    "show_image_direct_url = True and show_multiple_locations = True in glance-api.conf "
    "(deprecated, a security risk)")


def cinder_locations(view: GlanceView, service_auth: bool | None
                     ) -> tuple[list[str], list[Diagnosis]]:
    """The URLs Cinder's ``clone_image`` tries, in order, and how it got
    them. ``service_auth``: cinder.conf ``[glance]`` has credentials (None
    when cinder.conf was not given)."""
    if service_auth and view.api_status not in (404, 405, 501):
        if view.api_urls is not None:
            return view.api_urls, [Diagnosis(
                "locations_api", "Cinder reads Glance's locations API with the service "
                f"credentials of its [glance] section: {len(view.api_urls)} location(s)")]
        urls = view.locations or ([view.direct_url] if view.direct_url else [])
        return urls, [Diagnosis(
            "locations_api", "Cinder reads Glance's locations API with the service "
            "credentials of its [glance] section, which warmer's own request could not "
            f"read (HTTP {view.api_status}): Cinder may see more than the {len(urls)} "
            "location(s) GET /v2/images/{id} shows here")]
    notes = []
    if service_auth is None and view.api_status not in (404, 405, 501):
        notes.append(Diagnosis(
            "locations_api_not_checked",
            "Glance offers GET /v2/images/{id}/locations; whether Cinder reads it depends "
            "on service credentials in cinder.conf [glance]; assuming it falls back on "
            "GET /v2/images/{id}", "give --cinder-conf to check"))
    if not view.direct_url:
        # Not even with show_multiple_locations: Cinder 29's get_location
        # (cinder/image/glance.py) keeps an image's ``locations`` only next
        # to its ``direct_url``, and reads none without it.
        if view.locations == [] and view.api_urls == []:
            return [], notes + [Diagnosis("no_locations", "the image has no locations at all "
                                          "(no data uploaded, or every location removed)",
                                          "upload the image's data, or import it into a "
                                          "store", blocking=True)]
        return [], notes + [Diagnosis(
            "locations_hidden", "GET /v2/images/{id} shows no direct_url "
            "(show_image_direct_url is off), so Cinder sees no location and always "
            "downloads", GLANCE_LOCATIONS_REMEDY, blocking=True)]
    if view.locations:
        return list(view.locations), notes + [Diagnosis(
            "locations_visible", f"GET /v2/images/{{id}} shows direct_url and "
            f"{len(view.locations)} location(s) (show_multiple_locations)")]
    return [view.direct_url], notes + [Diagnosis(
        "only_direct_url", "GET /v2/images/{id} shows direct_url only "
        "(show_multiple_locations is off): Cinder tries that one location and none of "
        "the copies warmer publishes", GLANCE_LOCATIONS_REMEDY)]


def _failed_open(url: str, probe: SnapProbe, user: str, pool: str, image: str,
                 snap: str) -> Diagnosis:
    where = f"{pool}/{image}@{snap}"
    if probe.result == PERMISSION:
        return Diagnosis("cinder_user_cannot_read",
                         f"client.{user} cannot open {where} read-only (cephx), so "
                         f"_is_cloneable refuses {url}",
                         caps_plus(user, f"profile rbd-read-only pool={pool}"), blocking=True)
    if probe.result == "pool_missing":
        return Diagnosis("pool_missing", f"{url} names pool {pool}, which this cluster "
                                         "does not have", "fix the location's pool",
                         blocking=True)
    if probe.result == "rbd_image_missing":
        return Diagnosis("rbd_image_missing", f"{url}: RBD image {pool}/{image} does not "
                                              "exist", "restore the image, or replace the "
                                                       "stale location", blocking=True)
    if probe.result == "snapshot_missing":
        return Diagnosis("snapshot_missing", f"{url}: {pool}/{image} has no snapshot {snap}",
                         f"rbd snap create {where} && rbd snap protect {where} (warmer does "
                         "it in its Glance store's pool with repair_glance_snapshots)",
                         blocking=True)
    return Diagnosis("open_failed", f"opening {where} as client.{user} failed: "
                                    f"{probe.detail or probe.result}",
                     "look at the cluster's health and the user's caps", blocking=True)


def replay(target: str, fsid: str, urls: list[str], *, raw: bool,
           probes: dict[str, SnapProbe], misplaced: dict[str, SnapProbe],
           known_fsids: set[str], v1: bool | None, cinder_user: str,
           direct_url_only: bool = False) -> Verdict:
    """Cinder's ``clone_image`` for one backend (``target``, cluster
    ``fsid``) over ``urls``. ``probes``: each location of this cluster,
    opened as Cinder's user; ``misplaced``: locations naming a cluster no
    target or Glance store has, opened here by pool/image/snapshot (a
    wrong fsid). ``direct_url_only``: ``urls`` is ``direct_url`` alone
    (only_direct_url), so a location added to the image is never seen."""
    if not raw:
        return Verdict(target, False, None, [Diagnosis(
            "disk_format_not_raw", "the image's disk_format is not raw: _is_cloneable "
            "refuses every location", "convert it (qemu-img convert -O raw) and upload it "
            "as a new raw image", blocking=True)])
    diagnoses: list[Diagnosis] = []
    local = 0
    for url in urls:
        loc = parse_rbd_url(url)
        if loc is None:
            if url.startswith(RBD_PREFIX):
                diagnoses.append(Diagnosis(
                    "location_malformed", f"{url} is not rbd://fsid/pool/image/snapshot "
                    "with four non-empty parts: Cinder skips it",
                    "add a well-formed location (Glance deletes the data of a location "
                    "it removes: add the right one before removing this one)"))
            continue
        if loc.fsid != fsid:
            found = misplaced.get(url)
            if loc.fsid not in known_fsids and found is not None and found.result == OK:
                local += 1
                right = replace(loc, fsid=fsid).url
                diagnoses.append(Diagnosis(
                    "location_fsid_wrong",
                    f"{url} names cluster {loc.fsid}, which no target or Glance store "
                    f"has, but {loc.pool}/{loc.image}@{loc.snapshot} is in {target}'s "
                    f"cluster {fsid}: Cinder skips it as another cluster's",
                    f"add {right} as a location (metadata store = {target}'s Glance "
                    "store); remove the wrong one only after that", blocking=True))
            continue
        local += 1
        probe = probes.get(url, SnapProbe("error", detail="not probed"))
        if probe.result != OK:
            diagnoses.append(_failed_open(url, probe, cinder_user, loc.pool, loc.image,
                                          loc.snapshot))
            continue
        where = f"{loc.pool}/{loc.image}@{loc.snapshot}"
        # _is_cloneable passes: Cinder clones this one, whatever follows.
        if probe.protected is False and v1 is None:
            diagnoses.append(Diagnosis(
                "clone_format_unknown",
                f"{url} passes _is_cloneable but {where} is not protected, and "
                f"{UNKNOWN_CLONE_FORMAT}: under clone v1 Cinder's clone fails and the "
                "volume goes to error (no download)",
                f"rbd snap protect {where} (then it clones in either format); or let the "
                "doctor read Cinder's clone format (see clone_format_unknown under the "
                "deployment)", blocking=True))
            return Verdict(target, False, url, diagnoses)
        if probe.protected is False and v1:
            diagnoses.append(Diagnosis(
                "snapshot_unprotected",
                f"{url} passes _is_cloneable but {where} is not protected and Cinder's "
                "clones are v1: its clone fails and the volume goes to error (no download)",
                f"rbd snap protect {where} (warmer does it in its Glance store's pool "
                "with repair_glance_snapshots = true)", blocking=True))
            return Verdict(target, False, url, diagnoses)
        diagnoses = [replace(d, blocking=False) for d in diagnoses]
        if probe.protected is False:
            diagnoses.append(Diagnosis("snapshot_unprotected_v2",
                                       f"{where} is not protected; clones are v2, so that "
                                       "is fine"))
        diagnoses.append(Diagnosis("cloneable", f"{url} passes _is_cloneable as "
                                                f"client.{cinder_user}"
                                                + (", protected" if probe.protected else "")))
        return Verdict(target, True, url, diagnoses)
    if not urls:
        # Nothing to copy from or clone either: the image's own diagnoses
        # (no_locations, locations_hidden, image_not_active) say why.
        diagnoses.append(Diagnosis(
            "no_location_in_cluster", "Cinder sees no location of this image at all",
            "fix what the image's own diagnoses (above) say first", blocking=True))
    elif local == 0:
        # A copy warmer publishes is a location added after direct_url:
        # Cinder would not see it.
        fix = ("Cinder sees direct_url alone (only_direct_url, above): a location warmer "
               "publishes here is never tried; fix that first" if direct_url_only else
               "make the image wanted in this target (pin it, or demand here; `warmer show "
               "ID` says why it is not warm): warmer then copies and publishes it")
        diagnoses.append(Diagnosis(
            "no_location_in_cluster",
            f"none of the {len(urls)} location(s) Cinder sees is in {target}'s cluster "
            f"{fsid}", fix, blocking=True))
    return Verdict(target, False, None, diagnoses)
