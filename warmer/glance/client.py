"""A small asyncio client for the parts of Glance's v2 API warmer uses.

Glance notifications carry no locations, so whenever warmer is about to
act on an image it asks Glance for the image as it is now (status, format,
size and locations). With ``show_multiple_locations`` on, ``locations``
lists every location; otherwise only ``direct_url`` is there.
"""

from __future__ import annotations

import logging
from collections.abc import AsyncIterator
from dataclasses import dataclass
from typing import Any

import aiohttp

from warmer.events import ImageInfo, MalformedEvent, image_info
from warmer.locations import Location

LOG = logging.getLogger(__name__)


class GlanceUnavailable(Exception):
    """Glance did not answer usefully; the request may succeed later."""


class GlanceRefused(Exception):
    """Glance refused a change (4xx); trying again will not help by itself."""

    def __init__(self, status: int, message: str) -> None:
        super().__init__(message)
        self.status = status


@dataclass(frozen=True)
class GlanceImage:
    info: ImageInfo
    locations: tuple[Location, ...]


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
    return GlanceImage(info, tuple(locations))


class GlanceClient:
    def __init__(self, endpoint: str, *, timeout: float = 30.0,
                 max_connections: int = 8) -> None:
        self.endpoint = endpoint.rstrip("/")
        self._timeout = aiohttp.ClientTimeout(total=timeout)
        self._max_connections = max_connections
        self._session: aiohttp.ClientSession | None = None

    def _http(self) -> aiohttp.ClientSession:
        if self._session is None:
            self._session = aiohttp.ClientSession(
                timeout=self._timeout,
                # No connection reuse: servers and proxies in front of Glance
                # close idle connections (uwsgi after every response), and a
                # request written into one that just closed fails. warmer's
                # Glance traffic is light; a fresh connection each time is cheap.
                connector=aiohttp.TCPConnector(limit=self._max_connections, force_close=True),
                headers={"Accept": "application/json", "User-Agent": "warmer"})
        return self._session

    async def close(self) -> None:
        if self._session is not None:
            await self._session.close()
            self._session = None

    async def _get(self, path: str, params: dict[str, str] | None = None) -> Any:
        url = f"{self.endpoint}{path}"
        try:
            async with self._http().get(url, params=params) as resp:
                if resp.status == 404:
                    return None
                if resp.status >= 400:
                    text = (await resp.text())[:300]
                    raise GlanceUnavailable(f"GET {path}: HTTP {resp.status}: {text}")
                return await resp.json()
        except (TimeoutError, aiohttp.ClientError) as exc:
            raise GlanceUnavailable(f"GET {path}: {exc!r}") from exc

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

    async def _patch(self, image_id: str, ops: list[dict[str, Any]]) -> None:
        url = f"{self.endpoint}/v2/images/{image_id}"
        try:
            async with self._http().patch(
                    url, json=ops,
                    headers={"Content-Type": "application/openstack-images-v2.1-json-patch"},
            ) as resp:
                if resp.status >= 500:
                    text = (await resp.text())[:300]
                    raise GlanceUnavailable(f"PATCH image {image_id}: HTTP {resp.status}: "
                                            f"{text}")
                if resp.status >= 400:
                    text = (await resp.text())[:300]
                    raise GlanceRefused(resp.status, f"PATCH image {image_id}: {text}")
        except (TimeoutError, aiohttp.ClientError) as exc:
            raise GlanceUnavailable(f"PATCH image {image_id}: {exc!r}") from exc

    async def add_location(self, image_id: str, url: str, store: str) -> None:
        """Add ``url`` to the image's locations (JSON-patch on an active
        image), with the Glance store that stands for its cluster."""
        await self._patch(image_id, [{"op": "add", "path": "/locations/-",
                                      "value": {"url": url, "metadata": {"store": store}}}])

    async def remove_location(self, image_id: str, url: str) -> bool:
        """Remove ``url`` from the image's locations. False when it was not there."""
        image = await self.get_image(image_id)
        if image is None:
            return False
        urls = [loc.url for loc in image.locations]
        if url not in urls:
            return False
        await self._patch(image_id, [{"op": "remove", "path": f"/locations/{urls.index(url)}"}])
        return True

    def download(self, image_id: str) -> Any:
        """``async with client.download(id) as resp``: the image data, streamed."""
        return self._http().get(f"{self.endpoint}/v2/images/{image_id}/file",
                                timeout=aiohttp.ClientTimeout(total=None, sock_read=300),
                                headers={"Accept": "application/octet-stream"})

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
