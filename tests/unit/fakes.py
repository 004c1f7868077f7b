"""Fakes behind the same interfaces as the real Glance and Ceph clients."""

from __future__ import annotations

from collections.abc import AsyncIterator
from dataclasses import dataclass, field
from typing import Any

from warmer.ceph.client import CephUnavailable, SnapshotCheck
from warmer.events import ImageInfo
from warmer.glance.client import GlanceImage
from warmer.locations import Location


@dataclass
class FakeRbdImage:
    snapshots: dict[str, bool] = field(default_factory=dict)  # name -> protected
    data: bytes = b"data"


class FakeCeph:
    """A cluster with an fsid and RBD images keyed by (pool, name)."""

    def __init__(self, fsid: str = "fsid-central") -> None:
        self.fsid: str | None = fsid
        self.images: dict[tuple[str, str], FakeRbdImage] = {}
        self.calls: list[str] = []
        self.down = False
        self.readable = True

    async def connect(self) -> str:
        self.calls.append("connect")
        assert self.fsid
        return self.fsid

    async def probe(self) -> None:
        if self.down:
            raise CephUnavailable("down")

    async def ensure_protected_snapshot(self, pool: str, image: str, snapshot: str,
                                        *, repair: bool) -> SnapshotCheck:
        self.calls.append(f"ensure {pool}/{image}@{snapshot}")
        if self.down:
            raise CephUnavailable("down")
        img = self.images.get((pool, image))
        if img is None:
            return SnapshotCheck("rbd_image_missing")
        if img.snapshots.get(snapshot) is True:
            return SnapshotCheck()
        if not repair:
            return SnapshotCheck("snapshot_missing" if snapshot not in img.snapshots
                                 else "snapshot_unprotected")
        actions = []
        if snapshot not in img.snapshots:
            actions.append("created_snapshot")
        img.snapshots[snapshot] = True
        actions.append("protected_snapshot")
        return SnapshotCheck(None, tuple(actions))

    async def check_snapshot_readable(self, pool: str, image: str, snapshot: str) -> str | None:
        self.calls.append(f"read {pool}/{image}@{snapshot}")
        if not self.readable:
            return "cinder_user_cannot_read"
        img = self.images.get((pool, image))
        if img is None or snapshot not in img.snapshots:
            return "snapshot_not_readable"
        return None if img.snapshots[snapshot] else "snapshot_unprotected"

    def close(self) -> None:
        pass


class FakeGlance:
    """Glance's API as warmer uses it. ``wrong_endpoint``: every request is
    answered 404, as by a proxy or a misconfigured endpoint."""

    def __init__(self, fsids: dict[str, str] | None = None) -> None:
        self.images: dict[str, GlanceImage] = {}
        self.gets: list[str] = []
        self.listings: list[dict[str, str]] = []
        self.down = False
        self.wrong_endpoint = False
        # Another region's Glance on the same Ceph clusters: the stores
        # match, every image of ours is a 404.
        self.other_region = False
        self.fsids = fsids if fsids is not None else {"central": "fsid-central",
                                                      "edge": "fsid-edge"}
        self.added: list[tuple[str, str, str]] = []
        self.removed: list[tuple[str, str]] = []
        # Called with (image_id, url) before a location is added: lets a test
        # look at Ceph at the moment of publication.
        self.on_add: Any = None
        self.hidden = False  # show_multiple_locations off
        self.add_error: Exception | None = None

    async def stores_detail(self) -> list[dict[str, Any]] | None:
        from warmer.glance.client import GlanceUnavailable
        if self.down:
            raise GlanceUnavailable("down")
        if self.wrong_endpoint:
            return None
        return [{"id": store, "type": "rbd", "properties": {"pool": "images", "fsid": fsid}}
                for store, fsid in self.fsids.items()]

    async def answers_image_list(self) -> bool:
        return not self.down and not self.wrong_endpoint

    async def add_location(self, image_id: str, url: str, store: str) -> None:
        from warmer.glance.client import LocationsHidden
        if self.hidden:
            raise LocationsHidden("hidden")
        if self.add_error is not None:
            raise self.add_error
        if url in {loc.url for loc in self.images[image_id].locations}:
            return
        if self.on_add is not None:
            self.on_add(image_id, url)
        self.added.append((image_id, url, store))
        image = self.images[image_id]
        self.images[image_id] = GlanceImage(image.info, (*image.locations, Location(url, store)))

    async def remove_location(self, image_id: str, url: str) -> bool | None:
        from warmer.glance.client import LocationsHidden
        if self.hidden:
            raise LocationsHidden("hidden")
        image = self.images.get(image_id)
        if image is None or self.wrong_endpoint or self.other_region:
            return None
        if url not in {loc.url for loc in image.locations}:
            return False
        self.removed.append((image_id, url))
        self.images[image_id] = GlanceImage(
            image.info, tuple(loc for loc in image.locations if loc.url != url))
        return True

    def add(self, info: ImageInfo, *urls: str) -> None:
        self.images[info.id] = GlanceImage(info, tuple(Location(u, "central") for u in urls))

    async def get_image(self, image_id: str) -> GlanceImage | None:
        from warmer.glance.client import GlanceUnavailable
        self.gets.append(image_id)
        if self.down:
            raise GlanceUnavailable("down")
        if self.wrong_endpoint or self.other_region:
            return None
        return self.images.get(image_id)

    async def list_images(self, **filters: str) -> AsyncIterator[GlanceImage]:
        self.listings.append(filters)
        if self.down:
            from warmer.glance.client import GlanceUnavailable
            raise GlanceUnavailable("down")
        ids = filters.get("id")
        for image in list(self.images.values()):
            if ids is not None and image.info.id not in ids.removeprefix("in:").split(","):
                continue
            tag = filters.get("tag")
            if tag is not None and tag not in image.info.tags:
                continue
            props = {k: v for k, v in filters.items() if k not in ("tag", "limit", "id")}
            if any(image.info.properties.get(k) != v for k, v in props.items()):
                continue
            yield image

    async def close(self) -> None:
        pass
