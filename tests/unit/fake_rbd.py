"""In-memory stand-ins for the ``rados`` and ``rbd`` modules, behind the same
calls warmer makes, for unit tests of the code that drives them
(:mod:`warmer.ceph.images`, :mod:`warmer.ceph.ownership`, Target).

What it models, because warmer's safety depends on it:

* librbd copies image metadata onto a clone, and a flatten keeps it;
* a protected snapshot with clones cannot be unprotected (``ImageBusy``);
  an image with snapshots cannot be removed (``ImageHasSnapshots``);
* RADOS exclusive locks belong to one client instance and expire;
* omap reads and writes through Read/WriteOpCtx, xattrs;
* RADOS namespaces (``Ioctx.set_namespace``): the default namespace's
  objects are ``cluster.objects[pool]``, the others' are
  ``cluster.ns_objects[(pool, namespace)]``;
* snapshot ids, never reused (a snapshot re-created under the same name
  gets a new one), ``set_snap_by_id`` (reads of a removed snapshot fail),
  and each image's own RBD id (``Image.id()``);
* ``WriteOpCtx.omap_cmp`` (an unmet comparison fails the whole op with
  ECANCELED, as the OSD does; a missing key compares as empty, a missing
  object fails with ObjectNotFound) and ``WriteOpCtx.new``;
* a closed ``Image``: every call on it raises ``InvalidArgument("image is
  closed")``, as python-rbd's ``requires_not_closed`` does. Closing one
  while a call on it still runs on another thread (a write, a read) frees
  what that call uses in real librbd, which then crashes or corrupts
  memory; here the close is recorded in :data:`closed_under_calls`, which
  every unit test asserts empty when it ends (tests/unit/conftest.py).

Change omap only through write ops: pages are served from a sorted key list
that a write op invalidates.

It also records every call (``cluster.log``) so a test can assert what was
never attempted, and can fail any named call (``cluster.fail[op] = exc``).
"""

from __future__ import annotations

import bisect
import collections
import errno
import functools
import itertools
import threading
import time
import traceback
import types
import uuid
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any, TypeVar

# -- exceptions, as the real modules name them -----------------------------------


class RadosError(Exception):
    def __init__(self, message: str = "", errno_: int | None = None) -> None:
        super().__init__(message)
        self.errno = errno_


class ObjectNotFound(RadosError):
    pass


class NoData(RadosError):
    pass


class ObjectBusy(RadosError):
    pass


class ObjectExists(RadosError):
    pass


class RadosPermissionError(RadosError):
    pass


class ConnectionShutdown(RadosError):
    pass


class TimedOut(RadosError):
    pass


class RbdError(Exception):
    def __init__(self, message: str = "", errno_: int | None = None) -> None:
        super().__init__(message)
        self.errno = errno_


class ImageNotFound(RbdError):
    pass


class ImageExists(RbdError):
    pass


class ImageBusy(RbdError):
    pass


class ImageHasSnapshots(RbdError):
    pass


class InvalidArgument(RbdError):
    pass


class RbdPermissionError(RbdError):
    pass


class RbdConnectionShutdown(RbdError):
    pass


class RbdTimeout(RbdError):
    pass


# -- the cluster ---------------------------------------------------------------------


_snap_ids = itertools.count(4)


@dataclass
class Snap:
    data: dict[int, bytes]
    protected: bool = False
    id: int = field(default_factory=lambda: next(_snap_ids))


@dataclass
class FakeImage:
    size: int
    data: dict[int, bytes] = field(default_factory=dict)  # offset -> bytes
    meta: dict[str, str] = field(default_factory=dict)
    snaps: dict[str, Snap] = field(default_factory=dict)
    parent: tuple[str, str, str] | None = None
    lock_owners: list[str] = field(default_factory=list)
    rbd_id: str = field(default_factory=lambda: uuid.uuid4().hex[:12])


