"""What warmer owns in a copy pool, and the one check that proves it.

librbd copies image metadata onto every clone and keeps it after a flatten
(DESIGN.md §5), so a ``warmer.*`` key alone proves nothing: a Cinder volume
cloned from warmer's copy carries the same keys. An RBD image is warmer's
only when **all** of these hold:

* its name is ``<uuid>`` or ``warmer-tmp.<uuid>`` (a canonical UUID);
* that uuid is in the pool's registry (the omap of the RADOS object
  ``warmer.registry``), which warmer writes *before* it creates the
  temporary image and clears only *after* the image is gone;
* its metadata names that same uuid (``warmer.glance_image``) and warmer
  as the owner;
* it has no parent (a clone, flattened or not, is never warmer's copy;
  flattened clones are caught by the name and the registry).

One exception, for the instants between creating ``warmer-tmp.<uuid>`` and
the end of stamping its metadata (a kill -9 there): a registered temporary
image with no parent, no snapshot, no data, and no metadata but warmer's own
keys with warmer's own values (some may be missing) is warmer's too.
Removing it cannot lose anything, and without it such a leftover would block
that image's copy until an operator came.

Removal, eviction, clean-up and lock breaking all go through
:func:`inspect`. Every function here blocks: run it on the Ceph thread pool.

Registry values are JSON (``{"state": "copying"|"complete", "holder": ...,
"since": <unix time>}``), as ceph-mgr's rbd_support keeps its tasks. A
crash between a registry write and the image create leaves an entry with no
image, which reconciliation clears under the copy lease.
"""

from __future__ import annotations

import json
import time
from collections.abc import Iterator
from dataclasses import dataclass
from typing import Any

from warmer.ceph.bindings import Rados, modules
from warmer.ids import is_canonical_image_id

REGISTRY_OBJECT = "warmer.registry"
TEMP_PREFIX = "warmer-tmp."
OWNER_KEY = "warmer.owner"
OWNER = "warmer"
GLANCE_IMAGE_KEY = "warmer.glance_image"
STATE_KEY = "warmer.state"
SOURCE_KEY = "warmer.source"
SNAPSHOT = "snap"
_PAGE = 1000


@dataclass(frozen=True)
class Entry:
    """One registry entry: warmer has (or is making) a copy of ``image_id``."""

    image_id: str
    state: str  # copying, complete
    holder: str = ""
    since: float = 0.0

    def to_json(self) -> bytes:
        return json.dumps({"state": self.state, "holder": self.holder,
                           "since": self.since}).encode()

    @classmethod
    def from_json(cls, image_id: str, raw: bytes) -> Entry:
        try:
            value = json.loads(raw)
            return cls(image_id, str(value["state"]), str(value.get("holder", "")),
                       float(value.get("since", 0.0)))
        except (ValueError, KeyError, TypeError):
            # Unreadable, but present: still warmer's, state unknown.
            return cls(image_id, "unknown")


@dataclass(frozen=True)
class Inspection:
    """What an RBD image in a copy pool is, as far as warmer's ownership goes."""

    name: str
    image_id: str | None
    owned: bool
    why_not: str | None  # bad_name, not_registered, metadata_mismatch, has_parent
    state: str | None = None
    protected: bool = False
    size: int = 0

    @property
    def temporary(self) -> bool:
        return self.name.startswith(TEMP_PREFIX)


def temp_name(image_id: str) -> str:
    return f"{TEMP_PREFIX}{image_id}"


def image_id_of(name: str) -> str | None:
    """The Glance image id an RBD name of warmer's form stands for, or None."""
    candidate = name[len(TEMP_PREFIX):] if name.startswith(TEMP_PREFIX) else name
    return candidate if is_canonical_image_id(candidate) else None


# -- the registry ----------------------------------------------------------------

def register(cluster: Rados, pool: str, entry: Entry) -> None:
    rados, _ = modules()
    with cluster.open_ioctx(pool) as ioctx:  # type: ignore[attr-defined]
        with rados.WriteOpCtx() as op:
            ioctx.set_omap(op, (entry.image_id,), (entry.to_json(),))
            ioctx.operate_write_op(op, REGISTRY_OBJECT)


def unregister(cluster: Rados, pool: str, image_id: str) -> None:
    rados, _ = modules()
    with cluster.open_ioctx(pool) as ioctx:  # type: ignore[attr-defined]
        with rados.WriteOpCtx() as op:
            ioctx.remove_omap_keys(op, (image_id,))
            try:
                ioctx.operate_write_op(op, REGISTRY_OBJECT)
            except rados.ObjectNotFound:
                pass


def registered(cluster: Rados, pool: str, image_id: str) -> Entry | None:
    with cluster.open_ioctx(pool) as ioctx:  # type: ignore[attr-defined]
        return _registered(ioctx, image_id)


