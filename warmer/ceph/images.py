"""Blocking RBD steps of a copy, each run on the Ceph thread pool.

Everything warmer creates carries RBD image metadata (``warmer.*`` keys),
so that warmer only ever removes or changes images it made:

* ``warmer.owner`` = ``warmer``, set right after create, before any data;
* ``warmer.glance_image`` = the Glance image id;
* ``warmer.state`` = ``copying``, then ``complete`` once verified,
  snapshotted and protected (and only then is the image renamed to its
  final name ``<image_id>``);
* ``warmer.verified`` = ``<algo>:<digest>`` that the data matched.

A copy holds an exclusive RADOS lock with a lease on a per-image lock
object in the target pool, so two daemons never copy the same image into
the same target at once; a crashed daemon's lease runs out.
"""

from __future__ import annotations

import errno
import re
from dataclasses import dataclass
from typing import Any

from warmer.ceph.bindings import Rados, modules

OWNER_KEY = "warmer.owner"
OWNER = "warmer"
GLANCE_IMAGE_KEY = "warmer.glance_image"
STATE_KEY = "warmer.state"
VERIFIED_KEY = "warmer.verified"
TEMP_PREFIX = "warmer-tmp."
LOCK_PREFIX = "warmer.lock."
LOCK_NAME = "warmer-copy"
HOLDER_XATTR = "warmer.holder"
SNAPSHOT = "snap"


@dataclass(frozen=True)
class Owned:
    """What the metadata of an RBD image says about warmer's ownership."""

    name: str
    owned: bool
    glance_image: str | None = None
    state: str | None = None
    protected: bool = False
    size: int = 0


def temp_name(image_id: str) -> str:
    return f"{TEMP_PREFIX}{image_id}"


class OpenImage:
    """An open ioctx + image pair; closed together."""

    def __init__(self, cluster: Rados, pool: str, name: str, **kwargs: Any) -> None:
        _, rbd = modules()
        self.ioctx: Any = cluster.open_ioctx(pool)
        try:
            self.image: Any = rbd.Image(self.ioctx, name, **kwargs)
        except Exception:
            self.ioctx.close()
            raise

    def close_image(self) -> None:
        if self.image is not None:
            image, self.image = self.image, None
            image.close()

    def close(self) -> None:
        try:
            self.close_image()
        finally:
            if self.ioctx is not None:
                ioctx, self.ioctx = self.ioctx, None
                ioctx.close()


def inspect(cluster: Rados, pool: str, name: str) -> Owned | None:
    """``None`` when there is no such image; else who owns it and its state."""
    _, rbd = modules()
    try:
        handle = OpenImage(cluster, pool, name, read_only=True)
    except rbd.ImageNotFound:
        return None
    try:
        meta = dict(handle.image.metadata_list())
        size = int(handle.image.size())
        protected = False
        if SNAPSHOT in {s["name"] for s in handle.image.list_snaps()}:
            protected = bool(handle.image.is_protected_snap(SNAPSHOT))
    finally:
        handle.close()
    return Owned(name, meta.get(OWNER_KEY) == OWNER, meta.get(GLANCE_IMAGE_KEY),
                 meta.get(STATE_KEY), protected, size)


def create_temp(cluster: Rados, pool: str, image_id: str, size: int, source: str) -> OpenImage:
    """Create (or re-create, after a crash) the temporary image, mark it
    ours before any data goes in, and return it open for writing."""
    _, rbd = modules()
    name = temp_name(image_id)
    existing = inspect(cluster, pool, name)
    if existing is not None:
        if not existing.owned:
            raise PermissionError(f"{pool}/{name} exists and is not warmer's")
        if not remove_temp(cluster, pool, image_id):
            raise rbd.ImageBusy(f"{pool}/{name} is still in use")
    with cluster.open_ioctx(pool) as ioctx:  # type: ignore[attr-defined]
        rbd.RBD().create(ioctx, name, size, old_format=False)
    handle = OpenImage(cluster, pool, name)
    img = handle.image
    img.metadata_set(OWNER_KEY, OWNER)
    img.metadata_set(GLANCE_IMAGE_KEY, image_id)
    img.metadata_set(STATE_KEY, "copying")
    img.metadata_set("warmer.source", source[:512])
    return handle


def finish(handle: OpenImage, pool: str, image_id: str, verified: str) -> str:
    """Snapshot, protect, mark complete, rename to ``image_id``. In that
    order: the final name only ever holds a complete, protected copy."""
    _, rbd = modules()
    img = handle.image
    img.metadata_set(VERIFIED_KEY, verified)
    img.create_snap(SNAPSHOT)
    img.protect_snap(SNAPSHOT)
    img.metadata_set(STATE_KEY, "complete")
    handle.close_image()
    try:
        rbd.RBD().rename(handle.ioctx, temp_name(image_id), image_id)
    finally:
        handle.close()
    return image_id


