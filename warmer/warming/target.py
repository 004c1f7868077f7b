"""One target: a Ceph cluster and pool where Cinder's RBD backend clones.

A target is warm for an image when one of the image's Glance locations is
in the target's cluster and passes Cinder's ``_is_cloneable`` checks
(DESIGN.md §1): a well-formed ``rbd://`` URL, the cluster's fsid,
``disk_format`` raw, and a snapshot Cinder's user can open read-only.
warmer also requires the snapshot to be protected, because a v1 clone of
an unprotected snapshot fails and Cinder does not fall back.

* **Same cluster** (a location already names this cluster): the only change
  warmer makes to a Glance-owned RBD image is to create or protect the
  snapshot that location names (invariant 2).
* **Elsewhere** (another cluster, or a store that is not RBD): copy the data
  into ``<pool>/warmer-tmp.<image_id>`` (marked as warmer's), verify it
  against Glance's hash, snapshot ``snap``, protect, mark complete, rename
  to ``<pool>/<image_id>``, and only then add
  ``rbd://<fsid>/<pool>/<image_id>/snap`` to the Glance image (invariant 1).
  A kill -9 at any point leaves at worst a temporary image, which
  :meth:`Target.clean_up` removes, or a complete unpublished copy, which the
  next evaluation publishes.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import uuid
from collections.abc import Awaitable, Callable
from dataclasses import dataclass
from typing import Any

from warmer.ceph import images as rbd_images
from warmer.ceph.bindings import errors as ceph_errors
from warmer.ceph.client import CephClient, CephUnavailable
from warmer.glance.client import GlanceClient, GlanceImage, GlanceRefused
from warmer.locations import RbdLocation, parse_rbd_url
from warmer.warming.copy import CopyError, CopyStats, HttpSource, RbdSource, Source, Verifier
from warmer.warming.copy import copy as copy_data

LOG = logging.getLogger(__name__)


@dataclass(frozen=True)
class TargetConfig:
    name: str
    pool: str
    glance_store: str
    repair_glance_snapshots: bool
    copy_images: bool = True
    copy_window: int = 4
    copy_lock_seconds: int = 120
    allow_unverified_copies: bool = False
    capacity_bytes: int = 0
    capacity_images: int = 0


@dataclass(frozen=True)
class TargetResult:
    state: str  # warm, cold, busy or error
    reason: str  # "cloneable" when warm
    location: str | None = None
    actions: tuple[str, ...] = ()
    copy: CopyStats | None = None


class Target:
    def __init__(self, config: TargetConfig, ceph: CephClient,
                 cinder_view: CephClient | None = None, *,
                 glance: GlanceClient | None = None,
                 sources: Callable[[], dict[str, CephClient]] | None = None,
                 owner: str | None = None) -> None:
        self.config = config
        self.ceph = ceph
        # Cinder's own user, when configured, for the read-only open check.
        self.cinder_view = cinder_view or ceph
        self.glance = glance
        # fsid -> a client that can read Glance's RBD images in that cluster.
        self._sources = sources or (lambda: {})
        # The lease cookie: stable per daemon name, so a restarted daemon
        # can renew (take over) the leases its previous life left.
        self.cookie = owner or uuid.uuid4().hex
        self.progress: dict[str, tuple[int, int]] = {}
        # Asked before a new copy: may (image_id, size) have room? The engine
        # answers, evicting lower-scored copies if it must.
        self.admit: Callable[[Target, str, int], Awaitable[bool]] | None = None
        self.on_copied: Callable[[Target, CopyStats], None] | None = None
        # Copies under way (image id -> size): they count against the budget
        # before they show up in the pool's inventory.
        self.reserved: dict[str, int] = {}

    @property
    def name(self) -> str:
        return self.config.name

    async def fsid(self) -> str:
        if self.ceph.fsid is None:
            await self.ceph.connect()
        assert self.ceph.fsid is not None
        return self.ceph.fsid

    def location_of(self, image_id: str, fsid: str) -> RbdLocation:
        return RbdLocation(fsid, self.config.pool, image_id, rbd_images.SNAPSHOT)

    async def warm(self, image: GlanceImage) -> TargetResult:
        """Make ``image`` cloneable here if it can be, and say why not."""
        if image.info.disk_format != "raw":
            return TargetResult("cold", "disk_format_not_raw")
        fsid = await self.fsid()
        rbd_locations = [loc for loc in (parse_rbd_url(x.url) for x in image.locations) if loc]
        local = [loc for loc in rbd_locations if loc.fsid == fsid]
        last = TargetResult("cold", "no_location_in_cluster")
        for loc in local:
            last = await self._warm_location(loc)
            if last.state == "warm":
                return last
        if local and last.reason != "rbd_image_missing":
            return last
        if not self.config.copy_images or self.glance is None:
            if not image.locations:
                return TargetResult("cold", "no_locations_visible")
            return last
        return await self._copy_and_publish(image, fsid, rbd_locations)

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

    # -- copies ---------------------------------------------------------------

    async def _copy_and_publish(self, image: GlanceImage, fsid: str,
                                rbd_locations: list[RbdLocation]) -> TargetResult:
        assert self.glance is not None
        image_id, pool = image.info.id, self.config.pool
        final = self.location_of(image_id, fsid)
        existing = await self.ceph.run("inspect", lambda c: rbd_images.inspect(c, pool, image_id))
        if existing is not None and not existing.owned:
            return TargetResult("cold", "name_taken_in_target", final.url)
        stats = None
        actions: list[str] = []
        if existing is None or existing.state != "complete" or not existing.protected:
            size = image.info.size or 0
            if self.admit is not None and not await self.admit(self, image_id, size):
                return TargetResult("cold", "over_budget", None)
            if not await self._lock(image_id):
                self.reserved.pop(image_id, None)
                return TargetResult("busy", "copy_in_progress_elsewhere", final.url)
            try:
                if existing is not None:  # ours, but not finished: start over
                    await self.ceph.run("remove", lambda c: rbd_images.remove_owned(
                        c, pool, image_id))
                stats = await self._copy(image, rbd_locations)
                actions.append("copied")
            except CopyError as exc:
                LOG.warning("target %s: copy of %s failed: %s", self.name, image_id, exc)
                return TargetResult("cold", exc.reason, None, tuple(actions))
            finally:
                self.reserved.pop(image_id, None)
                await self._unlock(image_id)
        if final.url not in {loc.url for loc in image.locations}:
            try:
                await self.glance.add_location(image_id, final.url, self.config.glance_store)
            except GlanceRefused as exc:
                if await self.glance.get_image(image_id) is None:
                    # Deleted while we copied: the copy is an orphan now.
                    await self.purge(image_id)
                    return TargetResult("cold", "image_deleted", None, tuple(actions), stats)
                LOG.warning("target %s: Glance refused location %s: %s", self.name,
                            final.url, exc)
                return TargetResult("cold", "publish_refused", final.url, tuple(actions),
                                    stats)
            actions.append("published_location")
            LOG.info("target %s: published %s for image %s", self.name, final.url, image_id)
        problem = await self.cinder_view.check_snapshot_readable(pool, image_id,
                                                                 rbd_images.SNAPSHOT)
        if problem is not None:
            return TargetResult("cold", problem, final.url, tuple(actions), stats)
        return TargetResult("warm", "cloneable", final.url, tuple(actions), stats)

    async def _copy(self, image: GlanceImage, rbd_locations: list[RbdLocation]) -> CopyStats:
        """Copy into the temporary image, verify, finish. Raises CopyError;
        whatever fails, the temporary image is removed."""
        info, pool = image.info, self.config.pool
        verifier = Verifier(info, allow_unverified=self.config.allow_unverified_copies)
        source, source_handle = await self._open_source(image, rbd_locations)
        if info.size is not None and source.size != info.size:
            if source_handle is not None:
                source_handle.close()
            raise CopyError("size_mismatch", f"source has {source.size} bytes, Glance says "
                                             f"{info.size}")
        renew = asyncio.create_task(self._renew_lock(info.id))
        target = await self.ceph.run("create", lambda c: rbd_images.create_temp(
            c, pool, info.id, source.size, source.description))
        finished = False
        try:
            LOG.info("target %s: copying image %s (%d bytes) from %s", self.name, info.id,
                     source.size, source.description)
            stats = await copy_data(
                source, self.ceph.guarded(target.image.write), verifier, self.ceph.executor,
                window=self.config.copy_window,
                progress=lambda done, size: self.progress.__setitem__(info.id, (done, size)))
            verified = verifier.verify()
            await self.ceph.run("finish", lambda c: rbd_images.finish(target, pool, info.id,
                                                                        verified))
            finished = True
            if self.on_copied is not None:
                self.on_copied(self, stats)
            LOG.info("target %s: image %s copied in %.1fs: %d bytes written, %d skipped "
                     "(holes %d, zeroes %d), %s", self.name, info.id, stats.seconds,
                     stats.written, stats.skipped, stats.skipped_holes, stats.skipped_zeros,
                     verified)
            return stats
        finally:
            renew.cancel()
            self.progress.pop(info.id, None)
            # Closes run off the loop (with a cluster gone, a close waits out
            # its op timeouts) and need no new connection to this target.
            if source_handle is not None:
                await self.ceph.offload(source_handle.close)
            if not finished:
                await self.ceph.offload(target.close)
                with contextlib.suppress(Exception):
                    await self.ceph.run("remove_temp", lambda c: rbd_images.remove_temp(
                        c, pool, info.id))

    async def _open_source(self, image: GlanceImage, rbd_locations: list[RbdLocation]
                           ) -> tuple[Source, rbd_images.OpenImage | None]:
        sources = self._sources()
        unreadable: tuple[type[BaseException], ...] = (*ceph_errors(), CephUnavailable)
        for loc in rbd_locations:
            client = sources.get(loc.fsid)
            if client is None:
                continue
            try:
                return await self._open_rbd_source(client, loc)
            except unreadable as exc:  # try the next one
                LOG.info("target %s: cannot read %s directly (%s)", self.name, loc, exc)
        assert self.glance is not None
        glance, image_id = self.glance, image.info.id
        if image.info.size is None:
            raise CopyError("size_unknown", "Glance does not know the image size")
        return HttpSource(lambda: glance.download(image_id), image.info.size,
                          f"glance {glance.endpoint}/v2/images/{image_id}/file"), None

    async def _open_rbd_source(self, client: CephClient, loc: RbdLocation
                               ) -> tuple[Source, rbd_images.OpenImage]:
        def open_image(cluster: Any) -> rbd_images.OpenImage:
            return rbd_images.OpenImage(cluster, loc.pool, loc.image, snapshot=loc.snapshot,
                                        read_only=True)
        handle = await client.run("open_source", open_image)

        def list_extents(cluster: Any) -> RbdSource:
            return RbdSource.open(handle, client.executor, f"rbd {loc}",
                                  max(1, self.config.copy_window // 2))
        try:
            return await client.run("extents", list_extents), handle
        except Exception:
            handle.close()
            raise

    async def _lock(self, image_id: str) -> bool:
        seconds = self.config.copy_lock_seconds
        return bool(await self.ceph.run("lock", lambda c: rbd_images.lock(
            c, self.config.pool, image_id, self.cookie, seconds)))

    async def _unlock(self, image_id: str) -> None:
        with contextlib.suppress(Exception):
            await self.ceph.run("unlock", lambda c: rbd_images.unlock(
                c, self.config.pool, image_id, self.cookie))

    async def _renew_lock(self, image_id: str) -> None:
        while True:
            await asyncio.sleep(self.config.copy_lock_seconds / 3)
            if not await self._lock(image_id):
                LOG.error("target %s: lost the copy lease for %s", self.name, image_id)

    # -- inventory and eviction -----------------------------------------------

    async def inventory(self) -> list[rbd_images.Owned]:
        """warmer's complete copies in this target's pool."""
        pool = self.config.pool
        owned = await self.ceph.run("list_owned", lambda c: rbd_images.list_owned(c, pool))
        return [o for o in owned if not o.name.startswith(rbd_images.TEMP_PREFIX)
                and o.glance_image == o.name]

    async def evict(self, image_id: str) -> str:
        """Take warmer's copy of ``image_id`` out of this target.

        Children always win: when the copy's snapshot has clones (or warmer
        cannot tell), nothing changes and ``has_children`` is returned, to be
        retried later. Otherwise the Glance location goes first (Glance then
        deletes the data itself, as it does for every location it drops),
        and whatever is left of warmer's copy is unprotected and removed.
        Returns ``removed``, ``gone``, ``has_children``, ``not_owned`` or
        ``glance_refused``.
        """
        pool = self.config.pool
        existing = await self.ceph.run("inspect", lambda c: rbd_images.inspect(c, pool, image_id))
        if existing is None:
            return "gone"
        if not existing.owned:
            return "not_owned"
        if existing.protected and await self._has_children(image_id):
            return "has_children"
        if self.glance is not None:
            url = self.location_of(image_id, await self.fsid()).url
            try:
                await self.glance.remove_location(image_id, url)
            except GlanceRefused as exc:
                LOG.info("target %s: Glance kept %s: %s", self.name, url, exc)
                return "glance_refused"
        result = await self.purge(image_id)
        # Dropping the location usually makes Glance delete the data itself.
        return "removed" if result == "gone" else result

    async def purge(self, image_id: str) -> str:
        """Remove warmer's copy of ``image_id`` (no Glance call): for images
        Glance no longer has. Children still win."""
        pool = self.config.pool
        try:
            result: str = await self.ceph.run("remove_owned", lambda c: rbd_images.remove_owned(
                c, pool, image_id))
        except ceph_errors() as exc:  # e.g. clones in a pool warmer cannot see
            LOG.warning("target %s: keeping %s/%s: %s", self.name, pool, image_id, exc)
            return "has_children"
        if result == "removed":
            LOG.info("target %s: removed warmer's copy %s/%s", self.name, pool, image_id)
        return result

    async def _has_children(self, image_id: str) -> bool:
        pool = self.config.pool
        try:
            kids = await self.ceph.run("children", lambda c: rbd_images.children(
                c, pool, image_id))
        except ceph_errors() as exc:  # cannot see every pool: assume there are clones
            LOG.warning("target %s: cannot list clones of %s/%s@snap (%s); keeping it",
                        self.name, pool, image_id, exc)
            return True
        return bool(kids)

    async def clean_up(self) -> list[str]:
        """Remove temporary images that no live copy holds (left by a crash).
        Safe with several daemons: a temp is removed only under its lease."""
        if not self.config.copy_images:
            return []
        pool = self.config.pool
        owned = await self.ceph.run("list_owned", lambda c: rbd_images.list_owned(
            c, pool, temporary_only=True))
        removed = []
        for item in owned:
            if item.glance_image is None:
                continue
            image_id: str = item.glance_image
            if not await self._lock(image_id):
                continue  # another daemon is copying it right now

            def remove(cluster: Any, image_id: str = image_id) -> bool:
                return rbd_images.remove_temp(cluster, pool, image_id)
            try:
                if await self.ceph.run("remove_temp", remove):
                    removed.append(item.name)
                    LOG.info("target %s: removed leftover %s/%s", self.name, pool, item.name)
            finally:
                await self._unlock(image_id)
        return removed
