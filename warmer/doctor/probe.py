"""The doctor's probes: what it asks Ceph and Glance, read-only.

It runs in the ``warmer`` CLI's own process, from warmer's config (the
daemon need not run): it connects to each target's cluster as warmer's
user and, where it can, as Cinder's and Glance's users, and asks Glance
with warmer's credentials. It changes nothing: snapshots are opened
read-only, and caps that ``auth get`` does not show are told apart by the
OSD's answer to a stat and to a removal of an object that does not exist
(``ENOENT``: allowed; ``EPERM``: the caps refuse it), which writes nothing.
"""

from __future__ import annotations

import asyncio
import errno
import json
import logging
import uuid
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field, replace
from typing import Any

from oslo_config import cfg

from warmer.ceph import images as rbd_images
from warmer.ceph.bindings import Rados, modules, set_snapshot
from warmer.ceph.client import CephClient, CephUnavailable, ClusterConfig
from warmer.ceph.ownership import SNAPSHOT
from warmer.doctor import rules
from warmer.doctor.openstack_conf import CinderConf, GlanceStoreConf
from warmer.doctor.report import Diagnosis, ImageReport, Report, Verdict
from warmer.doctor.rules import OK, PERMISSION, GlanceView, SnapProbe, caps_plus
from warmer.glance.auth import GlanceAuth
from warmer.glance.client import GlanceClient, GlanceUnavailable, parse_image
from warmer.glance.stores import Store, StoreCatalog
from warmer.locations import RbdLocation, parse_rbd_url
from warmer.service import cluster_config

LOG = logging.getLogger(__name__)
ABSENT = "absent"
PROBE_PREFIX = "warmer.doctor.probe."  # + a fresh uuid: an object nobody has
# The image's notes (rules.cinder_locations) by which Cinder never sees a
# location added to an image, such as warmer's copy: what Cinder sees then.
HIDING = {"only_direct_url": "sees direct_url alone",
          "locations_hidden": "sees no location at all"}


# -- blocking probes, run on a CephClient's threads -----------------------------


def _open_snapshot(cluster: Rados, pool: str, image: str, snap: str) -> SnapProbe:
    rados, rbd = modules()
    try:
        ioctx = cluster.open_ioctx(pool)
    except rados.ObjectNotFound:
        return SnapProbe("pool_missing")
    except rados.PermissionError:
        return SnapProbe(PERMISSION)
    try:
        try:
            img = rbd.Image(ioctx, image, read_only=True)
        except rbd.ImageNotFound:
            return SnapProbe("rbd_image_missing")
        with img:
            if snap not in {s["name"] for s in img.list_snaps()}:
                return SnapProbe("snapshot_missing")
            # Cinder's open: the snapshot, read-only (set on the image
            # opened at its head: bindings.set_snapshot says why).
            set_snapshot(img, snap)
            return SnapProbe(OK, bool(img.is_protected_snap(snap)))
    except (rados.PermissionError, rbd.PermissionError):
        return SnapProbe(PERMISSION)
    except (rados.Error, rbd.Error) as exc:
        return SnapProbe("error", detail=str(exc))
    finally:
        ioctx.close()


def _for_image(diagnosis: Diagnosis, image_id: str) -> Diagnosis:
    """Remedies name the image: `warmer show ID` -> `warmer show <id>`."""
    if diagnosis.remedy is None or " ID`" not in diagnosis.remedy:
        return diagnosis
    return replace(diagnosis, remedy=diagnosis.remedy.replace(" ID`", f" {image_id}`"))


def _unavailable(t: TargetFacts, exc: CephUnavailable) -> Diagnosis:
    """The target's cluster stopped answering mid-check (the op timeouts)."""
    return Diagnosis("ceph_unavailable", f"{exc}: the doctor checked {t.name} no further",
                     "check the cluster's health (ceph -s), and that user's mon caps: "
                     "without mon 'profile rbd' a user connects, but cannot read the OSD "
                     "map and every pool open times out", blocking=True)


def _glance_caps_remedy(t: TargetFacts, user: str) -> str:
    """What gives Glance's store user the rbd profile on warmer's copy pool,
    unless that pool is Cinder's: Glance's user may then not read or write
    every Cinder volume either; the copies belong in the Glance store's
    pool, which that user writes already."""
    if t.copy_pool in t.cinder_pools:
        return (f"leave [{t.name}] copy_pool unset: copies then go into the Glance store's "
                f"pool, which client.{user} writes already (never give it caps on Cinder's "
                f"pool {t.copy_pool})")
    return caps_plus(user, f"profile rbd pool={t.copy_pool}")