@dataclass
class FakeObject:
    omap: dict[str, bytes] = field(default_factory=dict)
    xattrs: dict[str, bytes] = field(default_factory=dict)
    lock: tuple[str, int, float] | None = None  # cookie, client id, expiry
    version: int = 0  # bumped by every write op
    _sorted: tuple[int, list[str]] | None = None

    def sorted_keys(self) -> list[str]:
        if self._sorted is None or self._sorted[0] != self.version:
            self._sorted = (self.version, sorted(self.omap))
        return self._sorted[1]


class FakeCluster:
    """One Ceph cluster. ``clusters[conffile]`` finds it from a Rados()."""

    registry: dict[str, FakeCluster] = {}

    def __init__(self, conffile: str, fsid: str, pools: tuple[str, ...] = ("images", "volumes")
                 ) -> None:
        self.conffile = conffile
        self.fsid = fsid
        self.images: dict[str, dict[str, FakeImage]] = {p: {} for p in pools}
        self.objects: dict[str, dict[str, FakeObject]] = {p: {} for p in pools}
        self.ns_objects: dict[tuple[str, str], dict[str, FakeObject]] = {}
        self.log: list[str] = []
        self.fail: dict[str, BaseException] = {}
        self.write_delay = 0.0
        self.crash_at: int | None = None
        self.full_pools: set[str] = set()
        self.dead = False
        self.clock: Callable[[], float] = time.monotonic
        FakeCluster.registry[conffile] = self

    def op(self, name: str) -> None:
        """Every call goes through here. ``crash_at = n``: the n-th call (from
        0) and every call after it fail, as if the client died at that
        instant (kill -9): the cluster keeps exactly what it had then."""
        if self.dead:
            raise ConnectionShutdown("the client is dead")
        if self.crash_at is not None and len(self.log) >= self.crash_at:
            self.dead = True
            raise ConnectionShutdown(f"killed before {name}")
        self.log.append(name)
        exc = self.fail.get(name)
        if exc is not None:
            raise exc

    # helpers for tests
    def put_image(self, pool: str, name: str, data: bytes, *, snapshot: str | None = "snap",
                  protect: bool = True, meta: dict[str, str] | None = None) -> FakeImage:
        img = FakeImage(len(data), meta=dict(meta or {}))
        for off in range(0, len(data), 1 << 20):
            piece = data[off:off + (1 << 20)]
            if piece.strip(b"\0"):
                img.data[off] = piece
        if snapshot:
            img.snaps[snapshot] = Snap(dict(img.data), protect)
        self.images[pool][name] = img
        return img

    def clone(self, src_pool: str, name: str, snap: str, dst_pool: str, clone: str) -> None:
        parent = self.images[src_pool][name]
        if not parent.snaps[snap].protected:
            raise InvalidArgument("parent snapshot must be protected (v1)")
        self.images[dst_pool][clone] = FakeImage(
            parent.size, dict(parent.snaps[snap].data), dict(parent.meta),
            parent=(src_pool, name, snap))

    def flatten(self, pool: str, name: str) -> None:
        self.images[pool][name].parent = None

    def children_of(self, pool: str, name: str, snap: str) -> list[tuple[str, str]]:
        return [(p, n) for p, imgs in self.images.items() for n, img in imgs.items()
                if img.parent == (pool, name, snap)]


_client_ids = itertools.count(1)


