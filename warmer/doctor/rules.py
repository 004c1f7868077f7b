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
    older than mimic. None when it cannot be told."""
    if clone_format in ("1", "2"):
        return clone_format == "1"
    if min_compat in RELEASES:
        return RELEASES.index(min_compat) < RELEASES.index("mimic")
    return None


def clone_format_note(clone_format: str | None, min_compat: str | None) -> Diagnosis:
    v1 = clone_v1(clone_format, min_compat)
    facts = (f"rbd_default_clone_format={clone_format or '?'}, "
             f"require_min_compat_client={min_compat or '?'}")
    if v1 is None:
        return Diagnosis("clone_format_unknown",
                         f"cannot tell the clone format ({facts}); assuming v1, which "
                         "needs protected snapshots",
                         "let warmer's user run the mon command 'osd dump' (mon 'profile "
                         "rbd' allows it)")
    if v1:
        return Diagnosis("clone_v1", f"clones are v1 ({facts}): Cinder can clone only "
                                     "protected snapshots")
    return Diagnosis("clone_v2", f"clones are v2 ({facts}): snapshots need no protection")


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
        urls = view.api_urls if view.api_urls is not None else (
            view.locations or ([view.direct_url] if view.direct_url else []))
        return urls, [Diagnosis("locations_api",
                                "Cinder reads Glance's locations API with the service "
                                f"credentials of its [glance] section: {len(urls)} "
                                "location(s)")]
    notes = []
    if service_auth is None and view.api_status not in (404, 405, 501):
        notes.append(Diagnosis(
            "locations_api_not_checked",
            "Glance offers GET /v2/images/{id}/locations; whether Cinder reads it depends "
            "on service credentials in cinder.conf [glance]; assuming it falls back on "
            "GET /v2/images/{id}", "give --cinder-conf to check"))
    if not view.direct_url:
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
           known_fsids: set[str], v1: bool | None, cinder_user: str) -> Verdict:
    """Cinder's ``clone_image`` for one backend (``target``, cluster
    ``fsid``) over ``urls``. ``probes``: each location of this cluster,
    opened as Cinder's user; ``misplaced``: locations naming a cluster no
    target or Glance store has, opened here by pool/image/snapshot (a
    wrong fsid)."""
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
        if probe.protected is False and v1 is not False:
            diagnoses.append(Diagnosis(
                "snapshot_unprotected",
                f"{url} passes _is_cloneable but {where} is not protected and clones are "
                f"{'v1' if v1 else 'probably v1'}: Cinder's clone fails and the volume "
                "goes to error (no download)",
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
        diagnoses.append(Diagnosis(
            "no_location_in_cluster",
            f"none of the {len(urls)} location(s) Cinder sees is in {target}'s cluster "
            f"{fsid}", "make the image wanted in this target (pin it, or demand here; "
            "`warmer show ID` says why it is not warm): warmer then copies and publishes it",
            blocking=True))
    return Verdict(target, False, None, diagnoses)
