"""Glance's v2 API, as a user or an operator script would call it."""

from __future__ import annotations

import json
import time
import urllib.error
import urllib.parse
import urllib.request
from typing import Any

PATCH_TYPE = "application/openstack-images-v2.1-json-patch"


class GlanceError(RuntimeError):
    def __init__(self, status: int, body: str) -> None:
        super().__init__(f"HTTP {status}: {body[:500]}")
        self.status = status


class Glance:
    def __init__(self, url: str) -> None:
        self.url = url.rstrip("/")

    def _raw(self, method: str, path: str, body: Any = None,
             ctype: str = "application/json", headers: dict[str, str] | None = None) -> bytes:
        data = body if isinstance(body, bytes) or body is None else json.dumps(body).encode()
        req = urllib.request.Request(self.url + path, data=data, method=method,
                                     headers={"Content-Type": ctype, **(headers or {})})
        try:
            with urllib.request.urlopen(req, timeout=120) as resp:
                raw: bytes = resp.read()
        except urllib.error.HTTPError as exc:
            raise GlanceError(exc.code, exc.read().decode(errors="replace")) from exc
        return raw

    def _req(self, method: str, path: str, body: Any = None,
             ctype: str = "application/json", headers: dict[str, str] | None = None) -> Any:
        raw = self._raw(method, path, body, ctype, headers)
        return json.loads(raw) if raw else None

    def create(self, name: str, disk_format: str = "raw", **extra: Any) -> dict[str, Any]:
        body = {"name": name, "disk_format": disk_format, "container_format": "bare", **extra}
        result: dict[str, Any] = self._req("POST", "/v2/images", body)
        return result

    def upload(self, image_id: str, data: bytes, store: str | None = None) -> None:
        """Upload to Glance's default store, or to ``store``."""
        self._req("PUT", f"/v2/images/{image_id}/file", data, "application/octet-stream",
                  {"X-Image-Meta-Store": store} if store else None)

    def download(self, image_id: str, as_user: str | None = None) -> bytes:
        """``GET /v2/images/{id}/file``; Glance then sends ``image.send``.
        ``as_user`` makes the stack's auth stand-in treat the request as that
        Keystone user's (the default is the stack's admin, warmer's user)."""
        return self._raw("GET", f"/v2/images/{image_id}/file",
                         headers={"X-Stack-User-Id": as_user} if as_user else None)

    def get(self, image_id: str) -> dict[str, Any]:
        result: dict[str, Any] = self._req("GET", f"/v2/images/{image_id}")
        return result

    def patch(self, image_id: str, ops: list[dict[str, Any]]) -> dict[str, Any]:
        result: dict[str, Any] = self._req("PATCH", f"/v2/images/{image_id}", ops, PATCH_TYPE)
        return result

    def add_location(self, image_id: str, url: str, store: str) -> dict[str, Any]:
        return self.patch(image_id, [{"op": "add", "path": "/locations/-",
                                      "value": {"url": url, "metadata": {"store": store}}}])

    def add_tag(self, image_id: str, tag: str) -> None:
        self._req("PUT", f"/v2/images/{image_id}/tags/{tag}")

    def remove_tag(self, image_id: str, tag: str) -> None:
        """Glance with sqlite answers 500 now and then when two requests
        change one image at once (warmer may be adding a location)."""
        self._as_a_user_would("DELETE", f"/v2/images/{image_id}/tags/{tag}", {500}, 5.0)

    def ids(self, **filters: str) -> list[str]:
        """Every image id Glance lists with ``filters`` (all pages)."""
        query = urllib.parse.urlencode({"limit": "100", **filters})
        path, found = f"/v2/images?{query}", []
        while path:
            page = self._req("GET", path)
            found += [image["id"] for image in page["images"]]
            path = page.get("next", "")
        return found

    def delete(self, image_id: str) -> None:
        self._req("DELETE", f"/v2/images/{image_id}")

    def delete_eventually(self, image_id: str, timeout: float = 30.0) -> None:
        """Delete as a user would who tries again: Glance answers 409 ("in
        use through the backend store") while its RBD store cannot remove
        the image yet, and 500 when the delete races a location change
        (seen with sqlite)."""
        self._as_a_user_would("DELETE", f"/v2/images/{image_id}", {409, 500}, timeout)

    def _as_a_user_would(self, method: str, path: str, retry: set[int],
                         timeout: float) -> None:
        """``method path``, tried again every 0.5 s on the ``retry`` statuses
        until ``timeout``; a 404 means it is done already."""
        deadline = time.monotonic() + timeout
        while True:
            try:
                self._req(method, path)
                return
            except GlanceError as exc:
                if exc.status == 404:
                    return
                if exc.status not in retry or time.monotonic() > deadline:
                    raise
            time.sleep(0.5)