class Rados:
    def __init__(self, conffile: str = "", name: str = "", conf: dict[str, str] | None = None,
                 **_: Any) -> None:
        self.cluster = FakeCluster.registry[conffile]
        self.name = name
        self.id = next(_client_ids)
        self.connected = False

    def connect(self, timeout: int = 0) -> None:
        self.cluster.op("connect")
        self.connected = True

    def shutdown(self) -> None:
        self.connected = False

    def get_fsid(self) -> str:
        return self.cluster.fsid

    def get_addrs(self) -> str:
        """This client instance's address, as librbd names a lock owner."""
        return f"127.0.0.1:0/{self.id}"

    def get_cluster_stats(self) -> dict[str, int]:
        self.cluster.op("stats")
        return {"kb": 1}

    def conf_set(self, key: str, value: str) -> None:
        pass

    def mon_command(self, cmd: str, inbuf: bytes, timeout: int = 0) -> tuple[int, bytes, str]:
        import json
        self.cluster.op("mon_command")
        if json.loads(cmd).get("prefix") != "osd dump":
            return -errno.EINVAL, b"", "unsupported"
        pools = [{"pool_name": p, "flags_names": "hashpspool,full_quota"
                  if p in self.cluster.full_pools else "hashpspool"}
                 for p in self.cluster.images]
        return 0, json.dumps({"flags": "sortbitwise", "pools": pools}).encode(), ""

    def open_ioctx(self, pool: str) -> Ioctx:
        self.cluster.op("open_ioctx")
        if pool not in self.cluster.images:
            raise ObjectNotFound(f"pool {pool}")
        return Ioctx(self, pool)


class Ioctx:
    def __init__(self, client: Rados, pool: str) -> None:
        self.client = client
        self.cluster = client.cluster
        self.pool = pool
        self.namespace = ""

    def __enter__(self) -> Ioctx:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    def close(self) -> None:
        pass

    def set_namespace(self, nspace: str) -> None:
        self.namespace = nspace or ""

    def get_namespace(self) -> str:
        return self.namespace

    @property
    def _objects(self) -> dict[str, FakeObject]:
        if not self.namespace:
            return self.cluster.objects[self.pool]
        return self.cluster.ns_objects.setdefault((self.pool, self.namespace), {})

    # locks and xattrs
    def lock_exclusive(self, obj: str, name: str, cookie: str, desc: str = "",
                       duration: int | float | None = None, flags: int = 0) -> None:
        self.cluster.op("lock_exclusive")
        o = self._objects.setdefault(obj, FakeObject())
        now = self.cluster.clock()
        if o.lock is not None and o.lock[2] > now:
            held_cookie, held_client, _ = o.lock
            if not (held_cookie == cookie and held_client == self.client.id):
                raise ObjectBusy(f"{obj} is locked", errno.EBUSY)
        o.lock = (cookie, self.client.id, now + (duration or 1e9))

    def unlock(self, obj: str, name: str, cookie: str) -> None:
        o = self._objects.get(obj)
        if o is None:
            raise ObjectNotFound(obj)
        if o.lock is not None and o.lock[0] == cookie and o.lock[1] == self.client.id:
            o.lock = None

    def get_xattr(self, obj: str, key: str) -> bytes:
        o = self._objects.get(obj)
        if o is None:
            raise ObjectNotFound(obj)
        if key not in o.xattrs:
            raise NoData(key)
        return o.xattrs[key]

    def set_xattr(self, obj: str, key: str, value: bytes) -> None:
        self._objects.setdefault(obj, FakeObject()).xattrs[key] = value

    def remove_object(self, obj: str) -> None:
        self.cluster.op("remove_object")
        if self._objects.pop(obj, None) is None:
            raise ObjectNotFound(obj)

    # omap
    def set_omap(self, op: WriteOpCtx, keys: tuple[str, ...], values: tuple[bytes, ...]) -> None:
        op.steps.append(lambda o: o.omap.update(zip(keys, values, strict=True)))

    def remove_omap_keys(self, op: WriteOpCtx, keys: tuple[str, ...]) -> None:
        op.steps.append(lambda o: [o.omap.pop(k, None) for k in keys])

    def operate_write_op(self, op: WriteOpCtx, obj: str) -> None:
        self.cluster.op("omap_write")
        if obj not in self._objects and op.needs_object and (op.steps or op.asserts):
            raise ObjectNotFound(obj)
        existing = self._objects.get(obj)
        omap = existing.omap if existing is not None else {}
        for key, value in op.asserts:
            if omap.get(key, b"") != value:
                raise RadosError(f"omap_cmp failed on {obj}", errno.ECANCELED)
        o = self._objects.setdefault(obj, FakeObject())
        for step in op.steps:
            step(o)
        o.version += 1

    def get_omap_vals_by_keys(self, op: ReadOpCtx, keys: tuple[str, ...]
                              ) -> tuple[list[tuple[str, bytes]], int]:
        out: list[tuple[str, bytes]] = []
        op.steps.append(lambda o: out.extend((k, o.omap[k]) for k in keys if k in o.omap))
        return out, 0

    def get_omap_vals(self, op: ReadOpCtx, start_after: str, prefix: str, max_return: int
                      ) -> tuple[list[tuple[str, bytes]], int]:
        out: list[tuple[str, bytes]] = []
        def page(o: FakeObject) -> None:
            keys = o.sorted_keys()
            at = bisect.bisect_right(keys, start_after)
            for k in keys[at:]:
                if len(out) >= max_return:
                    break
                if k.startswith(prefix):
                    out.append((k, o.omap[k]))
        op.steps.append(page)
        return out, 0

    def operate_read_op(self, op: ReadOpCtx, obj: str) -> None:
        self.cluster.op("omap_read")
        o = self._objects.get(obj)
        if o is None:
            raise ObjectNotFound(obj)
        for step in op.steps:
            step(o)


