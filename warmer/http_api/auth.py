"""Who may use the admin API, per listener.

* **Admin socket** (``[http] admin_socket``): whoever can open it, which
  its file mode (0660) and the daemon's user and group decide. Nothing
  else is checked; the peer's uid is logged for requests that change
  state.
* **TCP**: requests that change state (any method but GET, HEAD and
  OPTIONS) need ``Authorization: Bearer <[http] admin_token>``; without a
  configured token they are always refused. Reads need the token once
  one is configured, and nothing otherwise (the listener is on loopback
  by default). Every refusal is a 403 with a one-line reason, and a
  warning in the log; the token itself is never logged.

Both are middlewares of the ``/v1`` sub-application only, so
``/metrics``, ``/healthz`` and ``/readyz`` never need a token.
"""

from __future__ import annotations

import hmac
import logging
import socket
import struct

from aiohttp import web
from aiohttp.typedefs import Handler, Middleware

LOG = logging.getLogger(__name__)

READ_METHODS = frozenset({"GET", "HEAD", "OPTIONS"})

NO_TOKEN_CONFIGURED = ("admin requests that change state need the admin socket: "
                       "no [http] admin_token is configured for TCP")
TOKEN_MISSING = "a bearer token is required (Authorization: Bearer <[http] admin_token>)"
TOKEN_WRONG = "invalid bearer token"


def _refusal(request: web.Request, expected: bytes | None) -> str | None:
    """Why ``request`` may not pass, or None when it may."""
    if expected is None:
        return None if request.method in READ_METHODS else NO_TOKEN_CONFIGURED
    scheme, _, value = request.headers.get("Authorization", "").strip().partition(" ")
    value = value.strip()
    if scheme.lower() != "bearer" or not value:
        return TOKEN_MISSING
    try:
        given = value.encode("utf-8", "surrogateescape")
    except UnicodeEncodeError:
        return TOKEN_WRONG
    return None if hmac.compare_digest(given, expected) else TOKEN_WRONG


def bearer_token(token: str | None) -> Middleware:
    """The TCP listener's check (``token`` is ``[http] admin_token``; empty
    means none)."""
    expected = token.encode("utf-8") if token else None

    @web.middleware
    async def authorize(request: web.Request, handler: Handler) -> web.StreamResponse:
        refusal = _refusal(request, expected)
        if refusal is not None:
            LOG.warning("admin API: refused %s %s from %s over TCP: %s",
                        request.method, request.path, request.remote, refusal)
            raise web.HTTPForbidden(text=refusal + "\n")
        if request.method not in READ_METHODS:
            LOG.info("admin API: %s %s from %s over TCP (token)", request.method,
                     request.path, request.remote)
        return await handler(request)

    return authorize


def socket_peer() -> Middleware:
    """The admin socket's: the file mode already decided; log who wrote."""

    @web.middleware
    async def audit(request: web.Request, handler: Handler) -> web.StreamResponse:
        if request.method not in READ_METHODS:
            LOG.info("admin API: %s %s from uid %s over the admin socket",
                     request.method, request.path, _peer_uid(request))
        return await handler(request)

    return audit


def requester(request: web.Request) -> str:
    """Who sent ``request``, for the record (a pin's ``by``): the peer's uid
    on the admin socket, the token holder's address over TCP."""
    uid = _peer_uid(request)
    if uid is not None:
        return f"uid {uid} (admin socket)"
    return f"token holder at {request.remote}" if request.remote else "admin API"


def _peer_uid(request: web.Request) -> int | None:
    sock = request.transport.get_extra_info("socket") if request.transport else None
    if sock is None or not hasattr(socket, "SO_PEERCRED"):
        return None
    try:
        creds = sock.getsockopt(socket.SOL_SOCKET, socket.SO_PEERCRED, struct.calcsize("3i"))
    except OSError:
        return None
    _pid, uid, _gid = struct.unpack("3i", creds)
    return int(uid)
