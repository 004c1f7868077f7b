"""The daemon's listeners, from ``[http]``.

* ``host:port`` (TCP): metrics, health, and the admin API behind the
  bearer token;
* ``metrics_host:metrics_port`` (TCP, optional): metrics and health only,
  for a remote Prometheus;
* ``admin_socket`` (unix, optional): metrics, health and the admin API
  for whoever may open it. It is bound and set to mode 0660 before it
  listens, so no connection is ever accepted under a wider mode. A socket
  file that a dead daemon left is replaced; one that a live process
  answers on is not (start-up fails instead).

Each listener has its own app (:class:`~warmer.http_api.app.Listener`).
If any of them cannot be bound, the ones already started are closed and
:class:`ListenerError` says which and why.
"""

from __future__ import annotations

import contextlib
import ipaddress
import logging
import os
import socket
import stat
from collections.abc import Callable
from typing import Any

from aiohttp import web

from warmer.http_api.app import Listener, make_app
from warmer.http_api.ops import PinBook
from warmer.metrics import Metrics
from warmer.warming.engine import Engine

LOG = logging.getLogger(__name__)

SOCKET_MODE = 0o660


class ListenerError(Exception):
    """A listener could not be started (the message says which and why)."""


class HttpSurface:
    """The running listeners; :meth:`close` stops them and removes the
    admin socket file (if it is still ours)."""

    def __init__(self) -> None:
        self.port: int | None = None
        self.metrics_port: int | None = None
        self.socket_path: str | None = None
        self._runners: list[web.AppRunner] = []
        self._socket_id: tuple[int, int] | None = None

    async def _start(self, app: web.Application,
                     site: Callable[[web.AppRunner], web.BaseSite]) -> web.AppRunner:
        runner = web.AppRunner(app, access_log=None)
        await runner.setup()
        self._runners.append(runner)
        await site(runner).start()
        return runner

    async def close(self) -> None:
        for runner in reversed(self._runners):
            await runner.cleanup()
        self._runners.clear()
        if self.socket_path and self._socket_id:
            with contextlib.suppress(OSError):
                st = os.lstat(self.socket_path)
                if (st.st_dev, st.st_ino) == self._socket_id:
                    os.unlink(self.socket_path)
            self._socket_id = None


async def serve(opts: Any, engine: Engine, metrics: Metrics,
                ready: Callable[[], dict[str, bool]],
                clock: Callable[[], float],
                status: Callable[[], dict[str, Any]] | None = None,
                pins: PinBook | None = None) -> HttpSurface:
    """Start the listeners that ``opts`` (the ``[http]`` group) asks for.
    ``status`` answers ``GET /v1/status`` (the daemon and who leads);
    ``pins`` keeps the pins set through warmer (the shared state)."""
    token = (opts.admin_token or "").strip() or None

    def app(listener: Listener) -> web.Application:
        return make_app(engine, metrics, ready, clock, listener=listener, token=token,
                        max_queue=opts.admin_max_queue, status=status, pins=pins)

    surface = HttpSurface()
    try:
        where = f"{opts.host}:{opts.port}"
        try:
            runner = await surface._start(app(Listener.TCP),
                                          lambda r: web.TCPSite(r, opts.host, opts.port))
        except OSError as exc:
            raise ListenerError(f"cannot listen on [http] host:port {where}: {exc}") from exc
        surface.port = int(runner.addresses[0][1])
        LOG.info("HTTP on %s:%s (metrics, health, admin API: %s)", opts.host, surface.port,
                 "token required" if token else "reads only, no admin_token")
        if not token and not _is_loopback(opts.host):
            LOG.warning("[http] host %s is not loopback and no admin_token is set: anyone "
                        "who reaches it can read the admin API", opts.host)

        if opts.metrics_port is not None:
            host = opts.metrics_host or opts.host
            where = f"{host}:{opts.metrics_port}"
            try:
                runner = await surface._start(
                    app(Listener.METRICS), lambda r: web.TCPSite(r, host, opts.metrics_port))
            except OSError as exc:
                raise ListenerError(f"cannot listen on [http] metrics_host:metrics_port "
                                    f"{where}: {exc}") from exc
            surface.metrics_port = int(runner.addresses[0][1])
            LOG.info("HTTP on %s:%s (metrics and health only)", host, surface.metrics_port)

        if opts.admin_socket:
            path = opts.admin_socket
            try:
                sock = bind_admin_socket(path)
            except OSError as exc:
                raise ListenerError(f"cannot listen on [http] admin_socket {path}: {exc} "
                                    "(empty admin_socket disables it)") from exc
            st = os.stat(path)
            surface.socket_path, surface._socket_id = path, (st.st_dev, st.st_ino)
            await surface._start(app(Listener.UNIX), lambda r: web.SockSite(r, sock))
            LOG.info("admin socket on %s (mode %04o)", path, SOCKET_MODE)
    except BaseException:
        await surface.close()
        raise
    return surface


def bind_admin_socket(path: str) -> socket.socket:
    """A unix stream socket bound at ``path`` with mode 0660, not yet
    listening (a connect is refused until the server listens)."""
    _remove_stale_socket(path)
    sock = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
    try:
        sock.bind(path)
        os.chmod(path, SOCKET_MODE)
        sock.setblocking(False)
    except BaseException:
        sock.close()
        raise
    return sock


def _remove_stale_socket(path: str) -> None:
    try:
        st = os.lstat(path)
    except FileNotFoundError:
        return
    if not stat.S_ISSOCK(st.st_mode):
        raise FileExistsError(f"{path} exists and is not a socket")
    with socket.socket(socket.AF_UNIX, socket.SOCK_STREAM) as probe:
        probe.settimeout(1.0)
        try:
            probe.connect(path)
        except ConnectionRefusedError:
            LOG.info("removing the stale admin socket %s", path)
            os.unlink(path)
            return
    raise FileExistsError(f"another process is listening on {path}")


def _is_loopback(host: str) -> bool:
    if host == "localhost":
        return True
    try:
        return ipaddress.ip_address(host).is_loopback
    except ValueError:
        return False