def remove_temp(cluster: Rados, pool: str, image_id: str) -> bool:
    """Remove the temporary image of ``image_id`` if it is warmer's."""
    _, rbd = modules()
    name = temp_name(image_id)
    owned = inspect(cluster, pool, name)
    if owned is None or not owned.owned:
        return False
    # A killed writer still owns the image's exclusive lock, and removing
    # the image would wait out its watch (30 s by default). The caller holds
    # the copy lease, so that writer is dead: break its lock (librbd
    # blocklists it) and remove at once.
    handle = OpenImage(cluster, pool, name)
    try:
        for owner in list(handle.image.lock_get_owners()):
            handle.image.lock_break(owner["mode"], owner["owner"])
    finally:
        handle.close()
    with cluster.open_ioctx(pool) as ioctx:  # type: ignore[attr-defined]
        try:
            rbd.RBD().remove(ioctx, name)
        except rbd.ImageBusy:
            return False  # still watched; the next clean-up tries again
    return True


_CANDIDATE = re.compile(r"^(warmer-tmp\.)?[0-9a-fA-F-]{36}$")


def list_owned(cluster: Rados, pool: str, *, temporary_only: bool = False) -> list[Owned]:
    """Every image in ``pool`` that warmer made. Only names warmer could have
    given (``<uuid>``, ``warmer-tmp.<uuid>``) are opened, so Cinder's own
    ``volume-*`` images are never even inspected."""
    _, rbd = modules()
    with cluster.open_ioctx(pool) as ioctx:  # type: ignore[attr-defined]
        names = rbd.RBD().list(ioctx)
    result = []
    for name in names:
        if not _CANDIDATE.match(name):
            continue
        if temporary_only and not name.startswith(TEMP_PREFIX):
            continue
        try:
            info = inspect(cluster, pool, name)
        except rbd.ImageNotFound:
            continue
        if info is not None and info.owned:
            result.append(info)
    return result


def children(cluster: Rados, pool: str, name: str) -> list[str]:
    """Clones of ``name@snap`` (``pool/image``). Raises when warmer cannot
    see every pool that could hold one: unknown means "has children"."""
    handle = OpenImage(cluster, pool, name, snapshot=SNAPSHOT, read_only=True)
    try:
        return [f"{c['pool']}/{c['image']}" for c in handle.image.list_children2()]
    finally:
        handle.close()


def remove_owned(cluster: Rados, pool: str, name: str) -> str:
    """Unprotect and remove a copy warmer made, unless it has children.
    Returns ``removed``, ``has_children``, ``gone`` or ``not_owned``."""
    _, rbd = modules()
    info = inspect(cluster, pool, name)
    if info is None:
        return "gone"
    if not info.owned:
        return "not_owned"
    if info.protected:
        if children(cluster, pool, name):
            return "has_children"
        handle = OpenImage(cluster, pool, name)
        try:
            try:
                handle.image.unprotect_snap(SNAPSHOT)
            except rbd.ImageBusy:
                return "has_children"  # a clone appeared since we looked
        finally:
            handle.close()
    with cluster.open_ioctx(pool) as ioctx:  # type: ignore[attr-defined]
        try:
            rbd.RBD().remove(ioctx, name)
        except rbd.ImageHasSnapshots:
            handle = OpenImage(cluster, pool, name)
            try:
                handle.image.remove_snap(SNAPSHOT)
            finally:
                handle.close()
            rbd.RBD().remove(ioctx, name)
        except rbd.ImageNotFound:
            return "gone"
    return "removed"


def lock(cluster: Rados, pool: str, image_id: str, cookie: str, duration: int) -> bool:
    """Take (or renew) the copy lease for ``image_id`` in ``pool``.

    RADOS locks belong to a client instance, so a daemon that restarted (or
    reconnected) cannot renew the lease its previous connection took. The
    holder's name (``cookie``, one per daemon) is kept in an xattr of the
    lock object: a lease held under our own name is our previous life's,
    and we break it at once instead of waiting for it to run out.
    """
    rados, _ = modules()
    obj = f"{LOCK_PREFIX}{image_id}"
    with cluster.open_ioctx(pool) as ioctx:  # type: ignore[attr-defined]
        if not _try_lock(ioctx, obj, cookie, duration):
            try:
                holder = ioctx.get_xattr(obj, HOLDER_XATTR).decode()
            except (rados.ObjectNotFound, rados.NoData):
                holder = None
            if holder != cookie:
                return False
            ioctx.remove_object(obj)  # drops the stale lock with it
            if not _try_lock(ioctx, obj, cookie, duration):
                return False
        ioctx.set_xattr(obj, HOLDER_XATTR, cookie.encode())
    return True


def _try_lock(ioctx: Any, obj: str, cookie: str, duration: int) -> bool:
    rados, _ = modules()
    try:
        ioctx.lock_exclusive(obj, LOCK_NAME, cookie, desc="warmer copy", duration=duration,
                             flags=1)  # LIBRADOS_LOCK_FLAG_MAY_RENEW
    except (rados.ObjectBusy, rados.ObjectExists):
        return False
    except OSError as exc:
        if exc.errno in (errno.EBUSY, errno.EEXIST):
            return False
        raise
    return True


def unlock(cluster: Rados, pool: str, image_id: str, cookie: str) -> None:
    rados, _ = modules()
    with cluster.open_ioctx(pool) as ioctx:  # type: ignore[attr-defined]
        try:
            ioctx.unlock(f"{LOCK_PREFIX}{image_id}", LOCK_NAME, cookie)
        except rados.ObjectNotFound:
            pass