class WriteOpCtx:
    def __init__(self) -> None:
        self.steps: list[Callable[[FakeObject], Any]] = []
        self.asserts: list[tuple[str, bytes]] = []
        self.needs_object = False
        self.creates = False

    def omap_cmp(self, key: str, val: str, cmp_op: int = 1) -> None:
        if cmp_op != 1:  # LIBRADOS_CMPXATTR_OP_EQ, the only one modelled
            raise NotImplementedError(f"omap_cmp op {cmp_op}")
        self.asserts.append((key, val.encode()))
        if not self.creates:
            self.needs_object = True

    def new(self, exclusive: int | None = None) -> None:
        if exclusive:
            raise NotImplementedError("exclusive create")
        self.creates = True
        self.needs_object = False

    def __enter__(self) -> WriteOpCtx:
        return self

    def __exit__(self, *exc: object) -> None:
        pass


class ReadOpCtx(WriteOpCtx):
    pass


# -- rbd -------------------------------------------------------------------------------

#: Every ``Image.close`` made while a call on that image still ran: what it
#: closed, the calls running, and where the close came from. Real librbd
#: crashes there; the unit tests' fixture fails the test that did it.
closed_under_calls: list[str] = []

F = TypeVar("F", bound=Callable[..., Any])


def _on_open_image(fn: F) -> F:
    """A call on an open image: refused once it is closed (python-rbd's
    ``requires_not_closed``), and counted while it runs, so that a close
    under it is caught."""
    @functools.wraps(fn)
    def call(self: Image, *args: Any, **kwargs: Any) -> Any:
        with self._calls_lock:
            if self.closed:
                raise InvalidArgument("image is closed")
            self._running[fn.__name__] += 1
        try:
            return fn(self, *args, **kwargs)
        finally:
            with self._calls_lock:
                self._running[fn.__name__] -= 1
    return call  # type: ignore[return-value]


