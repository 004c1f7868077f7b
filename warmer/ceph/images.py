"""Blocking RBD steps of a copy and of its removal, each run on the Ceph
thread pool. Ownership is decided by :mod:`warmer.ceph.ownership`, and
nothing here removes, unprotects or breaks a lock on an image that fails
that check.

A copy, in order (a crash at any step leaves something clean-up handles):

1. the registry entry ``copying`` (before any image exists);
2. ``warmer-tmp.<id>``, stamped as warmer's before any data goes in;
3. data, verified by the caller;
4. ``warmer.verified`` (how the data was checked:
   :attr:`~warmer.warming.copy.Verifier.stamp`), snapshot ``snap``,
   protect, ``warmer.state=complete``;
5. rename to ``<id>``: the final name only ever holds a complete, protected
   copy;
6. the registry entry ``complete``.

A copy holds an exclusive RADOS lock with a lease on a per-image lock
object (``warmer.lock.<id>``) in the copy pool, so two daemons never copy
the same image into the same pool at once; a crashed daemon's lease runs
out. The lock object goes when the copy goes.
"""

from __future__ import annotations

import errno
from typing import Any

from warmer.ceph import ownership
from warmer.ceph.bindings import Rados, modules, set_snapshot
from warmer.ceph.ownership import SNAPSHOT, TEMP_PREFIX, Entry, Inspection, temp_name

VERIFIED_KEY = "warmer.verified"
LOCK_PREFIX = "warmer.lock."
# One per Glance image, in one pool for all targets: location changes.
LOCATIONS_PREFIX = "warmer.locations."
LOCK_NAME = "warmer-copy"
HOLDER_XATTR = "warmer.holder"

__all__ = ["SNAPSHOT", "TEMP_PREFIX", "Inspection", "temp_name"]


class NotOwned(Exception):
    """warmer was about to change an image that is not provably its own."""


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


class OpenSnapshot(OpenImage):
    """A snapshot open read-only, pinned by its id: ``snap_id`` is the
    snapshot the reads come from, even if a snapshot of the same name
    replaces it meanwhile (reads of a removed snapshot fail; they never
    come from its successor). ``rbd_id`` is the image's own RBD id."""

    def __init__(self, cluster: Rados, pool: str, name: str, snapshot: str) -> None:
        # Opened at the head, then set: never at the snapshot (bindings.set_snapshot).
        super().__init__(cluster, pool, name, read_only=True)
        try:
            self.snap_id = set_snapshot(self.image, snapshot)
            self.rbd_id = str(self.image.id())
        except BaseException:
            self.close()
            raise


inspect = ownership.inspect


def create_temp(cluster: Rados, pool: str, image_id: str, size: int, source: str,
                holder: str) -> OpenImage:
    """Register the copy, create (or re-create, after a crash) the temporary
    image, stamp it as warmer's before any data goes in, and return it open
    for writing. The caller holds the copy lease.

    The image returned is always freshly created, so all zeroes, as
    :func:`warmer.warming.copy.copy_into` requires (it writes no zeroes): a
    leftover is removed first, and ``RBD.create`` raises ``ImageExists``
    rather than open an image made meanwhile. Never reuse an image here."""
    _, rbd = modules()
    name = temp_name(image_id)
    ownership.register(cluster, pool, Entry(image_id, "copying", holder, ownership.now()))
    existing = inspect(cluster, pool, name)
    if existing is not None:
        if not existing.owned:
            raise NotOwned(f"{pool}/{name} exists and is not warmer's ({existing.why_not})")
        if not _remove_temp(cluster, pool, existing):
            raise rbd.ImageBusy(f"{pool}/{name} is still in use")
    with cluster.open_ioctx(pool) as ioctx:  # type: ignore[attr-defined]
        rbd.RBD().create(ioctx, name, size, old_format=False)
    handle = OpenImage(cluster, pool, name)
    ownership.stamp(handle.image, image_id, source)
    return handle


def finish(cluster: Rados, handle: OpenImage, pool: str, image_id: str, holder: str,
           verified: str) -> str:
    """Snapshot, protect, mark complete, rename to ``image_id``, and record
    it complete. In that order: the final name only ever holds a complete,
    protected copy."""
    _, rbd = modules()
    img = handle.image
    img.metadata_set(VERIFIED_KEY, verified)
    img.create_snap(SNAPSHOT)
    img.protect_snap(SNAPSHOT)
    img.metadata_set(ownership.STATE_KEY, "complete")
    handle.close_image()
    try:
        rbd.RBD().rename(handle.ioctx, temp_name(image_id), image_id)
    finally:
        handle.close()
    ownership.register(cluster, pool, Entry(image_id, "complete", holder, ownership.now()))
    return image_id


