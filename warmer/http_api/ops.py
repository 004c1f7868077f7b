"""The operator's routes of the admin API (issue 8), under ``/v1``, behind
the same authorization as the rest of it (the admin socket's file mode, or
the TCP bearer token for anything but reads):

* ``POST /v1/images/{id}/warm[?target=T]``: warm now, whatever the score
  (:mod:`warmer.warming.operator`): 202 with the request (``at``, the
  instant to compare with the image's ``warm_request.at``, and
  ``targets``); 404 when Glance has no such image, 409 when it is not
  eligible, 400 for an unknown target, 429 when the queue is full, 503
  while stopping or when Glance does not answer;
* ``PUT /v1/images/{id}/pin[?reason=TEXT]``: pin it for the whole fleet
  (the shared state's ``warmer.pins``; every daemon reads it at start and
  at each refresh): 200 with who, when and why; 503 when the shared state
  cannot be written (nothing is pinned then);
* ``DELETE /v1/images/{id}/pin``: unpin it: 200, or 404 when it was not
  pinned through warmer (a Glance tag or property pin is Glance's);
* ``POST /v1/images/{id}/evict?target=T``: take warmer's copy out of T now,
  children-safe, and hold it out until new demand: 200 ``removed``, or the
  reason it was kept (409 ``has_children`` and other refusals, 404 when
  there is no copy, 409 for a pinned image).

Refusals are one line of text, like every other error of the API.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any, NoReturn, Protocol

from aiohttp import web

from warmer.ids import canonical_image_id
from warmer.state.store import Pin, StateError
from warmer.warming.engine import Engine
from warmer.warming.operator import Refused

MAX_REASON = 512  # characters of a pin's reason

_STATUS: dict[str, type[web.HTTPException]] = {
    "bad_request": web.HTTPBadRequest,
    "not_found": web.HTTPNotFound,
    "conflict": web.HTTPConflict,
    "busy": web.HTTPTooManyRequests,
    "unavailable": web.HTTPServiceUnavailable,
    "stopping": web.HTTPServiceUnavailable,
}


class PinBook(Protocol):
    """Where pins are kept (:class:`warmer.state.fleet.FleetDemand`)."""

    pins: dict[str, Pin]

    async def pin(self, image_id: str, by: str, reason: str = "") -> Pin: ...

    async def unpin(self, image_id: str) -> bool: ...


def _refuse(exc: Refused) -> NoReturn:
    raise _STATUS.get(exc.kind, web.HTTPConflict)(text=f"{exc}\n") from exc


def _image_id(request: web.Request) -> str:
    try:
        return canonical_image_id(request.match_info["image_id"])
    except ValueError:
        raise web.HTTPBadRequest(text="invalid image id: expected a canonical UUID "
                                      "(lowercase 8-4-4-4-12)\n") from None


def add_routes(admin: web.Application, engine: Engine, clock: Callable[[], float],
               max_queue: int, pins: PinBook | None, who: Callable[[web.Request], str]
               ) -> None:
    """Add the operator's routes to the ``/v1`` app. ``who`` names the
    requester for a pin's ``by``."""

    async def warm(request: web.Request) -> web.Response:
        image_id = _image_id(request)
        await request.read()
        try:
            req = await engine.ops.warm(image_id, request.query.get("target"), max_queue)
        except Refused as exc:
            _refuse(exc)
        return web.json_response({"image_id": image_id, **req.view()}, status=202)

    async def pin(request: web.Request) -> web.Response:
        image_id = _image_id(request)
        await request.read()
        if pins is None:
            raise web.HTTPServiceUnavailable(text="this daemon keeps no pins\n")
        reason = request.query.get("reason", "")[:MAX_REASON]
        if engine.tracker.is_deleted(image_id):
            raise web.HTTPNotFound(text=f"image {image_id} was deleted in Glance\n")
        try:
            why = await engine.ops.glance_view(image_id)
        except Refused as exc:
            _refuse(exc)
        try:
            done = await pins.pin(image_id, who(request), reason)
        except StateError as exc:
            raise web.HTTPServiceUnavailable(
                text=f"the shared state cannot be written now, nothing pinned: {exc}\n"
            ) from exc
        return web.json_response({"pinned": image_id, "by": done.by, "at": done.at,
                                  "reason": done.reason, "ineligible_reason": why})

    async def unpin(request: web.Request) -> web.Response:
        image_id = _image_id(request)
        if pins is None:
            raise web.HTTPServiceUnavailable(text="this daemon keeps no pins\n")
        try:
            was = await pins.unpin(image_id)
        except StateError as exc:
            raise web.HTTPServiceUnavailable(
                text=f"the shared state cannot be written now, still pinned: {exc}\n"
            ) from exc
        if not was:
            raise web.HTTPNotFound(text=f"image {image_id} is not pinned through warmer\n")
        return web.json_response({"unpinned": image_id})

    async def evict(request: web.Request) -> web.Response:
        image_id = _image_id(request)
        await request.read()
        target = request.query.get("target")
        if not target:
            raise web.HTTPBadRequest(text="evict needs ?target=NAME: one target at a time\n")
        try:
            result = await engine.ops.evict(image_id, target)
        except Refused as exc:
            _refuse(exc)
        return web.json_response({"image_id": image_id, "target": target, "result": result})

    admin.router.add_post("/images/{image_id:[^/]+}/warm", warm)
    admin.router.add_put("/images/{image_id:[^/]+}/pin", pin)
    admin.router.add_delete("/images/{image_id:[^/]+}/pin", unpin)
    admin.router.add_post("/images/{image_id:[^/]+}/evict", evict)


def image_extras(engine: Engine, image_id: str, pins: PinBook | None) -> dict[str, Any]:
    """What the operator's commands add to an image's view: pinned (by a
    Glance tag or property, or through warmer, with who, when and why),
    and its latest warm request."""
    tracker = engine.tracker
    pin = pins.pins.get(image_id) if pins is not None else None
    request = engine.ops.requests.get(image_id)
    return {
        "pinned": tracker.is_pinned(image_id),
        "pin": {"by": pin.by, "at": pin.at, "reason": pin.reason} if pin else None,
        "warm_request": request.view() if request else None,
    }