def _not_checked(target: str, why: Diagnosis) -> Verdict:
    return Verdict(target, False, None, [why], checked=False)


def _opener(loc: RbdLocation) -> Callable[[Rados], SnapProbe]:
    return lambda cluster: _open_snapshot(cluster, loc.pool, loc.image, loc.snapshot)


def _caps(cluster: Rados, pool: str) -> tuple[str, str]:
    """(read, write) in ``pool``: ``ok``, ``permission_denied``,
    ``pool_missing`` or ``unknown``, from a stat and then a removal of an
    object that does not exist (a fresh uuid name, which the stat has just
    shown absent): the OSD checks caps before it answers ENOENT, so nothing
    changes. A hint only: caps limited to object prefixes or namespaces are
    judged for this name, in the default namespace; ``auth get``, when
    allowed, is the better witness."""
    rados, _ = modules()
    try:
        ioctx = cluster.open_ioctx(pool)
    except rados.ObjectNotFound:
        return "pool_missing", "pool_missing"
    name = f"{PROBE_PREFIX}{uuid.uuid4().hex}"
    try:
        read = _probe(rados, ioctx.stat, name)
        if read != ABSENT:  # refused, or (never expected) present: remove nothing
            return read, "unknown" if read == "present" else read
        written = _probe(rados, ioctx.remove_object, name)  # type: ignore[attr-defined]
        return OK, OK if written == ABSENT else written
    finally:
        ioctx.close()


def _probe(rados: Any, op: Callable[[str], object], name: str) -> str:
    try:
        op(name)
        return "present"
    except rados.ObjectNotFound:
        return ABSENT
    except rados.PermissionError:
        return PERMISSION
    except rados.Error as exc:
        code = abs(getattr(exc, "errno", 0) or 0)
        return PERMISSION if code in (errno.EPERM, errno.EACCES) else f"error: {exc}"


def _mon_json(cluster: Rados, command: dict[str, str]) -> object | None:
    ret, out, _err = cluster.mon_command(  # type: ignore[attr-defined]
        json.dumps({**command, "format": "json"}), b"")
    return json.loads(out) if ret == 0 and out else None


CLONE_FORMAT = "rbd_default_clone_format"


def _min_compat(cluster: Rados) -> str | None:
    """The cluster's ``require_min_compat_client`` (``auto`` follows it)."""
    osdmap = _mon_json(cluster, {"prefix": "osd dump"})
    compat = osdmap.get("require_min_compat_client") if isinstance(osdmap, dict) else None
    return compat if isinstance(compat, str) else None


def _pool_clone_format(cluster: Rados, pool: str) -> str | None:
    """``pool``'s own ``rbd_default_clone_format`` (``rbd config pool set``,
    kept in the pool's RBD metadata), which librbd applies over the
    client's config to a clone made in that pool: "" when the pool sets
    none, None when it cannot be read."""
    rados, rbd = modules()
    try:
        ioctx = cluster.open_ioctx(pool)
    except rados.Error:
        return None
    try:
        return str(rbd.RBD().pool_metadata_get(ioctx, f"conf_{CLONE_FORMAT}"))
    except KeyError:
        return ""
    except (rados.Error, rbd.Error):
        return None
    finally:
        ioctx.close()


def _own_clone_format(cluster: Rados) -> str | None:
    """``rbd_default_clone_format`` as this connection's librados has it: its
    ceph.conf, then the config database for its own entity."""
    try:
        return str(cluster.conf_get(CLONE_FORMAT))  # type: ignore[attr-defined]
    except Exception:  # an unknown option on an old librbd
        return None


def _config_db(cluster: Rados, entity: str, option: str) -> str | None:
    """What the cluster's config database gives ``entity`` for ``option``
    (its own section, else ``client``, else ``global``): "" when it sets
    nothing, None when it cannot be read or depends on a mask (a host or
    a device class the doctor cannot know). A hint only: a client's
    ceph.conf overrides it."""
    dump = _mon_json(cluster, {"prefix": "config dump"})
    if not isinstance(dump, list):
        return None
    found: dict[str, str] = {}
    for entry in dump:
        if not isinstance(entry, dict) or entry.get("name") != option:
            continue
        section = str(entry.get("section"))
        if section in (entity, "client", "global") and entry.get("mask"):
            return None
        found[section] = str(entry.get("value"))
    return next((found[s] for s in (entity, "client", "global") if s in found), "")


