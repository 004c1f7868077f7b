"""A connection to one Ceph cluster as one cephx user.

Every rados/rbd call blocks (and releases the GIL), so each runs on the
target's own bounded thread pool and never on the event loop. Every call is
bounded too: the connection is made with ``rados_osd_op_timeout`` and
``rados_mon_op_timeout``, without which a call to a sick cluster can block
forever.

The connection is made lazily and rebuilt after it is shut down under us,
blocklisted or timed out (rados' or rbd's ``ConnectionShutdown`` and
``TimedOut``/``Timeout``, or an error with errno ``ESHUTDOWN`` (librados'
``EBLOCKLISTED``), ``ETIMEDOUT`` or ``ENOTCONN``), the way ceph-mgr's
rbd_support rebuilds its handlers after a blocklist. The call that saw it
raises :class:`CephUnavailable`; the next call connects afresh. The old
connection is retired, not shut down at once: shutting a rados connection
down under a running call, or under an image or ioctx still open on it,
crashes the process. It is shut down once nothing refers to it any more.
"""

from __future__ import annotations

import asyncio
import concurrent.futures
import errno
import json
import logging
import sys
import threading
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any, ParamSpec, TypeVar

from warmer.ceph.bindings import Image, Rados, modules, set_snapshot

LOG = logging.getLogger(__name__)
T = TypeVar("T")
P = ParamSpec("P")


class CephUnavailable(Exception):
    """The cluster cannot be reached now; the operation may succeed later."""


@dataclass(frozen=True)
class SnapshotCheck:
    """What an attempt to make a snapshot cloneable found and did."""

    problem: str | None = None  # None when the snapshot is there and protected
    actions: tuple[str, ...] = field(default_factory=tuple)


@dataclass(frozen=True)
class ClusterConfig:
    conf_file: str
    user: str
    keyring: str | None = None
    connect_timeout: int = 10
    osd_op_timeout: int = 30
    mon_op_timeout: int = 30


