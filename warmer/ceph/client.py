"""A connection to one Ceph cluster as one cephx user.

Every rados/rbd call blocks (and releases the GIL), so each runs on the
shared, bounded thread pool and never on the event loop. Every call is
bounded too: the connection is made with ``rados_osd_op_timeout`` and
``rados_mon_op_timeout``, without which a call to a sick cluster can block
forever. The connection is made lazily and rebuilt after it is shut down under us (for example when
the client is blocklisted), the way ceph-mgr's rbd_support rebuilds its
handlers.
"""

from __future__ import annotations

import asyncio
import concurrent.futures
import errno
import logging
import threading
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any, TypeVar

from warmer.ceph.bindings import Image, Rados, modules

LOG = logging.getLogger(__name__)
T = TypeVar("T")


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

    def _drop(self) -> None:
        with self._lock:
            cluster, self._cluster = self._cluster, None
        if cluster is not None:
            try:
                cluster.shutdown()
            except Exception:  # already dead; nothing more to release
                LOG.debug("shutdown of a broken rados connection failed", exc_info=True)

    def _call(self, fn: Callable[[Rados], T]) -> T:
        rados, _ = modules()
        try:
            cluster = self._connected()
        except (rados.Error, OSError) as exc:
            raise CephUnavailable(f"cannot connect as client.{self.config.user} "
                                  f"({self.config.conf_file}): {exc}") from exc
        try:
            return fn(cluster)
        except (rados.ConnectionShutdown, rados.TimedOut) as exc:
            self._drop()
            raise CephUnavailable(str(exc)) from exc
        except rados.Error as exc:
            if getattr(exc, "errno", None) in (errno.ESHUTDOWN, errno.ETIMEDOUT,
                                               errno.ENOTCONN):
                # Blocklisted or cut off: rebuild the connection next time.
                self._drop()
                raise CephUnavailable(str(exc)) from exc
            raise

    @property
    def executor(self) -> concurrent.futures.Executor:
        return self._executor

    def close(self) -> None:
        self._drop()

    # -- operations ---------------------------------------------------------

    async def connect(self) -> str:
        """Connect (if needed) and return the cluster's fsid."""
        return await self.run("connect", lambda c: c.get_fsid())

    async def probe(self) -> None:
        """Raise :class:`CephUnavailable` unless the cluster answers now."""
        await self.run("probe", lambda c: c.get_cluster_stats())

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
        ioctx, img = _open(cluster, pool, image, snapshot=snapshot, read_only=True)
    except rados.ObjectNotFound:
        return "pool_missing"
    except rbd.ImageNotFound:
        return "snapshot_not_readable"
    except (rados.PermissionError, rbd.PermissionError):
        return "cinder_user_cannot_read"
    try:
        with img:
            if not img.is_protected_snap(snapshot):
                return "snapshot_unprotected"
    finally:
        ioctx.close()
    return None
