"""Fake ``rados`` and ``rbd`` modules with the shape of Ceph's Pacific
bindings, for tests that monkeypatch :func:`warmer.ceph.bindings.modules`.

rados and rbd share no base exception class; both have an ``OSError``
(shadowing the builtin) with ``errno``, and the same subclasses for
``ConnectionShutdown``; the timeout is ``rados.TimedOut`` but ``rbd.Timeout``.
"""

from __future__ import annotations

import types
from typing import Any


def fake_bindings() -> tuple[types.ModuleType, types.ModuleType]:
    """Two modules with the exception hierarchy of Ceph's Pacific bindings."""
    rados = types.ModuleType("rados")
    rbd = types.ModuleType("rbd")
    for mod in (rados, rbd):
        class Error(Exception):
            pass

        class OSError_(Error):  # the bindings shadow the builtin name
            def __init__(self, message: str, errno: int | None = None) -> None:
                super().__init__(message)
                self.errno = errno

        mod.Error = Error  # type: ignore[attr-defined]
        mod.OSError = OSError_  # type: ignore[attr-defined]
        for name in ("ObjectNotFound", "PermissionError", "ConnectionShutdown",
                     "ImageNotFound"):
            setattr(mod, name, type(name, (OSError_,), {}))
    rados.TimedOut = type("TimedOut", (rados.OSError,), {})  # type: ignore[attr-defined]
    rbd.Timeout = type("Timeout", (rbd.OSError,), {})  # type: ignore[attr-defined]
    rados.Rados = type("Rados", (FakeRados,), {"module": rados})  # type: ignore[attr-defined]
    return rados, rbd


class Made:
    """What the test sees of one connection (not the connection itself: a
    reference to it would keep it in use)."""

    def __init__(self, conffile: str, name: str, conf: dict[str, str]) -> None:
        self.conffile, self.name, self.conf = conffile, name, conf
        self.shut_down = False


class FakeRados:
    """A connection that always answers; ``on_call(conffile)``, when set, runs
    first in every operation (to block or fail one cluster)."""

    made: list[Made] = []
    on_call: Any = None
    module: types.ModuleType

    def __init__(self, conffile: str, name: str, conf: dict[str, str]) -> None:
        self.seen = Made(conffile, name, conf)
        FakeRados.made.append(self.seen)

    def _op(self) -> None:
        if FakeRados.on_call is not None:
            FakeRados.on_call(self.seen.conffile)

    def connect(self, timeout: int = 0) -> None:
        pass

    def shutdown(self) -> None:
        self.seen.shut_down = True

    def get_fsid(self) -> str:
        return "fsid"

    def get_cluster_stats(self) -> dict[str, int]:
        self._op()
        return {}

    def open_ioctx(self, pool: str) -> FakeIoctx:
        self._op()
        return FakeIoctx(self)


class FakeIoctx:
    def __init__(self, cluster: FakeRados) -> None:
        self.cluster = cluster

    def stat(self, key: str) -> Any:
        raise self.cluster.module.ObjectNotFound(f"no object {key}")

    def close(self) -> None:
        pass