class CephClient:
    """One cluster, one user. Safe to share between tasks."""

    def __init__(self, config: ClusterConfig, executor: concurrent.futures.Executor,
                 observe: Callable[[str, str], None] | None = None) -> None:
        self.config = config
        self._executor = executor
        # Called with (user, operation) for every operation, for metrics.
        self._observe = observe
        self._lock = threading.Lock()
        self._cluster: Rados | None = None
        # Connections dropped while calls or open images may still use them.
        self._retired: list[Rados] = []
        self.fsid: str | None = None

    # -- plumbing -----------------------------------------------------------

    async def run(self, op: str, fn: Callable[[Rados], T]) -> T:
        if self._observe is not None:
            self._observe(self.config.user, op)
        loop = asyncio.get_running_loop()
        return await loop.run_in_executor(self._executor, self._call, fn)

    def _connected(self) -> Rados:
        with self._lock:
            if self._cluster is None:
                rados, _ = modules()
                # warmer writes big aligned chunks and flushes before it
                # snapshots: librbd's writeback cache would only add memory.
                conf: dict[str, str] = {
                    "rbd_cache": "false",
                    # Bounded calls: an OSD or mon that does not answer makes
                    # the call fail with ETIMEDOUT instead of blocking forever.
                    "rados_osd_op_timeout": str(self.config.osd_op_timeout),
                    "rados_mon_op_timeout": str(self.config.mon_op_timeout),
                    # What bounds connect(): the bindings ignore its timeout
                    # argument, and librados waits 300 s by default.
                    "client_mount_timeout": str(self.config.connect_timeout),
                }
                if self.config.keyring:
                    conf["keyring"] = self.config.keyring
                cluster = rados.Rados(conffile=self.config.conf_file,
                                      name=f"client.{self.config.user}", conf=conf)
                try:
                    cluster.connect(timeout=self.config.connect_timeout)
                except Exception:
                    cluster.shutdown()
                    raise
                self.fsid = cluster.get_fsid()
                self._cluster = cluster
            return self._cluster

    def _drop(self, cluster: Rados) -> None:
        """Stop handing ``cluster`` out: the next call connects afresh. It is
        shut down once nothing uses it (see :meth:`_reap`)."""
        with self._lock:
            if self._cluster is not cluster:
                return  # another call already dropped it
            self._cluster = None
            self._retired.append(cluster)
        LOG.warning("client.%s (%s): connection lost; reconnecting on the next call",
                    self.config.user, self.config.conf_file)

    def _reap(self) -> None:
        """Shut down the retired connections nothing refers to any more.

        A running call holds its connection in a local variable, and an open
        ioctx refers to its connection (an open image to its ioctx), so a
        connection only we refer to has no call and no handle left on it, and
        none can appear: it is no longer handed out. (CPython reference
        counts; ``2`` is our list's reference and ``getrefcount``'s own.)
        """
        idle: list[Rados] = []
        with self._lock:
            for i in range(len(self._retired) - 1, -1, -1):
                if sys.getrefcount(self._retired[i]) <= 2:
                    idle.append(self._retired.pop(i))
        for cluster in idle:
            self._shutdown(cluster)
            LOG.info("client.%s (%s): shut down a lost connection nothing uses any more",
                     self.config.user, self.config.conf_file)

    @staticmethod
    def _shutdown(cluster: Rados) -> None:
        try:
            cluster.shutdown()
        except Exception:  # already dead; nothing more to release
            LOG.debug("shutdown of a broken rados connection failed", exc_info=True)

    def _call(self, fn: Callable[[Rados], T]) -> T:
        if self._retired:
            self._reap()
        rados, _ = modules()
        try:
            cluster = self._connected()
        except (rados.Error, OSError) as exc:
            raise CephUnavailable(f"cannot connect as client.{self.config.user} "
                                  f"({self.config.conf_file}): {exc}") from exc
        try:
            return fn(cluster)
        except Exception as exc:
            if not connection_lost(exc):
                raise
            # Blocklisted, cut off or timed out: rebuild the connection.
            self._drop(cluster)
            raise CephUnavailable(f"client.{self.config.user} "
                                  f"({self.config.conf_file}): {exc}") from exc
        finally:
            del cluster  # this call no longer holds the connection

    async def offload(self, fn: Callable[[], T]) -> T:
        """Run ``fn``, a blocking call on a handle opened earlier (closing an
        image), on this client's threads without connecting: it may wait
        for the op timeouts, and must never do so on the event loop."""
        return await asyncio.get_running_loop().run_in_executor(self._executor, fn)

    def guarded(self, fn: Callable[P, T]) -> Callable[P, T]:
        """``fn``, a blocking call on a handle opened through this client and
        run on its threads outside :meth:`run` (a copy's writes), with the
        same errors as :meth:`run`: a lost connection is dropped and raises
        :class:`CephUnavailable`."""
        cluster = self._cluster

        def call(*args: P.args, **kwargs: P.kwargs) -> T:
            try:
                return fn(*args, **kwargs)
            except Exception as exc:
                if not connection_lost(exc):
                    raise
                if cluster is not None:
                    self._drop(cluster)
                raise CephUnavailable(f"client.{self.config.user} "
                                      f"({self.config.conf_file}): {exc}") from exc
        return call

    @property
    def executor(self) -> concurrent.futures.Executor:
        return self._executor

    def close(self) -> None:
        """Shut every connection down. Only once no thread can still use
        them (the service stops the threads first)."""
        with self._lock:
            clusters, self._retired = self._retired, []
            if self._cluster is not None:
                clusters.append(self._cluster)
                self._cluster = None
        for cluster in clusters:
            self._shutdown(cluster)

    # -- operations ---------------------------------------------------------

    async def connect(self) -> str:
        """Connect (if needed) and return the cluster's fsid."""
        return await self.run("connect", lambda c: c.get_fsid())

    async def pool_full(self, pool: str) -> bool:
        """Whether the OSD map marks ``pool`` (or the whole cluster) full:
        its quota reached, or no space left. Writes to it would block."""
        return await self.run("pool_full", lambda c: _pool_full(c, pool))

    async def probe(self, pool: str | None = None) -> None:
        """Raise :class:`CephUnavailable` unless the cluster answers now: a
        mon (cluster stats) and, given ``pool``, the OSD serving an object of
        it (a stat of an object that need not exist). A mon alone answers
        while every OSD is down."""
        await self.run("probe", lambda c: _probe(c, pool))

    async def ensure_protected_snapshot(self, pool: str, image: str, snapshot: str,
                                        *, repair: bool) -> SnapshotCheck:
        """Make ``pool/image@snapshot`` exist and be protected.

        Only the snapshot is ever created or protected; image data is never
        written. When ``repair`` is false, or warmer lacks the caps, the
        problem is reported and nothing changes. Safe against a concurrent
        daemon doing the same (an existing or already protected snapshot
        is success).
        """
        return await self.run("ensure_protected_snapshot",
                               lambda c: _ensure_protected(c, pool, image, snapshot, repair))

    async def check_snapshot_readable(self, pool: str, image: str, snapshot: str) -> str | None:
        """Open ``pool/image@snapshot`` read-only, as Cinder's clone path
        does. Returns ``None`` on success, else a reason."""
        return await self.run("check_snapshot_readable",
                              lambda c: _check_readable(c, pool, image, snapshot))


# librados' EBLOCKLISTED is ESHUTDOWN.
_CONNECTION_ERRNOS = frozenset({errno.ESHUTDOWN, errno.ETIMEDOUT, errno.ENOTCONN})