def remove_temp(cluster: Rados, pool: str, image_id: str) -> bool:
    """Remove the temporary image of ``image_id`` if it is warmer's. The
    caller holds the copy lease. False when there is nothing of warmer's to
    remove, or it is still in use."""
    found = inspect(cluster, pool, temp_name(image_id))
    if found is None or not found.owned:
        return False
    return _remove_temp(cluster, pool, found)


def _remove_temp(cluster: Rados, pool: str, temp: Inspection) -> bool:
    _, rbd = modules()
    if not temp.owned:  # the one check; callers passed it, this keeps it so
        raise NotOwned(f"{pool}/{temp.name}: {temp.why_not}")
    # A killed writer still owns the image's exclusive lock, and removing
    # the image would wait out its watch (30 s by default). The caller holds
    # the copy lease, so that writer is dead or lost its lease: break its
    # lock (librbd blocklists that client instance only) and remove at once.
    # Unless the owner is this very connection (a copy of ours still closing
    # the image): librbd refuses to blocklist itself (EINVAL), which would
    # stop a clean-up's pass over its other entries. The copy closes it, and
    # the next clean-up removes it.
    handle = OpenImage(cluster, pool, temp.name)
    try:
        owners = list(handle.image.lock_get_owners())
        me = str(cluster.get_addrs())
        if any(owner["owner"] == me for owner in owners):
            return False
        for owner in owners:
            handle.image.lock_break(owner["mode"], owner["owner"])
        # A crash after the snapshot: take it away too, children first
        # (under clone v2 an unprotected snapshot can have clones as well).
        for snap in [s["name"] for s in handle.image.list_snaps()]:
            if children(cluster, pool, temp.name, snap):
                return False
            if handle.image.is_protected_snap(snap):
                handle.image.unprotect_snap(snap)
            handle.image.remove_snap(snap)
    finally:
        handle.close()
    with cluster.open_ioctx(pool) as ioctx:  # type: ignore[attr-defined]
        try:
            rbd.RBD().remove(ioctx, temp.name)
        except rbd.ImageNotFound:
            pass
        except rbd.ImageBusy:
            return False  # still watched; the next clean-up tries again
    return True


def inventory(cluster: Rados, pool: str) -> list[Inspection]:
    """warmer's complete copies in ``pool``, from its registry (never by
    listing the pool: it is Glance's, with every image in it)."""
    found = []
    for entry in ownership.entries(cluster, pool):
        item = inspect(cluster, pool, entry.image_id)
        if item is not None and item.owned and item.state == "complete":
            found.append(item)
    return found


def registered(cluster: Rados, pool: str) -> list[Entry]:
    return ownership.entries(cluster, pool)


def known(cluster: Rados, pool: str, image_id: str) -> bool:
    """Whether ``pool`` holds anything of ``image_id`` that warmer may have
    to clean: a registry entry, or an image under either of its names."""
    return (ownership.registered(cluster, pool, image_id) is not None
            or inspect(cluster, pool, image_id) is not None
            or inspect(cluster, pool, temp_name(image_id)) is not None)


def children(cluster: Rados, pool: str, name: str, snapshot: str = SNAPSHOT) -> list[str]:
    """Clones of ``name@snapshot`` (``pool/image``). Raises when warmer
    cannot see every pool that could hold one: unknown means "has children"."""
    handle = OpenSnapshot(cluster, pool, name, snapshot)
    try:
        return [f"{c['pool']}/{c['image']}" for c in handle.image.list_children2()]
    finally:
        handle.close()


