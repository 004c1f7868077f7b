"""A small asyncio client for the parts of Glance's v2 API warmer uses.

Glance notifications carry no locations, so whenever warmer is about to
act on an image it asks Glance for the image as it is now (status, format,
size and locations). With ``show_multiple_locations`` on, ``locations``
lists every location; otherwise only ``direct_url`` is there.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
from collections.abc import AsyncIterator
from dataclasses import dataclass
from typing import Any

import aiohttp

from warmer.events import ImageInfo, MalformedEvent, image_info
from warmer.glance.auth import GlanceAuth
from warmer.glance.redact import describe
from warmer.locations import Location

LOG = logging.getLogger(__name__)


class GlanceUnavailable(Exception):
    """Glance did not answer usefully; the request may succeed later."""


class GlanceServerError(GlanceUnavailable):
    """Glance answered a change with HTTP 5xx. For a location add that is
    also how Glance says it cannot open the location (DESIGN.md §4)."""


class LocationsHidden(Exception):
    """Glance does not show this image's locations (``show_multiple_locations``
    off): warmer cannot tell which are there, so it changes none."""


class LocationConflict(Exception):
    """The image's location list changed in a way warmer did not make while
    it removed its own location: hands off that image."""

    def __init__(self, image_id: str, url: str, before: list[str], after: list[str]) -> None:
        super().__init__(f"image {image_id}: removing {url} changed the locations from "
                         f"{before} to {after}")
        self.image_id = image_id


class GlanceRefused(Exception):
    """Glance refused a change (4xx); trying again will not help by itself."""

    def __init__(self, status: int, message: str) -> None:
        super().__init__(message)
        self.status = status


@dataclass(frozen=True)
class GlanceImage:
    info: ImageInfo
    locations: tuple[Location, ...]
    # False when Glance showed no ``locations`` list (only ``direct_url``, or
    # nothing): the list is then not the whole truth.
    locations_visible: bool = True


def parse_image(body: dict[str, Any]) -> GlanceImage:
    info = image_info(body)
    locations: list[Location] = []
    for loc in body.get("locations") or []:
        if isinstance(loc, dict) and isinstance(loc.get("url"), str):
            meta = loc.get("metadata")
            store = meta.get("store") if isinstance(meta, dict) else None
            store = store if isinstance(store, str) else None
            locations.append(Location(loc["url"], store))
    direct = body.get("direct_url")
    if isinstance(direct, str) and all(loc.url != direct for loc in locations):
        locations.append(Location(direct, None))
    return GlanceImage(info, tuple(locations), isinstance(body.get("locations"), list))


class GlanceClient:
    """Glance's v2 API over aiohttp, authenticated by :class:`GlanceAuth`
    (or not at all, with a plain ``endpoint``). A 401 drops the cached token
    and the request is tried once more with a new one."""

    def __init__(self, endpoint: str | None = None, *, auth: GlanceAuth | None = None,
                 timeout: float = 30.0, max_connections: int = 8) -> None:
        if auth is None and not endpoint:
            raise ValueError("GlanceClient needs an endpoint or an auth")
        self._fixed_endpoint = endpoint.rstrip("/") if endpoint else None
        self._auth = auth
        self._timeout = aiohttp.ClientTimeout(total=auth.timeout if auth else timeout)
        self._max_connections = max_connections
        self._session: aiohttp.ClientSession | None = None
        self._image_locks: dict[str, tuple[asyncio.Lock, int]] = {}

    @property
    def endpoint(self) -> str:
        return self._fixed_endpoint or "(from the service catalog)"

    def _http(self) -> aiohttp.ClientSession:
        if self._session is None:
            self._session = aiohttp.ClientSession(
                timeout=self._timeout,
                # No connection reuse: servers and proxies in front of Glance
                # close idle connections (uwsgi after every response), and a
                # request written into one that just closed fails. warmer's
                # Glance traffic is light; a fresh connection each time is cheap.
                connector=aiohttp.TCPConnector(
                    limit=self._max_connections, force_close=True,
                    ssl=self._auth.ssl if self._auth else True),
                headers={"Accept": "application/json", "User-Agent": "warmer"})
        return self._session

    async def close(self) -> None:
        if self._session is not None:
            await self._session.close()
            self._session = None

    async def _base(self) -> str:
        if self._fixed_endpoint:
            return self._fixed_endpoint
        assert self._auth is not None
        try:
            return await self._auth.endpoint()
        except Exception as exc:  # keystone unreachable, no catalog entry
            raise GlanceUnavailable(f"cannot find Glance's endpoint: {describe(exc)}") from exc

    async def _headers(self) -> dict[str, str]:
        if self._auth is None:
            return {}
        try:
            return await self._auth.headers()
        except Exception as exc:  # keystone unreachable or refusing
            raise GlanceUnavailable(f"cannot get a token for Glance: {describe(exc)}") from exc

    @contextlib.asynccontextmanager
    async def _request(self, method: str, path: str, **kwargs: Any
                       ) -> AsyncIterator[aiohttp.ClientResponse]:
        """One request, retried once with a fresh token after a 401."""
        extra = kwargs.pop("headers", {})
        for attempt in (1, 2):
            url = f"{await self._base()}{path}"
            headers = {**await self._headers(), **extra}
            try:
                async with self._http().request(method, url, headers=headers,
                                                **kwargs) as resp:
                    if resp.status == 401 and attempt == 1 and self._auth is not None:
                        self._auth.invalidate()
                        continue
                    yield resp
                    return
            except (TimeoutError, aiohttp.ClientError) as exc:
                # Never {exc!r}: aiohttp's repr shows the request's headers.
                raise GlanceUnavailable(f"{method} {path}: {describe(exc)}") from exc

    async def _get(self, path: str, params: dict[str, str] | None = None) -> Any:
        async with self._request("GET", path, params=params) as resp:
            if resp.status == 404:
                return None
            if resp.status >= 400:
                text = (await resp.text())[:300]
                raise GlanceUnavailable(f"GET {path}: HTTP {resp.status}: {text}")
            return await resp.json()

    async def get_image(self, image_id: str) -> GlanceImage | None:
        """The image as Glance has it now, or ``None`` when it is gone."""
        body = await self._get(f"/v2/images/{image_id}")
        if body is None:
            return None
        if not isinstance(body, dict):
            raise GlanceUnavailable(f"GET image {image_id}: not a JSON object")
        if body.get("status") in ("deleted", "pending_delete"):
            return None
        try:
            return parse_image(body)
        except MalformedEvent as exc:
            raise GlanceUnavailable(f"GET image {image_id}: {exc}") from exc

    async def image_body(self, image_id: str) -> dict[str, Any] | None:
        """``GET /v2/images/{id}`` as Glance answers it (``warmer doctor``
        reads ``direct_url`` and ``locations`` as Cinder would); None on 404."""
        body = await self._get(f"/v2/images/{image_id}")
        if body is not None and not isinstance(body, dict):
            raise GlanceUnavailable(f"GET image {image_id}: not a JSON object")
        return body

    async def image_locations(self, image_id: str) -> tuple[int, list[str] | None]:
        """``GET /v2/images/{id}/locations`` (Glance's locations API, the
        service role's by default): its HTTP status, and the URLs on 200."""
        async with self._request("GET", f"/v2/images/{image_id}/locations") as resp:
            if resp.status != 200:
                return resp.status, None
            body = await resp.json(content_type=None)
        if not isinstance(body, list):
            return resp.status, None
        return resp.status, [loc["url"] for loc in body
                             if isinstance(loc, dict) and isinstance(loc.get("url"), str)]

    async def _patch(self, image_id: str, ops: list[dict[str, Any]]) -> None:
        async with self._request(
                "PATCH", f"/v2/images/{image_id}", json=ops,
                headers={"Content-Type": "application/openstack-images-v2.1-json-patch"},
        ) as resp:
            if resp.status >= 500:
                text = (await resp.text())[:300]
                raise GlanceServerError(f"PATCH image {image_id}: HTTP {resp.status}: {text}")
            if resp.status >= 400:
                text = (await resp.text())[:300]
                raise GlanceRefused(resp.status, f"PATCH image {image_id}: {text}")

    @contextlib.asynccontextmanager
    async def _changing(self, image_id: str) -> AsyncIterator[None]:
        """One change to an image's locations at a time from this daemon:
        Glance applies a location PATCH as read-modify-write, and two at once
        (two targets publishing) can lose one."""
        lock, users = self._image_locks.get(image_id, (asyncio.Lock(), 0))
        self._image_locks[image_id] = (lock, users + 1)
        try:
            async with lock:
                yield
        finally:
            lock, users = self._image_locks[image_id]
            if users == 1:
                del self._image_locks[image_id]
            else:
                self._image_locks[image_id] = (lock, users - 1)

    async def add_location(self, image_id: str, url: str, store: str) -> None:
        """Add ``url`` to the image's locations (JSON-patch on an active
        image), with the Glance store that stands for its cluster, and check
        that it is there afterwards: a concurrent change (another daemon
        publishing another target) can make Glance lose it. Raises
        GlanceUnavailable when it did not stick, so the caller retries."""
        op = [{"op": "add", "path": "/locations/-",
               "value": {"url": url, "metadata": {"store": store}}}]
        async with self._changing(image_id):
            urls = await self._location_urls(image_id)
            if urls is None or url in urls:
                return  # gone (the caller finds out), or already there
            for _attempt in range(3):
                await self._patch(image_id, op)
                urls = await self._location_urls(image_id)
                if urls is None or url in urls:
                    return
                LOG.warning("image %s: location %s was lost by a concurrent change; "
                            "adding it again", image_id, url)
        raise GlanceUnavailable(f"image {image_id}: location {url} does not stick")

    async def remove_location(self, image_id: str, url: str) -> bool | None:
        """Remove ``url`` from the image's locations. False when it was not
        there; None when Glance answered 404 for the image (which is not a
        delete: the caller must not act on it as one).

        Glance's JSON-patch removes a location by index, and Glance deletes
        the data of every location it drops. So the list is read just before
        the PATCH and again after it: if anything but ``url`` changed in
        between, somebody else's location may have gone, and
        :class:`LocationConflict` is raised for the caller to stop touching
        the image. (The caller holds the image's copy lease, so no other
        warmer daemon changes the list meanwhile.)
        """
        async with self._changing(image_id):
            before = await self._location_urls(image_id)
            if before is None:
                return None
            if url not in before:
                return False
            index = before.index(url)
            await self._patch(image_id, [{"op": "remove", "path": f"/locations/{index}"}])
            after = await self._location_urls(image_id)
        # Another daemon adding its own location meanwhile is harmless; a
        # location that was there and is gone (not ours) is not.
        lost = [u for u in before if u != url and u not in (after or [])]
        if after is not None and (lost or url in after):
            raise LocationConflict(image_id, url, before, after)
        return True

    async def _location_urls(self, image_id: str) -> list[str] | None:
        """The image's location URLs; None when the image is gone. Raises
        LocationsHidden when Glance does not show the list."""
        image = await self.get_image(image_id)
        if image is None:
            return None
        if not image.locations_visible:
            raise LocationsHidden(f"image {image_id}: Glance shows no locations list "
                                  "(show_multiple_locations is off)")
        return [loc.url for loc in image.locations]

    async def stores_detail(self) -> list[dict[str, Any]] | None:
        """Glance's stores with their properties (``GET /v2/info/stores/detail``,
        admin only). ``None`` when this Glance does not offer it (a single
        store, or no admin role)."""
        async with self._request("GET", "/v2/info/stores/detail") as resp:
            if resp.status in (403, 404):
                return None
            if resp.status >= 400:
                raise GlanceUnavailable(f"GET stores: HTTP {resp.status}")
            body = await resp.json(content_type=None)
        stores = body.get("stores") if isinstance(body, dict) else None
        if not isinstance(stores, list):
            raise GlanceUnavailable("GET stores: no list of stores in the answer")
        return [s for s in stores if isinstance(s, dict)]

    async def answers_image_list(self) -> bool:
        """Whether the endpoint answers ``GET /v2/images`` the way Glance does
        (a JSON object with a list of images): a known-good request."""
        try:
            body = await self._get("/v2/images", {"limit": "1"})
        except GlanceUnavailable:
            return False
        return isinstance(body, dict) and isinstance(body.get("images"), list)

    @contextlib.asynccontextmanager
    async def download(self, image_id: str) -> AsyncIterator[aiohttp.ClientResponse]:
        """``async with client.download(id) as resp``: the image data, streamed."""
        async with self._request("GET", f"/v2/images/{image_id}/file",
                                 timeout=aiohttp.ClientTimeout(total=None, sock_read=300),
                                 headers={"Accept": "application/octet-stream"}) as resp:
            if resp.status >= 400:
                raise GlanceUnavailable(f"GET image {image_id} data: HTTP {resp.status}")
            yield resp

    async def list_images(self, **filters: str) -> AsyncIterator[GlanceImage]:
        """Every image matching Glance's list filters, following pagination."""
        params: dict[str, str] | None = {"limit": "200", **filters}
        path: str | None = "/v2/images"
        while path:
            body = await self._get(path, params)
            if not isinstance(body, dict):
                return
            for raw in body.get("images") or []:
                try:
                    yield parse_image(raw)
                except MalformedEvent as exc:
                    LOG.warning("Glance listed an image warmer cannot read: %s", exc)
            nxt = body.get("next")
            path, params = (nxt, None) if isinstance(nxt, str) and nxt else (None, None)