def connection_lost(exc: BaseException) -> bool:
    """Whether ``exc`` (from rados or rbd, which share no base class) says
    the connection is blocklisted, shut down or timed out: one to rebuild."""
    rados, rbd = modules()
    if isinstance(exc, (rados.ConnectionShutdown, rados.TimedOut,
                        rbd.ConnectionShutdown, rbd.Timeout)):
        return True
    if isinstance(exc, (rados.Error, rbd.Error)):
        code = getattr(exc, "errno", None)
        return isinstance(code, int) and abs(code) in _CONNECTION_ERRNOS
    return False


PROBE_OBJECT = "warmer.probe"


def _probe(cluster: Rados, pool: str | None) -> None:
    rados, _ = modules()
    cluster.get_cluster_stats()
    if pool is None:
        return
    ioctx = cluster.open_ioctx(pool)
    try:
        ioctx.stat(PROBE_OBJECT)
    except rados.ObjectNotFound:
        pass  # the OSD answered
    finally:
        ioctx.close()


def _open(cluster: Rados, pool: str, image: str, **kwargs: Any) -> tuple[Any, Image]:
    _, rbd = modules()
    ioctx = cluster.open_ioctx(pool)
    try:
        return ioctx, rbd.Image(ioctx, image, **kwargs)
    except Exception:
        ioctx.close()
        raise


def _snapshot_state(img: Image, snapshot: str) -> tuple[bool, bool]:
    names = {s["name"] for s in img.list_snaps()}
    if snapshot not in names:
        return False, False
    return True, bool(img.is_protected_snap(snapshot))


def _ensure_protected(cluster: Rados, pool: str, image: str, snapshot: str,
                      repair: bool) -> SnapshotCheck:
    rados, rbd = modules()
    try:
        ioctx, img = _open(cluster, pool, image, read_only=True)
    except rados.ObjectNotFound:
        return SnapshotCheck("pool_missing")
    except rbd.ImageNotFound:
        return SnapshotCheck("rbd_image_missing")
    except (rados.PermissionError, rbd.PermissionError):
        return SnapshotCheck("permission_denied_read")
    try:
        with img:
            exists, protected = _snapshot_state(img, snapshot)
    finally:
        ioctx.close()
    if exists and protected:
        return SnapshotCheck()
    if not repair:
        return SnapshotCheck("snapshot_missing" if not exists else "snapshot_unprotected")

    actions: list[str] = []
    try:
        ioctx, img = _open(cluster, pool, image)
        try:
            with img:
                if not exists:
                    try:
                        img.create_snap(snapshot)
                        actions.append("created_snapshot")
                    except rbd.ImageExists:
                        pass  # another daemon was quicker
                try:
                    img.protect_snap(snapshot)
                    actions.append("protected_snapshot")
                except (rbd.InvalidArgument, rbd.ImageBusy):
                    # Already protected (by a peer, or a race with Glance).
                    if not img.is_protected_snap(snapshot):
                        raise
        finally:
            ioctx.close()
    except (rados.PermissionError, rbd.PermissionError):
        return SnapshotCheck("permission_denied_write", tuple(actions))
    except rbd.ImageNotFound:
        return SnapshotCheck("rbd_image_missing", tuple(actions))
    return SnapshotCheck(None, tuple(actions))


def _check_readable(cluster: Rados, pool: str, image: str, snapshot: str) -> str | None:
    rados, rbd = modules()
    try:
        ioctx, img = _open(cluster, pool, image, read_only=True)
    except rados.ObjectNotFound:
        return "pool_missing"
    except rbd.ImageNotFound:
        return "snapshot_not_readable"
    except (rados.PermissionError, rbd.PermissionError):
        return "cinder_user_cannot_read"
    try:
        with img:
            try:
                set_snapshot(img, snapshot)  # never opened at it: bindings.set_snapshot
            except rbd.ImageNotFound:
                return "snapshot_not_readable"
            except rbd.PermissionError:
                return "cinder_user_cannot_read"
            if not img.is_protected_snap(snapshot):
                return "snapshot_unprotected"
    finally:
        ioctx.close()
    return None


def _pool_full(cluster: Rados, pool: str) -> bool:
    ret, out, err = cluster.mon_command(  # type: ignore[attr-defined]
        json.dumps({"prefix": "osd dump", "format": "json"}), b"")
    if ret != 0:
        raise CephUnavailable(f"osd dump: {err or ret}")
    osdmap = json.loads(out)
    if "full" in str(osdmap.get("flags", "")).split(","):
        return True
    for item in osdmap.get("pools", []):
        if item.get("pool_name") == pool:
            flags = set(item.get("flags_names", "").split(","))
            return bool(flags & {"full", "full_quota"})
    return False
