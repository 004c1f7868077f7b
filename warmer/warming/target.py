"""One target: a Ceph cluster and pool where Cinder's RBD backend clones.

For issue-2 scope a target is warm for an image when one of the image's
Glance locations is in the target's cluster and passes Cinder's
``_is_cloneable`` checks (DESIGN.md §1): a well-formed ``rbd://`` URL, the
cluster's fsid, ``disk_format`` raw, and a snapshot Cinder's user can open
read-only. warmer also requires the snapshot to be protected, because a v1
clone of an unprotected snapshot fails and Cinder does not fall back.

The only change warmer makes to a Glance-owned RBD image is to create or
protect the snapshot that the image's own location names (invariant 2).
"""

from __future__ import annotations

import logging
from dataclasses import dataclass

from warmer.ceph.client import CephClient
from warmer.glance.client import GlanceImage
from warmer.locations import RbdLocation, parse_rbd_url

LOG = logging.getLogger(__name__)


@dataclass(frozen=True)
class TargetConfig:
    name: str
    pool: str
    glance_store: str
    repair_glance_snapshots: bool


@dataclass(frozen=True)
class TargetResult:
    state: str  # warm or cold
    reason: str  # "cloneable" when warm
    location: str | None = None
    actions: tuple[str, ...] = ()


class Target:
    def __init__(self, config: TargetConfig, ceph: CephClient,
                 cinder_view: CephClient | None = None) -> None:
        self.config = config
        self.ceph = ceph
        # Cinder's own user, when configured, for the read-only open check.
        self.cinder_view = cinder_view or ceph

    @property
    def name(self) -> str:
        return self.config.name

    async def fsid(self) -> str:
        if self.ceph.fsid is None:
            await self.ceph.connect()
        assert self.ceph.fsid is not None
        return self.ceph.fsid

    async def warm(self, image: GlanceImage) -> TargetResult:
        """Make ``image`` cloneable here if a location allows it, and say why not."""
        if image.info.disk_format != "raw":
            return TargetResult("cold", "disk_format_not_raw")
        fsid = await self.fsid()
        rbd_locations = [loc for loc in (parse_rbd_url(x.url) for x in image.locations) if loc]
        if not image.locations:
            return TargetResult("cold", "no_locations_visible")
        if not rbd_locations:
            return TargetResult("cold", "no_rbd_location")
        local = [loc for loc in rbd_locations if loc.fsid == fsid]
        if not local:
            return TargetResult("cold", "no_location_in_cluster")
        last = TargetResult("cold", "no_location_in_cluster")
        for loc in local:
            last = await self._warm_location(loc)
            if last.state == "warm":
                return last
        return last

    async def _warm_location(self, loc: RbdLocation) -> TargetResult:
        check = await self.ceph.ensure_protected_snapshot(
            loc.pool, loc.image, loc.snapshot, repair=self.config.repair_glance_snapshots)
        for action in check.actions:
            LOG.info("target %s: %s on %s", self.name, action, loc)
        if check.problem is not None:
            return TargetResult("cold", check.problem, loc.url, check.actions)
        problem = await self.cinder_view.check_snapshot_readable(loc.pool, loc.image,
                                                                 loc.snapshot)
        if problem is not None:
            return TargetResult("cold", problem, loc.url, check.actions)
        return TargetResult("warm", "cloneable", loc.url, check.actions)