def _auth_caps(cluster: Rados, entity: str) -> dict[str, str] | None:
    entries = _mon_json(cluster, {"prefix": "auth get", "entity": entity})
    if isinstance(entries, list) and entries and isinstance(entries[0], dict):
        caps = entries[0].get("caps")
        return caps if isinstance(caps, dict) else None
    return None


# -- facts per target ---------------------------------------------------------------


@dataclass
class User:
    name: str
    client: CephClient
    source: str  # where the doctor learnt it: "cinder.conf", "warmer.conf"


@dataclass
class TargetFacts:
    name: str
    group: cfg.ConfigOpts.GroupAttr
    warmer: CephClient
    fsid: str | None = None
    store: Store | None = None
    copy_pool: str | None = None
    cinder: User | None = None
    cinder_pool: str | None = None  # rbd_pool of the backend whose user ``cinder`` is
    backend_pools: set[str] = field(default_factory=set)  # of every backend here (cinder.conf)
    glance: User | None = None
    v1: bool | None = None
    glance_reads_copy_pool: bool | None = None

    @property
    def glance_store(self) -> str:
        return str(self.group.glance_store or self.name)

    @property
    def cinder_pools(self) -> set[str]:
        """Cinder's pool here, as warmer.conf and cinder.conf name it: no
        remedy ever gives warmer or Glance caps there (invariant 7)."""
        return {str(self.group.pool)} | self.backend_pools

    def as_cinder(self) -> tuple[CephClient, str]:
        if self.cinder is not None:
            return self.cinder.client, self.cinder.name
        return self.warmer, str(self.group.rados_user)