def remove_owned(cluster: Rados, pool: str, image_id: str) -> str:
    """Unprotect and remove warmer's copy of ``image_id``, unless it has
    children; then forget it. The caller holds the copy lease. Returns
    ``removed``, ``has_children``, ``gone`` or ``not_owned``."""
    _, rbd = modules()
    info = inspect(cluster, pool, image_id)
    if info is None:
        release(cluster, pool, image_id)
        return "gone"
    if not info.owned:
        return "not_owned"
    if info.protected:
        if children(cluster, pool, image_id):
            return "has_children"
        handle = OpenImage(cluster, pool, image_id)
        try:
            try:
                handle.image.unprotect_snap(SNAPSHOT)
            except rbd.ImageBusy:
                return "has_children"  # a clone appeared since we looked
        finally:
            handle.close()
    with cluster.open_ioctx(pool) as ioctx:  # type: ignore[attr-defined]
        try:
            rbd.RBD().remove(ioctx, image_id)
        except rbd.ImageHasSnapshots:
            # Unprotected (clone v2 needs no protection): children still win.
            if children(cluster, pool, image_id):
                return "has_children"
            handle = OpenImage(cluster, pool, image_id)
            try:
                handle.image.remove_snap(SNAPSHOT)
            finally:
                handle.close()
            rbd.RBD().remove(ioctx, image_id)
        except rbd.ImageNotFound:
            pass
    release(cluster, pool, image_id)
    return "removed"


def release(cluster: Rados, pool: str, image_id: str) -> bool:
    """Forget ``image_id`` in ``pool`` (registry entry and lock object) once
    nothing of warmer's is left under either of its names. The caller holds
    the copy lease. Returns whether it forgot."""
    for name in (temp_name(image_id), image_id):
        found = inspect(cluster, pool, name)
        if found is not None and found.owned:
            return False  # warmer's copy (or a half-made one) is still there
    ownership.unregister(cluster, pool, image_id)
    rados, _ = modules()
    with cluster.open_ioctx(pool) as ioctx:  # type: ignore[attr-defined]
        try:
            ioctx.remove_object(f"{LOCK_PREFIX}{image_id}")
        except rados.ObjectNotFound:
            pass
    return True


def lock(cluster: Rados, pool: str, image_id: str, cookie: str, duration: int,
         prefix: str = LOCK_PREFIX) -> bool:
    """Take (or renew) the copy lease for ``image_id`` in ``pool``: the
    lease of :func:`lease` on ``<prefix><image_id>``."""
    with cluster.open_ioctx(pool) as ioctx:  # type: ignore[attr-defined]
        return lease(ioctx, f"{prefix}{image_id}", cookie, duration)


def lease(ioctx: Any, obj: str, cookie: str, duration: int, desc: str = "warmer copy") -> bool:
    """Take (or renew) an exclusive RADOS lock with a lease of ``duration``
    seconds on ``obj``, through ``ioctx`` (its pool and namespace).

    RADOS locks belong to a client instance: a daemon that restarted (or
    reconnected) cannot renew the lease its previous connection took, and
    waits until it runs out (at most ``duration``). It never breaks one,
    not even under its own name (``cookie``): another live process may be
    using that name (a second daemon started by hand, or a misconfigured
    controller), and two holders would be two writers of one copy, or two
    leaders. The holder's name is kept in an xattr of the lock object, for
    whoever wants to know who holds it.
    """
    if not _try_lock(ioctx, obj, cookie, duration, desc):
        return False
    ioctx.set_xattr(obj, HOLDER_XATTR, cookie.encode())
    return True


def _try_lock(ioctx: Any, obj: str, cookie: str, duration: int, desc: str) -> bool:
    rados, _ = modules()
    try:
        ioctx.lock_exclusive(obj, LOCK_NAME, cookie, desc=desc, duration=duration,
                             flags=1)  # LIBRADOS_LOCK_FLAG_MAY_RENEW
    except (rados.ObjectBusy, rados.ObjectExists):
        return False
    except OSError as exc:
        if exc.errno in (errno.EBUSY, errno.EEXIST):
            return False
        raise
    return True


def unlock(cluster: Rados, pool: str, image_id: str, cookie: str,
           prefix: str = LOCK_PREFIX) -> None:
    with cluster.open_ioctx(pool) as ioctx:  # type: ignore[attr-defined]
        release_lease(ioctx, f"{prefix}{image_id}", cookie)


def release_lease(ioctx: Any, obj: str, cookie: str) -> None:
    """Give up our lease on ``obj`` (nothing if it is not ours any more)."""
    rados, _ = modules()
    try:
        ioctx.unlock(obj, LOCK_NAME, cookie)
    except rados.ObjectNotFound:
        pass


def drop_lock(cluster: Rados, pool: str, image_id: str, prefix: str) -> None:
    """Remove a lock object we hold, and with it our lock (a waiter then
    makes a new one): lock objects do not pile up in the pool."""
    rados, _ = modules()
    with cluster.open_ioctx(pool) as ioctx:  # type: ignore[attr-defined]
        try:
            ioctx.remove_object(f"{prefix}{image_id}")
        except rados.ObjectNotFound:
            pass
