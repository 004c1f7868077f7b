"""aiohttp apps: ``/metrics``, ``/healthz``, ``/readyz`` and the admin API.

Nothing here calls Ceph or Glance: every answer comes from state the
daemon already holds, so a scrape or a status query is cheap and cannot
hang on a sick cluster.

Admin API (JSON, version 1), under ``/v1``:

* ``GET /v1/status``: this daemon (``host``) and who leads the fleet
  (``leader``: ``name``, ``since``, and ``self`` when it is this daemon),
  as this daemon last saw it;
* ``GET /v1/images[?limit=N&marker=ID]``: tracked images by id, a page
  (1000 by default) at a time, with score, verdicts and per-target state;
  ``next`` is the marker of the next page (``null`` on the last);
* ``GET /v1/images/{id}``: one image (404 when untracked);
* ``POST /v1/images/{id}/evaluate``: evaluate it now (202), or 429 while
  the work queue holds ``max_queue`` images, 503 while the daemon stops.
* the operator's routes (warm, pin and unpin, evict): :mod:`warmer.http_api.ops`.

One app per listener (:class:`Listener`): the metrics listener has no
admin API at all (404), the admin socket serves it to whoever may open
the socket, and TCP serves it behind a bearer token
(:mod:`warmer.http_api.auth`). Every app takes bodies of at most
:data:`MAX_BODY` bytes (413) and ids that are canonical UUIDs (400).
"""

from __future__ import annotations

import dataclasses
import enum
import heapq
from collections.abc import Callable
from typing import Any

from aiohttp import web
from aiohttp.typedefs import Handler, Middleware
from prometheus_client.aiohttp import make_aiohttp_handler

from warmer.http_api import auth, ops
from warmer.ids import canonical_image_id
from warmer.metrics import Metrics
from warmer.warming.engine import Engine

MAX_BODY = 64 * 1024
PAGE_SIZE = 1000  # images per page of GET /v1/images (?limit=, ?marker=)
MAX_PAGE_SIZE = 10_000


class Listener(enum.Enum):
    METRICS = "metrics"  # /metrics, /healthz, /readyz only
    TCP = "tcp"          # and the admin API, behind the bearer token
    UNIX = "unix"        # and the admin API; the socket's file mode authorizes


def image_view(engine: Engine, image_id: str, now: float,
               pins: ops.PinBook | None = None) -> dict[str, Any] | None:
    """One image's view. Demand counts per target (where it happened): the
    top-level score, wanted and why are those of the target that wants it
    most; ``demand`` has each target's. O(targets · log N). ``score`` is
    rounded for people; ``exact_score`` is the same score unrounded, at unix
    time ``scored_at`` (``now``), so that scores taken by two daemons at
    different instants can be compared exactly (every score decays by the
    same factor ``2**(-dt/half_life)``). ``copy_costs`` has, per target,
    what the copy this daemon made lately cost (every daemon's copies are
    in the shared state, ``warmer.costs.<target>``)."""
    tracker = engine.tracker
    info = tracker.image(image_id)
    if info is None:
        return None
    verdicts = {name: v for name, v in engine.verdicts(image_id, now).items() if v is not None}
    best = max(verdicts.values(), key=lambda v: (v.wanted, v.score), default=None)
    return {
        "id": image_id,
        "name": info.name,
        "status": info.status,
        "disk_format": info.disk_format,
        "size": info.size,
        "score": round(best.score, 4) if best else 0.0,
        "exact_score": best.score if best else 0.0,
        "scored_at": now,
        "wanted": bool(best and best.wanted),
        "why": best.reason if best else "unknown",
        "demand": {name: {"score": v.score, "wanted": v.wanted, "why": v.reason}
                   for name, v in verdicts.items()},
        "targets": [
            {k: v for k, v in dataclasses.asdict(s).items() if k not in ("image_id", "warm_since")}
            for s in engine.status(image_id)
        ],
        "copying": {t.name: {"done_bytes": t.progress[image_id][0],
                             "size_bytes": t.progress[image_id][1]}
                    for t in engine.targets if image_id in t.progress},
        "copy_costs": {t.name: cost.view() for t in engine.targets if t.records is not None
                       and (cost := t.records.last_cost(t.name, image_id)) is not None},
        **ops.image_extras(engine, image_id, pins),
    }