class RBD:
    def create(self, ioctx: Ioctx, name: str, size: int, old_format: bool = False,
               features: int = 0, **_: Any) -> None:
        ioctx.cluster.op("create")
        images = ioctx.cluster.images[ioctx.pool]
        if name in images:
            raise ImageExists(name)
        images[name] = FakeImage(size)

    def list(self, ioctx: Ioctx) -> list[str]:
        return list(ioctx.cluster.images[ioctx.pool])

    def remove(self, ioctx: Ioctx, name: str) -> None:
        ioctx.cluster.op(f"remove {ioctx.pool}/{name}")
        images = ioctx.cluster.images[ioctx.pool]
        if name not in images:
            raise ImageNotFound(name)
        if images[name].snaps:
            raise ImageHasSnapshots(name)
        del images[name]

    def rename(self, ioctx: Ioctx, src: str, dst: str) -> None:
        ioctx.cluster.op("rename")
        images = ioctx.cluster.images[ioctx.pool]
        if dst in images:
            raise ImageExists(dst)
        images[dst] = images.pop(src)


class Image:
    def __init__(self, ioctx: Ioctx, name: str, snapshot: str | None = None,
                 read_only: bool = False) -> None:
        self.cluster = ioctx.cluster
        self.pool = ioctx.pool
        self.name = name
        # librbd 16.2 corrupts memory on this open (warmer.ceph.bindings.
        # set_snapshot): no code of warmer's may make it.
        assert not (snapshot is not None and read_only), \
            "never open read-only at a snapshot: use bindings.set_snapshot"
        self.cluster.op(f"open {self.pool}/{name}")
        img = self.cluster.images[self.pool].get(name)
        if img is None or (snapshot is not None and snapshot not in img.snaps):
            raise ImageNotFound(name)
        self.img = img
        self.snapshot = snapshot
        self.snap_id: int | None = None  # set_snap_by_id: reads come from that one only
        self.read_only = read_only
        self.closed = False
        self._running: collections.Counter[str] = collections.Counter()  # calls, by name
        self._calls_lock = threading.Lock()

    def __enter__(self) -> Image:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    def close(self) -> None:
        """Close it (again: nothing). Under a running call, record where."""
        with self._calls_lock:
            running = {name: n for name, n in self._running.items() if n}
            if running and not self.closed:
                where = "".join(traceback.format_stack(limit=12)[:-1])
                closed_under_calls.append(
                    f"{self.cluster.conffile} {self.pool}/{self.name} closed under running "
                    f"{running}, from:\n{where}")
            self.closed = True

    def _writable(self) -> None:
        if self.read_only or self.snapshot is not None:
            raise RbdPermissionError("read-only", errno.EROFS)

    @_on_open_image
    def size(self) -> int:
        return self.img.size

    @_on_open_image
    def id(self) -> str:
        return self.img.rbd_id

    @_on_open_image
    def snap_get_id(self, name: str) -> int:
        snap = self.img.snaps.get(name)
        if snap is None:
            raise ImageNotFound(name)
        return snap.id

    @_on_open_image
    def set_snap_by_id(self, snap_id: int) -> None:
        names = [n for n, s in self.img.snaps.items() if s.id == snap_id]
        if not names:
            raise ImageNotFound(f"snap id {snap_id}")
        self.snapshot, self.snap_id = names[0], snap_id

    @_on_open_image
    def metadata_list(self) -> list[tuple[str, str]]:
        return list(self.img.meta.items())

    @_on_open_image
    def metadata_set(self, key: str, value: str) -> None:
        self._writable()
        self.cluster.op(f"metadata_set {key}")
        self.img.meta[key] = value

    @_on_open_image
    def list_snaps(self) -> list[dict[str, Any]]:
        return [{"name": n} for n in self.img.snaps]

    @_on_open_image
    def is_protected_snap(self, name: str) -> bool:
        return self.img.snaps[name].protected

    @_on_open_image
    def create_snap(self, name: str) -> None:
        self._writable()
        self.cluster.op("create_snap")
        if name in self.img.snaps:
            raise ImageExists(name)
        self.img.snaps[name] = Snap(dict(self.img.data))

    @_on_open_image
    def protect_snap(self, name: str) -> None:
        self._writable()
        self.cluster.op("protect_snap")
        if self.img.snaps[name].protected:
            raise InvalidArgument("already protected")
        self.img.snaps[name].protected = True

    @_on_open_image
    def unprotect_snap(self, name: str) -> None:
        self._writable()
        self.cluster.op(f"unprotect_snap {self.pool}/{self.name}")
        if self.cluster.children_of(self.pool, self.name, name):
            raise ImageBusy("snapshot has clones")
        self.img.snaps[name].protected = False

    @_on_open_image
    def remove_snap(self, name: str) -> None:
        self._writable()
        self.cluster.op("remove_snap")
        if self.img.snaps[name].protected:
            raise ImageBusy("protected")
        del self.img.snaps[name]

    @_on_open_image
    def list_children2(self) -> list[dict[str, str]]:
        assert self.snapshot is not None
        return [{"pool": p, "image": n}
                for p, n in self.cluster.children_of(self.pool, self.name, self.snapshot)]

    @_on_open_image
    def parent_info(self) -> tuple[str, str, str]:
        if self.img.parent is None:
            raise ImageNotFound("no parent")
        return self.img.parent

    @_on_open_image
    def lock_get_owners(self) -> list[dict[str, str]]:
        return [{"mode": "exclusive", "owner": o} for o in self.img.lock_owners]

    @_on_open_image
    def lock_break(self, mode: str, owner: str) -> None:
        self.cluster.op("lock_break")
        self.img.lock_owners.remove(owner)

    @_on_open_image
    def write(self, data: bytes, offset: int) -> int:
        self._writable()
        self.cluster.op("write")
        if self.cluster.write_delay:
            time.sleep(self.cluster.write_delay)
        self.img.data[offset] = bytes(data)
        return len(data)

    def _data(self) -> dict[int, bytes]:
        if self.snap_id is not None:
            snap = next((s for s in self.img.snaps.values() if s.id == self.snap_id), None)
            if snap is None:
                raise ImageNotFound(f"snap id {self.snap_id} was removed")
            return snap.data
        return self.img.snaps[self.snapshot].data if self.snapshot else self.img.data

    @_on_open_image
    def read(self, offset: int, length: int) -> bytes:
        out = bytearray(length)
        for start, piece in self._data().items():
            lo, hi = max(start, offset), min(start + len(piece), offset + length)
            if lo < hi:
                out[lo - offset:hi - offset] = piece[lo - start:hi - start]
        return bytes(out)

    @_on_open_image
    def diff_iterate(self, offset: int, length: int, from_snapshot: str | None,
                     cb: Callable[[int, int, bool], int]) -> None:
        for start, piece in sorted(self._data().items()):
            cb(start, len(piece), True)


