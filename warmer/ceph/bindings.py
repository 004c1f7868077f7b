"""The part of the ``rados`` / ``rbd`` bindings warmer uses, typed.

The real modules come from Debian's python3-rados / python3-rbd (not
PyPI) and have no type information; these Protocols are what the rest of
warmer is checked against. They are imported lazily so that the pure
parts of warmer (parsing, popularity) import without them.
"""

from __future__ import annotations

import types
from typing import Any, Protocol


class Ioctx(Protocol):
    def close(self) -> None: ...
    def stat(self, key: str) -> tuple[int, Any]: ...


class Rados(Protocol):
    def connect(self, timeout: int = ...) -> None: ...
    def shutdown(self) -> None: ...
    def get_fsid(self) -> str: ...
    def get_addrs(self) -> str: ...
    def open_ioctx(self, name: str) -> Ioctx: ...
    def get_cluster_stats(self) -> dict[str, int]: ...


class Image(Protocol):
    def __enter__(self) -> Image: ...
    def __exit__(self, *exc: object) -> None: ...
    def list_snaps(self) -> Any: ...
    def is_protected_snap(self, name: str) -> bool: ...
    def create_snap(self, name: str) -> None: ...
    def protect_snap(self, name: str) -> None: ...
    def size(self) -> int: ...
    def id(self) -> str: ...
    def snap_get_id(self, name: str) -> int: ...
    def set_snap_by_id(self, snap_id: int) -> None: ...
    def close(self) -> None: ...


def set_snapshot(img: Image, snapshot: str) -> int:
    """Set ``img``, an image opened read-only at its head, to ``snapshot``
    and return the snapshot's id: reads come from that snapshot only, even
    if another of the same name replaces it meanwhile. A missing snapshot
    raises ``ImageNotFound``.

    This is how warmer opens a snapshot, never
    ``rbd.Image(..., snapshot=..., read_only=True)``. librbd 16.2 (Debian
    12's 16.2.15) corrupts its memory on that open: one thread opening and
    closing a snapshot that way, nothing else running, killed the process
    (``std::system_error: Invalid argument``, a segfault, or a hang) within
    4,000 cycles in 15 of 17 runs, and aborted warmer-daemon in CI; opened
    at the head and then set by id, this way, 30,000 cycles in one thread
    and three runs of 6,000 in four threads never did (``docs/ceph-bugs.md``).
    Both read the same header and snapshot with the same caps, so this is
    still what Cinder's clone check opens, with the same errors.
    """
    snap_id = int(img.snap_get_id(snapshot))
    img.set_snap_by_id(snap_id)
    return snap_id


def errors() -> tuple[type[BaseException], ...]:
    """The base exception classes of rados and rbd (they share none)."""
    rados, rbd = modules()
    return (rados.Error, rbd.Error)


def modules() -> tuple[types.ModuleType, types.ModuleType]:
    """Return (rados, rbd), with a clear message when they are missing."""
    try:
        import rados
        import rbd
    except ImportError as exc:  # pragma: no cover - depends on the host
        raise ImportError(
            "the rados/rbd Python bindings are missing: install python3-rados and "
            "python3-rbd and link them into the venv (tools/bootstrap does)") from exc
    return rados, rbd