@web.middleware
async def _limit_body(request: web.Request, handler: Handler) -> web.StreamResponse:
    # A declared oversize body is refused before anyone reads it; a chunked
    # one is refused by request.read() (client_max_size) in the handler.
    if request.content_length is not None and request.content_length > MAX_BODY:
        raise web.HTTPRequestEntityTooLarge(max_size=MAX_BODY,
                                            actual_size=request.content_length)
    return await handler(request)


def make_app(engine: Engine, metrics: Metrics, ready: Callable[[], dict[str, bool]],
             clock: Callable[[], float], *, listener: Listener = Listener.TCP,
             token: str | None = None, max_queue: int = 1000,
             status: Callable[[], dict[str, Any]] | None = None,
             pins: ops.PinBook | None = None) -> web.Application:
    """The app for one listener. ``token`` is ``[http] admin_token`` (TCP
    only); ``max_queue`` is ``[http] admin_max_queue``; ``status`` answers
    ``GET /v1/status``; ``pins`` keeps the pins set through warmer."""
    app = web.Application(client_max_size=MAX_BODY, middlewares=[_limit_body])

    async def healthz(request: web.Request) -> web.Response:
        return web.json_response({"status": "ok"})

    async def readyz(request: web.Request) -> web.Response:
        checks = ready()
        ok = all(checks.values())
        return web.json_response({"ready": ok, "checks": checks}, status=200 if ok else 503)

    app.router.add_get("/metrics", make_aiohttp_handler(metrics.registry))
    app.router.add_get("/healthz", healthz)
    app.router.add_get("/readyz", readyz)
    if listener is not Listener.METRICS:
        middleware = (auth.bearer_token(token) if listener is Listener.TCP
                      else auth.socket_peer())
        admin = _admin_app(engine, clock, middleware, max_queue, status, pins)
        ops.add_routes(admin, engine, clock, max_queue, pins, auth.requester)
        app.add_subapp("/v1", admin)
    return app


def _admin_app(engine: Engine, clock: Callable[[], float], middleware: Middleware,
               max_queue: int, status: Callable[[], dict[str, Any]] | None,
               pins: ops.PinBook | None = None) -> web.Application:
    admin = web.Application(middlewares=[middleware])

    async def daemon_status(request: web.Request) -> web.Response:
        return web.json_response(status() if status is not None else {})

    async def list_images(request: web.Request) -> web.Response:
        # In pages, by image id: each view costs O(targets log N) on the
        # event loop, and 100k images x 20 targets would hold it for seconds.
        try:
            limit = int(request.query.get("limit", PAGE_SIZE))
        except ValueError:
            raise web.HTTPBadRequest(text="limit: expected an integer\n") from None
        if not 1 <= limit <= MAX_PAGE_SIZE:
            raise web.HTTPBadRequest(text=f"limit: expected 1 to {MAX_PAGE_SIZE}\n")
        marker = request.query.get("marker", "")
        ids = heapq.nsmallest(limit + 1, (i for i in engine.tracker.image_ids() if i > marker))
        page, more = ids[:limit], len(ids) > limit
        now = clock()
        views = [image_view(engine, i, now, pins) for i in page]
        return web.json_response({"images": [v for v in views if v is not None],
                                  "next": page[-1] if more else None})

    def _image_id(request: web.Request) -> str:
        try:
            return canonical_image_id(request.match_info["image_id"])
        except ValueError:
            raise web.HTTPBadRequest(
                text="invalid image id: expected a canonical UUID "
                     "(lowercase 8-4-4-4-12)\n") from None

    async def show_image(request: web.Request) -> web.Response:
        view = image_view(engine, _image_id(request), clock(), pins)
        if view is None:
            raise web.HTTPNotFound(text="image not tracked\n")
        return web.json_response(view)

    async def evaluate(request: web.Request) -> web.Response:
        image_id = _image_id(request)
        await request.read()  # no body is expected; 413 beyond client_max_size
        if not engine.accepting:
            raise web.HTTPServiceUnavailable(text="the daemon is stopping\n")
        if not engine.request(image_id, max_queue):
            raise web.HTTPTooManyRequests(
                text=f"work queue full (limit {max_queue} images, [http] "
                     "admin_max_queue); try again later\n")
        return web.json_response({"queued": image_id}, status=202)

    admin.router.add_get("/status", daemon_status)
    admin.router.add_get("/images", list_images)
    admin.router.add_get("/images/{image_id:[^/]+}", show_image)
    admin.router.add_post("/images/{image_id:[^/]+}/evaluate", evaluate)
    return admin
