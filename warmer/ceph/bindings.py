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