def _registered(ioctx: Any, image_id: str) -> Entry | None:
    rados, _ = modules()
    with rados.ReadOpCtx() as op:
        values, _ = ioctx.get_omap_vals_by_keys(op, (image_id,))
        try:
            ioctx.operate_read_op(op, REGISTRY_OBJECT)
        except rados.ObjectNotFound:
            return None
        found = dict(values)
    raw = found.get(image_id)
    return None if raw is None else Entry.from_json(image_id, raw)


def entries(cluster: Rados, pool: str) -> list[Entry]:
    """Every registry entry of ``pool``, read in pages."""
    with cluster.open_ioctx(pool) as ioctx:  # type: ignore[attr-defined]
        return list(_pages(ioctx))


def _pages(ioctx: Any) -> Iterator[Entry]:
    rados, _ = modules()
    after = ""
    while True:
        with rados.ReadOpCtx() as op:
            values, _ = ioctx.get_omap_vals(op, after, "", _PAGE)
            try:
                ioctx.operate_read_op(op, REGISTRY_OBJECT)
            except rados.ObjectNotFound:
                return
            page = list(values)
        for key, raw in page:
            if is_canonical_image_id(key):
                yield Entry.from_json(key, raw)
        if len(page) < _PAGE:
            return
        after = page[-1][0]


# -- the check -------------------------------------------------------------------

def inspect(cluster: Rados, pool: str, name: str) -> Inspection | None:
    """``None`` when ``pool/name`` does not exist; else whether it is
    warmer's (all four conditions above), with its state."""
    _, rbd = modules()
    image_id = image_id_of(name)
    with cluster.open_ioctx(pool) as ioctx:  # type: ignore[attr-defined]
        try:
            image = rbd.Image(ioctx, name, read_only=True)
        except rbd.ImageNotFound:
            return None
        with image:
            meta = dict(image.metadata_list())
            size = int(image.size())
            snaps = {s["name"] for s in image.list_snaps()}
            protected = SNAPSHOT in snaps and bool(image.is_protected_snap(SNAPSHOT))
            has_parent = _has_parent(image)
            stamped = image_id is not None and meta.get(OWNER_KEY) == OWNER and \
                meta.get(GLANCE_IMAGE_KEY) == image_id
            # Reading extents can be slow on a big image: only for a temp
            # whose stamp is incomplete (the crash window), never otherwise.
            unstamped = (not stamped and image_id is not None
                         and name.startswith(TEMP_PREFIX)
                         and _partial_stamp(meta, image_id) and not snaps
                         and not has_parent and not _has_data(image, size))
        why_not: str | None = None
        state = meta.get(STATE_KEY)
        if image_id is None:
            why_not = "bad_name"
        elif has_parent:
            why_not = "has_parent"
        elif unstamped:
            state = "unstamped"
        elif meta.get(OWNER_KEY) != OWNER or meta.get(GLANCE_IMAGE_KEY) != image_id:
            why_not = "metadata_mismatch"
        if why_not is None and image_id is not None and _registered(ioctx, image_id) is None:
            why_not = "not_registered"
    return Inspection(name, image_id, why_not is None, why_not, state, protected, size)


def _partial_stamp(meta: dict[str, str], image_id: str) -> bool:
    """Only what :func:`stamp` writes, with the values it writes, if any."""
    mine = {OWNER_KEY: OWNER, GLANCE_IMAGE_KEY: image_id}
    return all(mine.get(k, v) == v for k, v in meta.items()
               if k not in (STATE_KEY, SOURCE_KEY)) and \
        set(meta) <= {OWNER_KEY, GLANCE_IMAGE_KEY, STATE_KEY, SOURCE_KEY} and \
        meta.get(STATE_KEY, "copying") == "copying"


def _has_data(image: Any, size: int) -> bool:
    found: list[bool] = []

    def extent(offset: int, length: int, exists: bool) -> int:
        if exists:
            found.append(True)
            return -1  # stop at the first allocated extent
        return 0
    try:
        image.diff_iterate(0, size, None, extent)
    except Exception:
        if found:  # stopping early surfaces as an error from librbd
            return True
        raise
    return bool(found)


def _has_parent(image: Any) -> bool:
    _, rbd = modules()
    try:
        image.parent_info()
    except rbd.ImageNotFound:
        return False
    return True


def stamp(image: Any, image_id: str, source: str) -> None:
    """Mark a freshly created image as warmer's copy of ``image_id``."""
    image.metadata_set(OWNER_KEY, OWNER)
    image.metadata_set(GLANCE_IMAGE_KEY, image_id)
    image.metadata_set(STATE_KEY, "copying")
    image.metadata_set(SOURCE_KEY, source[:512])


def now() -> float:
    return time.time()