class Doctor:
    def __init__(self, conf: cfg.ConfigOpts, *, cinder_conf: CinderConf | None = None,
                 glance_conf: dict[str, GlanceStoreConf] | None = None,
                 only: str | None = None) -> None:
        self.conf = conf
        self.cinder_conf = cinder_conf
        self.glance_conf = glance_conf
        names = [n for n in conf.enabled_targets if only is None or n == only]
        if only is not None and not names:
            raise ValueError(f"no target {only!r} in enabled_targets "
                             f"({', '.join(conf.enabled_targets) or 'none'})")
        self.filtered = len(names) < len(conf.enabled_targets)
        self._executor = ThreadPoolExecutor(max_workers=4, thread_name_prefix="doctor")
        self._clients: list[CephClient] = []
        self.glance = GlanceClient(conf.glance.endpoint, auth=GlanceAuth(conf))
        self.stores = StoreCatalog(self.glance)
        self.targets = [TargetFacts(n, conf[n], self._client(cluster_config(
            conf[n], conf[n].rados_user, conf[n].keyring))) for n in names]

    def _client(self, config: ClusterConfig) -> CephClient:
        client = CephClient(config, self._executor)
        self._clients.append(client)
        return client

    async def close(self) -> None:
        await self.glance.close()
        for client in self._clients:
            await asyncio.get_running_loop().run_in_executor(self._executor, client.close)
        self._executor.shutdown(wait=False)

    async def run(self, image_id: str | None) -> Report:
        report = Report()
        await self._glance_stores(report)
        for t in self.targets:
            try:
                await self._target(report, t)
            except CephUnavailable as exc:
                report.add(t.name, _unavailable(t, exc))
                t.fsid = None  # checked no further
        await self._cinder(report)
        for t in self.targets:
            if t.fsid is None:
                continue
            try:
                await self._clone_format(report, t)
            except CephUnavailable as exc:
                report.add(t.name, _unavailable(t, exc))
                t.fsid = None
        for t in self.targets:
            await self._glance_user(report, t)
        await self._state_trust(report)
        if image_id is not None:
            report.image = await self._image(image_id)
        return report

    # -- deployment -----------------------------------------------------------------

    async def _glance_stores(self, report: Report) -> None:
        try:
            stores = await self.stores.stores(fresh=True)
        except GlanceUnavailable as exc:
            report.add("glance", Diagnosis(
                "glance_unreachable", f"cannot ask Glance: {exc}",
                "check [glance] endpoint and credentials in warmer.conf", blocking=True))
            return
        if stores is None:
            report.add("glance", Diagnosis(
                "glance_stores_unknown", "Glance does not show its stores "
                "(GET /v2/info/stores/detail needs the admin role and multiple stores)",
                "give warmer's Glance user the admin role, or set copy_pool in each target"))
            return
        listing = ", ".join(f"{s.id} ({s.type}{', pool ' + s.pool if s.pool else ''})"
                            for s in stores.values())
        report.add("glance", Diagnosis("glance_stores", f"Glance's stores: {listing}"))
        wanted = {t.glance_store for t in self.targets}
        for s in stores.values():
            if s.type == "rbd" and s.id not in wanted and not self.filtered:
                report.add("glance", Diagnosis(
                    "glance_store_not_a_target", f"Glance's RBD store {s.id} (fsid "
                    f"{s.fsid or '?'}) is no warmer target: images are never warmed there",
                    f"add a target with glance_store = {s.id} if Cinder clones there"))
        for t in self.targets:
            t.store = stores.get(t.glance_store)

    async def _state_trust(self, report: Report) -> None:
        """With ``trust_verified_snapshots``, a record in the shared state
        makes warmer copy a snapshot without hashing it: whoever can write
        the state is inside the trust boundary. Glance's user, with 'profile
        rbd pool=<its pool>', can write every namespace of that pool."""
        state = self.conf.state
        if not (state.enabled and self.conf.warming.trust_verified_snapshots):
            return
        stores = await self._cached_stores()
        if not stores:
            return
        client = self._client(ClusterConfig(state.ceph_conf, state.rados_user, state.keyring,
                                            state.connect_timeout))
        try:
            fsid = await client.connect()
        except CephUnavailable:
            return  # the daemon says so itself (warmer_state_errors_total)
        by_store = {t.glance_store: t.fsid for t in self.targets}
        for store in stores.values():
            if store.type == "rbd" and store.pool == state.pool \
                    and (store.fsid or by_store.get(store.id)) == fsid:
                report.add("state", Diagnosis(
                    "state_pool_shared_with_glance",
                    f"[warming] trust_verified_snapshots is on and the shared state is in "
                    f"pool {state.pool} (namespace {state.namespace or '(default)'}), the "
                    f"pool of Glance store {store.id}: Glance's user (and any user with a "
                    f"cap on pool {state.pool} that names no namespace) can write a record "
                    "that makes warmer copy a snapshot without hashing it",
                    "move [state] to a pool only warmer's user can write (docs/cephx.md, "
                    "'The shared state'), or set [warming] trust_verified_snapshots = false"))
                return

    async def _target(self, report: Report, t: TargetFacts) -> None:
        def add(diagnosis: Diagnosis) -> None:
            report.add(t.name, diagnosis)

        user = t.group.rados_user
        try:
            t.fsid = await t.warmer.connect()
        except CephUnavailable as exc:
            add(Diagnosis("warmer_cannot_connect", str(exc),
                          f"check [{t.name}] ceph_conf and keyring (readable by this user?), "
                          f"and that client.{user} exists", blocking=True))
            return
        add(Diagnosis("cluster", f"cluster {t.fsid} ({t.group.ceph_conf}) as client.{user}"))
        store = t.store
        if t.group.copy_pool:
            t.copy_pool = t.group.copy_pool
        elif store is None or store.type != "rbd" or not store.pool:
            add(Diagnosis("glance_store_missing",
                          f"Glance has no RBD store {t.glance_store!r} with a pool: warmer "
                          "cannot tell where its copies go, and copies nothing here",
                          f"set [{t.name}] glance_store to the id of this cluster's Glance "
                          "RBD store (enabled_backends in glance-api.conf), or copy_pool",
                          blocking=bool(t.group.copy_images)))
        elif store.fsid and store.fsid != t.fsid:
            add(Diagnosis("glance_store_wrong_cluster",
                          f"Glance store {store.id} is cluster {store.fsid}, but [{t.name}] "
                          f"is cluster {t.fsid}",
                          f"set [{t.name}] glance_store to the store whose fsid is {t.fsid}",
                          blocking=bool(t.group.copy_images)))
        else:
            t.copy_pool = store.pool
        if t.copy_pool and t.copy_pool == t.group.pool:
            add(Diagnosis("copies_in_cinder_pool", f"copies go to Cinder's pool {t.copy_pool}: "
                          "warmer and Glance then need write caps on every Cinder volume",
                          "leave copy_pool unset: copies belong in the Glance store's pool"))
        await self._warmer_caps(t, add)

    async def _warmer_caps(self, t: TargetFacts, add: Callable[[Diagnosis], None]) -> None:
        user = str(t.group.rados_user)
        caps = await t.warmer.run("doctor_auth_get", lambda c: _auth_caps(c, f"client.{user}"))
        if caps is not None:
            add(Diagnosis("warmer_caps", f"client.{user}: " + ", ".join(
                f"{k} '{v}'" for k, v in sorted(caps.items()))))
        else:
            add(Diagnosis("warmer_caps_probed", f"'auth get client.{user}' is refused to "
                          "warmer's user (as it should be): its caps were tried instead"))
        copy_pool = t.copy_pool
        if copy_pool:
            read, write = await t.warmer.run("doctor_caps", lambda c: _caps(c, copy_pool))
            if read != OK or write != OK:
                # Never advise write caps on Cinder's pool (invariant 7).
                fix, writable = "", copy_pool
                if copy_pool == t.group.pool:
                    fix = (f"leave [{t.name}] copy_pool unset (copies belong in the Glance "
                           "store's pool), then ")
                    writable = (t.store.pool if t.store is not None and t.store.pool
                                else "<the Glance store's pool>")
                add(Diagnosis("warmer_cannot_write_copy_pool",
                              f"client.{user} in copy pool {copy_pool}: read {read}, write "
                              f"{write}: warmer can neither repair snapshots nor copy here",
                              fix + caps_plus(user, f"profile rbd pool={writable}")
                              + f" (docs/cephx.md: mon 'profile rbd', osd 'profile rbd "
                              f"pool={writable}, profile rbd-read-only pool={t.group.pool}')",
                              blocking=bool(t.group.copy_images)))
        pool = str(t.group.pool)
        read, write = await t.warmer.run("doctor_caps", lambda c: _caps(c, pool))
        if read == "pool_missing":
            add(Diagnosis("cinder_pool_missing", f"[{t.name}] pool = {pool}: no such pool",
                          f"set [{t.name}] pool to Cinder's rbd_pool"))
        elif read != OK:
            add(Diagnosis("warmer_cannot_read_cinder_pool",
                          f"client.{user} cannot read Cinder's pool {pool}: it cannot list "
                          "clones, so it treats every copy as in use and never evicts",
                          caps_plus(user, f"profile rbd-read-only pool={pool}")))
        if write == OK:
            add(Diagnosis("warmer_can_write_cinder_pool",
                          f"client.{user} may write Cinder's pool {pool}: every Cinder volume "
                          "is within warmer's reach (invariant 7)",
                          f"ceph auth caps client.{user} with its current caps, but "
                          f"'profile rbd-read-only pool={pool}' on osd instead of what lets it "
                          "write there (docs/cephx.md)", unsafe=True))

    async def _cinder(self, report: Report) -> None:
        """Cinder's user per target: from cinder.conf's backend on the same
        cluster, else the target's cinder_user, else none (checked as
        warmer's user, said so)."""
        by_fsid = {t.fsid: t for t in self.targets if t.fsid}
        if self.cinder_conf is not None:
            cc = self.cinder_conf
            report.add("cinder", Diagnosis(
                "cinder_glance_auth" if cc.glance_service_auth else "cinder_no_glance_auth",
                f"{cc.path} [glance] " + ("has service credentials (auth_type): Cinder reads "
                                          "Glance's locations API" if cc.glance_service_auth
                                          else "has no auth_type: Cinder reads locations from "
                                          "GET /v2/images/{id} (show_image_direct_url, "
                                          "show_multiple_locations)")))
            for b in cc.backends:
                if not b.is_rbd:
                    report.add("cinder", Diagnosis("cinder_backend_not_rbd",
                                                   f"backend {b.name}: {b.driver or 'no driver'}"
                                                   " does not clone from Glance's RBD locations"))
                    continue
                client = self._client(ClusterConfig(b.ceph_conf or "/etc/ceph/ceph.conf", b.user))
                try:
                    fsid = await client.connect()
                except CephUnavailable as exc:
                    report.add("cinder", Diagnosis(
                        "cinder_user_not_checked", f"backend {b.name}: cannot connect as "
                        f"client.{b.user} with {b.ceph_conf or 'the default ceph.conf'}: {exc}",
                        "run the doctor as a user that can read Cinder's keyring (root), or "
                        "fix rbd_user / rbd_ceph_conf"))
                    continue
                t = by_fsid.get(fsid)
                if t is None and self.filtered:
                    continue  # another target's backend, maybe
                if t is None:
                    report.add("cinder", Diagnosis(
                        "cinder_backend_not_a_target", f"backend {b.name} (cluster {fsid}, "
                        f"rbd_user {b.user}) is no warmer target: nothing is warmed for it",
                        f"add a target for cluster {fsid} to enabled_targets"))
                    continue
                report.add("cinder", Diagnosis("cinder_backend", f"backend {b.name} is target "
                                               f"{t.name}: rbd_user {b.user}, rbd_pool {b.pool}"))
                t.backend_pools.add(b.pool)
                if t.cinder is None:
                    t.cinder = User(b.user, client, "cinder.conf")
                    t.cinder_pool = b.pool
                if b.pool != t.group.pool:
                    report.add(t.name, Diagnosis(
                        "cinder_pool_differs", f"Cinder's backend {b.name} has rbd_pool "
                        f"{b.pool}, [{t.name}] pool is {t.group.pool}: warmer lists clones "
                        "in the wrong pool", f"set [{t.name}] pool = {b.pool}"))
        for t in self.targets:
            if t.fsid is None or t.cinder is not None:
                continue
            if t.group.cinder_user:
                client = self._client(cluster_config(t.group, t.group.cinder_user,
                                                     t.group.cinder_keyring))
                try:
                    await client.connect()
                    t.cinder = User(t.group.cinder_user, client, "warmer.conf")
                    continue
                except CephUnavailable as exc:
                    report.add(t.name, Diagnosis(
                        "cinder_user_not_checked", f"cannot connect as client."
                        f"{t.group.cinder_user}: {exc}",
                        f"check [{t.name}] cinder_keyring (readable by this user?)"))
            else:
                report.add(t.name, Diagnosis(
                    "cinder_user_not_checked", f"Cinder's user for {t.name} is unknown: "
                    f"snapshots were opened as client.{t.group.rados_user} instead",
                    f"set [{t.name}] cinder_user and cinder_keyring, or give --cinder-conf"))

    async def _clone_format(self, report: Report, t: TargetFacts) -> None:
        """The format of the clones Cinder makes here (:class:`rules.CloneFacts`).
        Cinder's own config is read only on a connection as its rbd_user with
        its rbd_ceph_conf (from cinder.conf), which is what Cinder's librbd
        reads; otherwise the doctor says it does not know, unless Cinder's
        pool decides for every client."""
        pool = t.cinder_pool or str(t.group.pool)
        pool_setting = None
        if t.cinder is not None:
            pool_setting = await t.cinder.client.run(
                "doctor_pool_config", lambda c: _pool_clone_format(c, pool))
        if pool_setting is None:
            pool_setting = await t.warmer.run(
                "doctor_pool_config", lambda c: _pool_clone_format(c, pool))
        compat = await t.warmer.run("doctor_osd_dump", _min_compat)
        user = t.cinder.name if t.cinder is not None else t.group.cinder_user
        client_setting, db = None, None
        if t.cinder is not None and t.cinder.source == "cinder.conf":
            client_setting = await t.cinder.client.run("doctor_conf_get", _own_clone_format)
            source = f"read as it, with {t.cinder.client.config.conf_file} from cinder.conf"
        else:
            source = ("its rbd_ceph_conf is unknown without --cinder-conf" if t.cinder is None
                      else f"connected with warmer's ceph_conf ({t.group.ceph_conf}), not "
                           "Cinder's rbd_ceph_conf: give --cinder-conf")
            if user:
                entity = f"client.{user}"
                db = await t.warmer.run("doctor_config_dump",
                                        lambda c: _config_db(c, entity, CLONE_FORMAT))
        facts = rules.CloneFacts(pool, pool_setting, user, client_setting, source, compat, db)
        t.v1 = facts.v1
        report.add(t.name, rules.clone_format_note(facts))

    async def _glance_user(self, report: Report, t: TargetFacts) -> None:
        """Glance validates a location it is given by opening it as its
        store's user, and deletes the data of the locations it drops: that
        user must read and write warmer's copy pool."""
        if t.fsid is None or not t.copy_pool:
            return
        store = (self.glance_conf or {}).get(t.glance_store)
        if store is None or not store.user:
            report.add(t.name, Diagnosis(
                "glance_user_not_checked", f"Glance store {t.glance_store}'s user is unknown: "
                f"not checked that it can open warmer's copies in {t.copy_pool}",
                "give --glance-conf /etc/glance/glance-api.conf"))
            return
        client = self._client(ClusterConfig(store.ceph_conf or "/etc/ceph/ceph.conf",
                                            store.user))
        try:
            fsid = await client.connect()
            read, write = await client.run("doctor_caps", lambda c: _caps(c, t.copy_pool or ""))
        except CephUnavailable as exc:
            report.add(t.name, Diagnosis(
                "glance_user_not_checked", f"cannot connect as Glance's client.{store.user}: "
                f"{exc}", "run the doctor as a user that can read Glance's keyring (root)"))
            return
        t.glance = User(store.user, client, "glance-api.conf")
        if fsid != t.fsid:
            report.add(t.name, Diagnosis(
                "glance_store_conf_other_cluster", f"glance-api.conf [{store.name}] "
                f"rbd_store_ceph_conf is cluster {fsid}, not {t.fsid}",
                f"point [{store.name}] rbd_store_ceph_conf at this cluster's ceph.conf"))
            return
        fix = _glance_caps_remedy(t, store.user)
        if read != OK:
            t.glance_reads_copy_pool = False
            report.add(t.name, Diagnosis(
                "glance_user_cannot_read_copy_pool",
                f"Glance's client.{store.user} cannot read {t.copy_pool}: Glance refuses "
                "(HTTP 500) every location warmer publishes there",
                fix, blocking=True))
        elif write != OK:
            t.glance_reads_copy_pool = True
            report.add(t.name, Diagnosis(
                "glance_user_cannot_write_copy_pool",
                f"Glance's client.{store.user} cannot write {t.copy_pool}: deleting an image "
                "leaves warmer's copies behind", fix))
        else:
            t.glance_reads_copy_pool = True
            report.add(t.name, Diagnosis("glance_user_ok", f"Glance's client.{store.user} "
                                         f"reads and writes {t.copy_pool}"))

    # -- one image ------------------------------------------------------------------

    async def _image(self, image_id: str) -> ImageReport:
        img = ImageReport(image_id)
        try:
            body = await self.glance.image_body(image_id)
            api_status, api_urls = await self.glance.image_locations(image_id)
        except GlanceUnavailable as exc:
            img.diagnoses.append(Diagnosis("glance_unreachable", str(exc),
                                           "check [glance] in warmer.conf", blocking=True))
            return img
        if body is None:
            img.diagnoses.append(Diagnosis("image_not_found", "Glance has no such image",
                                           "check the id (glance image-show)", blocking=True))
            return img
        info = parse_image(body).info
        img.summary = (f"{info.name or '(no name)'}, {info.disk_format}, {info.status}, "
                       f"{info.size} bytes")
        if info.status != "active":
            img.diagnoses.append(Diagnosis("image_not_active", f"status {info.status}",
                                           "wait for the upload or import to finish",
                                           blocking=True))
        locations = body.get("locations")
        view = GlanceView(
            body.get("direct_url") if isinstance(body.get("direct_url"), str) else None,
            [loc["url"] for loc in locations if isinstance(loc, dict)
             and isinstance(loc.get("url"), str)] if isinstance(locations, list) else None,
            api_status, api_urls)
        auth = None if self.cinder_conf is None else self.cinder_conf.glance_service_auth
        urls, notes = rules.cinder_locations(view, auth)
        img.diagnoses += notes
        # Where Cinder sees direct_url alone, or nothing, a location warmer
        # adds is never tried: what that note says is the cause, not publishing.
        hidden_by = next((d.code for d in notes if d.code in HIDING), None)
        glance_urls = api_urls if api_urls is not None else view.locations
        known = {t.fsid for t in self.targets if t.fsid}
        known |= {s.fsid for s in ((await self._cached_stores()) or {}).values() if s.fsid}
        for t in self.targets:
            if t.fsid is None:
                img.verdicts.append(_not_checked(t.name, Diagnosis(
                    "target_not_checked", f"the doctor could not reach {t.name}'s cluster",
                    f"fix what the deployment says of {t.name} first", blocking=True)))
                continue
            try:
                verdict = await self._verdict(t, image_id, urls, known,
                                              raw=info.disk_format == "raw",
                                              hidden_by=hidden_by, glance_urls=glance_urls)
            except CephUnavailable as exc:
                verdict = _not_checked(t.name, _unavailable(t, exc))
            verdict.diagnoses = [_for_image(d, image_id) for d in verdict.diagnoses]
            img.verdicts.append(verdict)
        return img

    async def _verdict(self, t: TargetFacts, image_id: str, urls: list[str],
                       known: set[str], *, raw: bool, hidden_by: str | None = None,
                       glance_urls: list[str] | None = None) -> Verdict:
        assert t.fsid is not None
        client, user = t.as_cinder()
        probes: dict[str, SnapProbe] = {}
        misplaced: dict[str, SnapProbe] = {}
        for url in urls:
            loc = parse_rbd_url(url)
            if loc is None:
                continue
            if loc.fsid == t.fsid:
                probes[url] = await client.run("doctor_open", _opener(loc))
            elif loc.fsid not in known:
                misplaced[url] = await t.warmer.run("doctor_open", _opener(loc))
        verdict = rules.replay(t.name, t.fsid, urls, raw=raw, probes=probes,
                               misplaced=misplaced, known_fsids=known, v1=t.v1,
                               cinder_user=user,
                               direct_url_only=hidden_by == "only_direct_url")
        if not verdict.clones and raw:
            await self._why_no_copy(t, image_id, urls, verdict.diagnoses,
                                    hidden_by=hidden_by, glance_urls=glance_urls)
        return verdict

    async def _cached_stores(self) -> dict[str, Store] | None:
        try:
            return await self.stores.stores()
        except GlanceUnavailable:
            return None

    async def _why_no_copy(self, t: TargetFacts, image_id: str, urls: list[str],
                           diagnoses: list[Diagnosis], *, hidden_by: str | None = None,
                           glance_urls: list[str] | None = None) -> None:
        """A raw image that does not clone here: is warmer's copy there but
        not a location, and would Glance accept it? ``hidden_by``: the
        image's note (only_direct_url, locations_hidden) by which Cinder
        never sees a location added to the image: that is then the cause,
        and publishing (again) cannot help. ``glance_urls``: every location
        Glance has, as far as it shows warmer (None: not shown)."""
        if not t.copy_pool:
            return
        ours = RbdLocation(t.fsid or "", t.copy_pool, image_id, SNAPSHOT).url
        if ours in urls:
            return
        if any(d.code == "location_fsid_wrong" for d in diagnoses):
            return  # the fix is the location's fsid, not a copy
        pool = t.copy_pool
        inspection = await t.warmer.run("inspect", lambda c: rbd_images.inspect(
            c, pool, image_id))
        probe = await t.warmer.run("doctor_open", lambda c: _open_snapshot(
            c, pool, image_id, SNAPSHOT))
        published = None if glance_urls is None else ours in glance_urls
        where = f"warmer's copy {t.copy_pool}/{image_id}@snap"
        there = inspection is not None and inspection.owned and probe.result == OK
        protection = "protected" if probe.protected else "unprotected"
        if there and hidden_by is not None:
            diagnoses.append(Diagnosis(
                "copy_unseen_by_cinder",
                f"{where} is there ({protection}) and "
                + {True: "a location of the image", False: "no location of the image",
                   None: "may be a location of the image (Glance does not show warmer)"}[
                    published]
                + f", but Cinder {HIDING[hidden_by]} ({hidden_by}, above): it never tries "
                "a location warmer publishes",
                f"fix {hidden_by} first (its remedy, above): publishing again cannot help"
                + ("; then `warmer show ID` says why the copy is no location "
                   "(publish_refused: Glance's message in detail)" if published is False
                   else ""),
                blocking=True))
        elif there and published is None:
            # Glance shows warmer no list of locations: whether Cinder (with
            # its own credentials) sees this copy is not known here.
            diagnoses.append(Diagnosis(
                "copy_not_published", f"{where} is there ({protection}); whether it is a "
                "location Cinder sees is unknown: Glance shows warmer's user no list of the "
                "image's locations", "`warmer show ID` says whether warmer published it; "
                "give --cinder-conf so that the doctor reads the locations as Cinder does"))
        elif there:
            diagnoses.append(Diagnosis(
                "copy_not_published", f"{where} is there ({protection}) but is no location "
                "Cinder sees", "`warmer show ID` says why (publish_refused: Glance's message "
                "in detail); `warmer evaluate ID` tries again", blocking=True))
        if t.glance_reads_copy_pool is False and t.glance is not None:
            fix = _glance_caps_remedy(t, t.glance.name)
            if hidden_by is not None:
                fix = (f"fix {hidden_by} first (its remedy, above): Cinder {HIDING[hidden_by]}, "
                       f"so it never tries a copy warmer publishes; then {fix}")
            diagnoses.append(Diagnosis(
                "glance_user_cannot_read_copy_pool",
                f"Glance's client.{t.glance.name} cannot read {t.copy_pool}: Glance would "
                "refuse (HTTP 500) warmer's copy as a location"
                + (" (this copy is one already)" if published else ""),
                fix, blocking=not published))