def modules() -> tuple[types.ModuleType, types.ModuleType]:
    rados = types.ModuleType("rados")
    for cls in (ObjectNotFound, NoData, ObjectBusy, ObjectExists, ConnectionShutdown,
                TimedOut, Rados, WriteOpCtx, ReadOpCtx):
        setattr(rados, cls.__name__, cls)
    rados.Error = RadosError  # type: ignore[attr-defined]
    rados.LIBRADOS_CMPXATTR_OP_EQ = 1  # type: ignore[attr-defined]
    rados.LIBRADOS_CREATE_IDEMPOTENT = 0  # type: ignore[attr-defined]
    rados.PermissionError = RadosPermissionError  # type: ignore[attr-defined]
    rbd = types.ModuleType("rbd")
    for cls in (ImageNotFound, ImageExists, ImageBusy, ImageHasSnapshots, InvalidArgument,
                RBD, Image):
        setattr(rbd, cls.__name__, cls)
    rbd.Error = RbdError  # type: ignore[attr-defined]
    rbd.PermissionError = RbdPermissionError  # type: ignore[attr-defined]
    rbd.ConnectionShutdown = RbdConnectionShutdown  # type: ignore[attr-defined]
    rbd.Timeout = RbdTimeout  # type: ignore[attr-defined]
    return rados, rbd
