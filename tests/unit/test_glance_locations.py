"""Adding and removing warmer's locations, against a small Glance served by
aiohttp on 127.0.0.1 that applies JSON-patch the way Glance does (remove by
index), with hooks to change the list between warmer's requests."""

from __future__ import annotations

import asyncio
from collections.abc import Callable
from typing import Any

import pytest
from aiohttp import web

from warmer.glance.client import (
    GlanceClient,
    GlanceServerError,
    LocationConflict,
    LocationsHidden,
)

IMAGE_ID = "2f9a3c34-7d0e-4a43-9a43-3b0b2b8d6f11"
OURS = f"rbd://edge-fsid/images/{IMAGE_ID}/snap"
GLANCES = f"rbd://central-fsid/images/{IMAGE_ID}/snap"
OTHER = f"rbd://other-fsid/images/{IMAGE_ID}/snap"


class FakeGlance:
    def __init__(self, urls: list[str]) -> None:
        self.urls = list(urls)
        self.hidden = False
        self.patches: list[list[dict[str, Any]]] = []
        self.before_patch: Callable[[], None] | None = None
        self.patch_status = 200

    def app(self) -> web.Application:
        app = web.Application()
        app.router.add_get("/v2/images/{id}", self.get)
        app.router.add_patch("/v2/images/{id}", self.patch)
        return app

    async def get(self, request: web.Request) -> web.Response:
        body: dict[str, Any] = {"id": IMAGE_ID, "status": "active", "disk_format": "raw",
                                "size": 1}
        if self.hidden:
            body["direct_url"] = self.urls[0]
        else:
            body["locations"] = [{"url": u, "metadata": {}} for u in self.urls]
        return web.json_response(body)

    async def patch(self, request: web.Request) -> web.Response:
        ops = await request.json()
        self.patches.append(ops)
        if self.before_patch is not None:
            self.before_patch()
            self.before_patch = None
        if self.patch_status >= 400:
            return web.Response(status=self.patch_status, text="store cannot open it")
        for op in ops:
            if op["op"] == "remove":
                del self.urls[int(op["path"].rsplit("/", 1)[1])]
            elif op["op"] == "add":
                self.urls.append(op["value"]["url"])
        return web.json_response({})


def run(glance: FakeGlance, action: Callable[[GlanceClient], Any]) -> Any:
    async def scenario() -> Any:
        runner = web.AppRunner(glance.app())
        await runner.setup()
        site = web.TCPSite(runner, "127.0.0.1", 0)
        await site.start()
        client = GlanceClient(f"http://127.0.0.1:{runner.addresses[0][1]}")
        try:
            return await action(client)
        finally:
            await client.close()
            await runner.cleanup()
    return asyncio.run(scenario())


def test_removing_our_location_leaves_the_others() -> None:
    glance = FakeGlance([GLANCES, OURS, OTHER])
    assert run(glance, lambda c: c.remove_location(IMAGE_ID, OURS)) is True
    assert glance.urls == [GLANCES, OTHER]


def test_a_location_removed_by_someone_else_meanwhile_is_a_conflict() -> None:
    """Between warmer's GET and its PATCH, another client removes the first
    location: warmer's index now names somebody else's location. Glance
    removes (and deletes the data of) that one; warmer must notice."""
    glance = FakeGlance([GLANCES, OURS, OTHER])
    glance.before_patch = lambda: glance.urls.pop(0)
    with pytest.raises(LocationConflict):
        run(glance, lambda c: c.remove_location(IMAGE_ID, OURS))


def test_a_location_added_by_another_daemon_meanwhile_is_no_conflict() -> None:
    glance = FakeGlance([GLANCES, OURS])
    glance.before_patch = lambda: glance.urls.append(OTHER)
    assert run(glance, lambda c: c.remove_location(IMAGE_ID, OURS)) is True
    assert glance.urls == [GLANCES, OTHER]


def test_hidden_locations_change_nothing() -> None:
    glance = FakeGlance([GLANCES, OURS])
    glance.hidden = True
    with pytest.raises(LocationsHidden):
        run(glance, lambda c: c.remove_location(IMAGE_ID, OURS))
    with pytest.raises(LocationsHidden):
        run(glance, lambda c: c.add_location(IMAGE_ID, OTHER, "other"))
    assert glance.patches == []


def test_adding_a_location_that_is_there_sends_nothing() -> None:
    glance = FakeGlance([GLANCES, OURS])
    run(glance, lambda c: c.add_location(IMAGE_ID, OURS, "edge"))
    assert glance.patches == []
    run(glance, lambda c: c.add_location(IMAGE_ID, OTHER, "other"))
    assert glance.urls == [GLANCES, OURS, OTHER] and len(glance.patches) == 1


def test_a_location_lost_by_a_concurrent_change_is_added_again() -> None:
    glance = FakeGlance([GLANCES])
    original_patch = glance.patch
    lost = []

    async def losing_patch(request: web.Request) -> web.Response:
        response = await original_patch(request)
        if not lost:  # a concurrent read-modify-write overwrote ours once
            lost.append(glance.urls.pop())
        return response
    glance.patch = losing_patch  # type: ignore[method-assign]
    run(glance, lambda c: c.add_location(IMAGE_ID, OURS, "edge"))
    assert glance.urls == [GLANCES, OURS] and len(glance.patches) == 2


def test_a_500_on_add_is_a_server_error() -> None:
    glance = FakeGlance([GLANCES])
    glance.patch_status = 500
    with pytest.raises(GlanceServerError):
        run(glance, lambda c: c.add_location(IMAGE_ID, OURS, "edge"))
