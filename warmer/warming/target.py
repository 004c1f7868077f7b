"""One target: a Ceph cluster where Cinder's RBD backend clones.

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
  into the *copy pool*, the pool of this cluster's Glance RBD store (where
  Glance's own ``copy-image`` writes; warmer never writes Cinder's pool,
  invariant 7): ``warmer-tmp.<image_id>`` (registered and stamped as
  warmer's first), verified against Glance's hash, snapshot ``snap``,
  protected, marked complete, renamed to ``<image_id>``, and only then
  ``rbd://<fsid>/<copy pool>/<image_id>/snap`` is added to the Glance image
  (invariant 1), after one more check that it is complete and protected.
  A kill -9 at any point leaves at worst a temporary image or a registry
  entry, which :meth:`Target.clean_up` removes, or a complete unpublished
  copy, which the next evaluation publishes.

Everything that removes or changes warmer's copies holds the image's copy
lease in that pool, and goes through :mod:`warmer.ceph.ownership`.
"""

from __future__ import annotations

import asyncio
import collections
import contextlib
import dataclasses
import errno
import functools
import logging
import uuid
from collections.abc import AsyncIterator, Awaitable, Callable
from dataclasses import dataclass
from typing import Any, Protocol, TypeVar

from warmer.ceph import images as rbd_images
from warmer.ceph.bindings import errors as ceph_errors
from warmer.ceph.client import CephClient, CephUnavailable
from warmer.glance.client import (
    GlanceClient,
    GlanceImage,
    GlanceRefused,
    GlanceServerError,
    GlanceUnavailable,
    LocationsHidden,
)
from warmer.glance.stores import StoreCatalog
from warmer.ids import is_canonical_image_id
from warmer.locations import RbdLocation, parse_rbd_url
from warmer.state.store import SourceSnapshot
from warmer.warming.copy import (
    CopyError,
    CopyStats,
    HttpSource,
    RbdSource,
    Verifier,
    Writer,
    outlast,
)
from warmer.warming.fanout import Copied, Fanout, OpenedSource
from warmer.warming.records import CopyRecords

LOG = logging.getLogger(__name__)
T = TypeVar("T")

# The copy leases this process holds, by (fsid, pool, image id). Every
# target of a daemon uses one cookie, so RADOS alone cannot tell two tasks
# of the same daemon apart; this book does.
_PROCESS_LEASES: set[tuple[str, str, str]] = set()

# errnos that mean "the pool is full": its quota (EDQUOT) or the cluster (ENOSPC).
_FULL = (errno.EDQUOT, errno.ENOSPC)


@dataclass(frozen=True)
class TargetConfig:
    name: str
    pool: str  # Cinder's pool (rbd_pool): warmer only reads it, to list clones
    glance_store: str
    repair_glance_snapshots: bool
    copy_images: bool = True
    copy_window: int = 4
    copy_lock_seconds: int = 120
    allow_unverified_copies: bool = False
    capacity_bytes: int = 0
    capacity_images: int = 0
    copy_pool: str | None = None  # None: the pool of the Glance store glance_store


@dataclass(frozen=True)
class TargetResult:
    state: str  # warm, cold, busy or error
    reason: str  # "cloneable" when warm
    location: str | None = None
    actions: tuple[str, ...] = ()
    copy: CopyStats | None = None
    detail: str | None = None  # what Glance or Ceph said, when it says more than reason


class TargetProblem(Exception):
    """This target cannot copy now; ``reason`` says why."""

    def __init__(self, reason: str, detail: str = "") -> None:
        super().__init__(f"{reason}: {detail}" if detail else reason)
        self.reason = reason
        self.detail = detail


class Room(Protocol):
    """A target's capacity budget, as a copy sees it (warming/budget.py)."""

    async def admit(self, target: Target, image_id: str, size: int) -> bool:
        """Room for a new copy of ``image_id`` (``size`` bytes), reserved
        until :meth:`release`; False when the budget cannot hold it."""

    def release(self, target: Target, image_id: str) -> None:
        """The copy ended, made or not (no reservation: nothing happens)."""


class Target:
    def __init__(self, config: TargetConfig, ceph: CephClient,
                 cinder_view: CephClient | None = None, *,
                 glance: GlanceClient | None = None,
                 stores: StoreCatalog | None = None,
                 sources: Callable[[], dict[str, CephClient]] | None = None,
                 owner: str | None = None,
                 leases: set[tuple[str, str, str]] | None = None) -> None:
        self.config = config
        self.ceph = ceph
        # Cinder's own user, when configured, for the read-only open check.
        self.cinder_view = cinder_view or ceph
        self.glance = glance
        self._stores = stores
        # fsid -> a client that can read Glance's RBD images in that cluster.
        self._sources = sources or (lambda: {})
        # The lease cookie: the daemon's name (who holds a lease is shown
        # by it); a lease under it is never broken, only waited out.
        self.cookie = owner or uuid.uuid4().hex
        self.progress: dict[str, tuple[int, int]] = {}
        # Set by the engine: asked for room before a new copy (it may evict
        # copies worth less); None: no budget, every copy has room.
        self.budget: Room | None = None
        # Set by the service, for its metrics; must not raise. Told of each
        # finished copy (whatever happens to its publication), and of how
        # each copy was checked (Verifier.outcome: verified,
        # skipped_verified, mismatch, unverified).
        self.on_copied: Callable[[Target, CopyStats], None] | None = None
        self.on_checked: Callable[[Target, str], None] | None = None
        # Set by the service: verified source snapshots and copy costs in
        # the shared state. None: every copy hashes, nothing is recorded.
        self.records: CopyRecords | None = None
        # Copy leases held by this process, shared by all its targets.
        self._leases = leases if leases is not None else _PROCESS_LEASES
        # Set by the service: one guard for location changes, shared by all
        # targets (its lock lives in one target's pool).
        self.location_guard: LocationGuard | None = None
        # Copies that failed in a way that repeats for as long as Glance
        # shows the image the same way (its data does not match what Glance
        # recorded): image id -> (that view, the result). Not tried again,
        # and no room asked of the budget, until the view changes: each
        # try would evict a working copy for nothing.
        self._failed: collections.OrderedDict[str, tuple[tuple[Any, ...], TargetResult]] = \
            collections.OrderedDict()

    @property
    def name(self) -> str:
        return self.config.name

    async def fsid(self) -> str:
        if self.ceph.fsid is None:
            await self.ceph.connect()
        assert self.ceph.fsid is not None
        return self.ceph.fsid

    async def copy_pool(self) -> str:
        """The pool warmer's copies live in: ``copy_pool`` when set, else
        the pool of this cluster's Glance RBD store. Raises TargetProblem
        when Glance does not say, or says the store is another cluster."""
        if self.config.copy_pool:
            return self.config.copy_pool
        if self._stores is None:
            raise TargetProblem("copy_pool_unknown", "no Glance store catalog")
        store = await self._stores.store(self.config.glance_store)
        if store is None or store.type != "rbd" or not store.pool:
            raise TargetProblem("copy_pool_unknown",
                                f"Glance has no RBD store {self.config.glance_store!r} with a "
                                "pool (set copy_pool, or glance_store to the right store id)")
        fsid = await self.fsid()
        if store.fsid and store.fsid != fsid:
            raise TargetProblem("glance_store_mismatch",
                                f"Glance store {store.id} is cluster {store.fsid}, this "
                                f"target's cluster is {fsid}")
        return store.pool

    def location_of(self, image_id: str, fsid: str, pool: str) -> RbdLocation:
        return RbdLocation(fsid, pool, image_id, rbd_images.SNAPSHOT)

    async def warm(self, image: GlanceImage, fanout: Fanout | None = None) -> TargetResult:
        """Make ``image`` cloneable here if it can be, and say why not. A copy
        reads its source through ``fanout``, shared with the other targets
        the engine warms the image in at the same time (warming/fanout.py);
        without one, it reads on its own. Whatever happens, this target has
        left ``fanout`` when this returns."""
        if fanout is None:
            async with Fanout(image.info, [self.name],
                              window=self.config.copy_window) as alone:
                return await self.warm(image, alone)
        try:
            return await self._warm(image, fanout)
        finally:
            fanout.leave(self.name)

    async def _warm(self, image: GlanceImage, fanout: Fanout) -> TargetResult:
        if image.info.disk_format != "raw":
            return TargetResult("cold", "disk_format_not_raw")
        fsid = await self.fsid()
        rbd_locations = [loc for loc in (parse_rbd_url(x.url) for x in image.locations) if loc]
        local = [loc for loc in rbd_locations if loc.fsid == fsid]
        if local:
            # The image is in this cluster: it copies only if that RBD image
            # is gone (then it may still join, or read on its own). The
            # other targets' read must not wait for these checks.
            fanout.leave(self.name)
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
        try:
            return await self._copy_and_publish(image, fsid, rbd_locations, fanout)
        except TargetProblem as exc:
            return TargetResult("cold", exc.reason, detail=exc.detail)

    async def _may_repair(self, loc: RbdLocation) -> bool:
        """Repair (create or protect a snapshot) only in the pool of this
        cluster's Glance store, where Glance keeps its images: a location may
        name any pool, Cinder's included, and a protected snapshot on a
        volume would keep Cinder from deleting it."""
        if not self.config.repair_glance_snapshots or self._stores is None:
            return False
        try:
            store = await self._stores.store(self.config.glance_store)
        except GlanceUnavailable:
            return False
        return store is not None and store.type == "rbd" and loc.pool == store.pool

    async def _warm_location(self, loc: RbdLocation) -> TargetResult:
        check = await self.ceph.ensure_protected_snapshot(
            loc.pool, loc.image, loc.snapshot, repair=await self._may_repair(loc))
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

    @contextlib.asynccontextmanager
    async def _locations(self, image_id: str) -> AsyncIterator[bool]:
        if self.location_guard is None:
            yield True  # a single target: nothing else changes this image's list
            return
        async with self.location_guard.held(image_id) as held:
            yield held

    async def _inspect(self, pool: str, name: str) -> rbd_images.Inspection | None:
        return await self.ceph.run("inspect", lambda c: rbd_images.inspect(c, pool, name))

    async def _copy_and_publish(self, image: GlanceImage, fsid: str,
                                rbd_locations: list[RbdLocation],
                                fanout: Fanout) -> TargetResult:
        """Copy (if needed) and publish, holding the image's copy lease from
        the copy through the publication, so that no eviction (by another
        daemon, or by this one) can remove what is being published."""
        image_id = image.info.id
        pool = await self.copy_pool()
        final = self.location_of(image_id, fsid, pool)
        existing = await self._inspect(pool, image_id)
        if existing is not None and not existing.owned:
            return TargetResult("cold", "name_taken_in_target", final.url,
                                detail=f"{pool}/{image_id}: {existing.why_not}")
        failed = self._failed.get(image_id)
        if failed is not None and not _complete(existing):
            if failed[0] == _view(image):
                return failed[1]
            del self._failed[image_id]  # Glance's view changed: try again
        try:
            if not _complete(existing):
                if await self.ceph.pool_full(pool):
                    # Writes would only block: no copy, no leftovers, no loop
                    # (the next try comes with new demand or reconciliation).
                    return TargetResult("cold", "target_full", None,
                                        detail=f"pool {pool} is full (quota or space)")
                # A copy that could never be verified must not evict one
                # that works (a pinned image is worth every other copy).
                try:
                    Verifier(image.info, allow_unverified=self.config.allow_unverified_copies)
                except CopyError as exc:
                    return TargetResult("cold", exc.reason, None, detail=str(exc))
                size = image.info.size or 0
                if self.budget is not None and not await self.budget.admit(
                        self, image_id, size):
                    return TargetResult("cold", "over_budget", None)
            async with self._leased(pool, image_id) as lease:
                if lease is None:
                    return TargetResult("busy", "copy_in_progress_elsewhere", final.url)
                try:
                    return await self._copy_and_publish_leased(image, pool, final,
                                                               rbd_locations, lease, fanout)
                except LeaseLost:
                    return TargetResult("busy", "lease_lost", None,
                                        detail="the copy lease could not be renewed")
        finally:
            if self.budget is not None:
                self.budget.release(self, image_id)

    async def _copy_and_publish_leased(self, image: GlanceImage, pool: str,
                                       final: RbdLocation, rbd_locations: list[RbdLocation],
                                       lease: Lease, fanout: Fanout) -> TargetResult:
        image_id = image.info.id
        stats = None
        actions: list[str] = []
        # Under the lease now: another daemon may have finished it meanwhile.
        existing = await self._inspect(pool, image_id)
        if existing is not None and not existing.owned:
            return TargetResult("cold", "name_taken_in_target", final.url,
                                detail=f"{pool}/{image_id}: {existing.why_not}")
        if not _complete(existing):
            try:
                if existing is not None:  # ours, but not finished: start over
                    await self._confirm(lease)
                    removed = await self.ceph.run("remove", lambda c: rbd_images.remove_owned(
                        c, pool, image_id))
                    if removed not in ("removed", "gone"):
                        return TargetResult("cold", "stale_copy_kept", None,
                                            detail=f"{pool}/{image_id}: {removed}")
                stats = await self._copy(image, pool, rbd_locations, lease, fanout)
                actions.append("copied")
            except CopyError as exc:
                LOG.warning("target %s: copy of %s failed: %s", self.name, image_id, exc)
                result = TargetResult("cold", exc.reason, None, tuple(actions), detail=str(exc))
                if exc.reason in REPEATING_FAILURES:
                    self._remember_failure(image, dataclasses.replace(
                        result, detail=f"{exc}; not tried again until Glance's image "
                                       "(checksum, size or locations) changes"))
                return result
            except rbd_images.NotOwned as exc:
                LOG.error("target %s: %s", self.name, exc)
                return TargetResult("cold", "name_taken_in_target", None, detail=str(exc))
            except ceph_errors() as exc:
                LOG.warning("target %s: copy of %s failed: %s", self.name, image_id, exc)
                return TargetResult("error", "ceph_error", None, tuple(actions),
                                    detail=str(exc))
        refused = await self._publish(image_id, pool, final, lease)
        if refused is not None:
            return dataclasses.replace(refused, actions=tuple(actions), copy=stats)
        if final.url not in {loc.url for loc in image.locations}:
            actions.append("published_location")
        problem = await self.cinder_view.check_snapshot_readable(pool, image_id,
                                                                 rbd_images.SNAPSHOT)
        if problem is not None:
            return TargetResult("cold", problem, final.url, tuple(actions), stats)
        return TargetResult("warm", "cloneable", final.url, tuple(actions), stats)

    def _remember_failure(self, image: GlanceImage, result: TargetResult) -> None:
        self._failed[image.info.id] = (_view(image), result)
        self._failed.move_to_end(image.info.id)
        while len(self._failed) > MAX_REMEMBERED_FAILURES:
            self._failed.popitem(last=False)

    async def _publish(self, image_id: str, pool: str, final: RbdLocation,
                       lease: Lease) -> TargetResult | None:
        """Add ``final`` to the Glance image, after checking once more that
        what it names is warmer's, complete and protected (invariant 1).
        None when published; else why not."""
        assert self.glance is not None
        copy_ = await self._inspect(pool, image_id)
        if not _complete(copy_):
            LOG.error("target %s: not publishing %s: the copy is not complete and protected "
                      "(%s)", self.name, final.url, copy_)
            return TargetResult("cold", "copy_incomplete", None)
        try:
            async with self._locations(image_id) as held:
                if not held:
                    return TargetResult("busy", "locations_busy", None)
                await self._confirm(lease)  # right before the change
                await self.glance.add_location(image_id, final.url, self.config.glance_store)
        except LocationsHidden as exc:
            return TargetResult("cold", "locations_hidden", None, detail=str(exc))
        except GlanceServerError as exc:
            # Glance answers 500 when its store user cannot open the copy
            # (DESIGN.md §4): a refusal, backed off, not an outage.
            LOG.warning("target %s: Glance failed to add %s: %s", self.name, final.url, exc)
            return TargetResult("cold", "publish_refused", final.url, detail=str(exc))
        except GlanceRefused as exc:
            if await self.glance.get_image(image_id) is None:
                # Deleted while we copied (or a 404 from a wrong endpoint):
                # the engine decides whether the copy goes.
                return TargetResult("cold", "image_deleted", None)
            LOG.warning("target %s: Glance refused location %s: %s", self.name,
                        final.url, exc)
            return TargetResult("cold", "publish_refused", final.url, detail=str(exc))
        LOG.info("target %s: published %s for image %s", self.name, final.url, image_id)
        return None

    async def _copy(self, image: GlanceImage, pool: str, rbd_locations: list[RbdLocation],
                    lease: Lease, fanout: Fanout) -> CopyStats:
        """Copy into the temporary image, verify, finish, under the copy
        lease (held by the caller, renewed here). ``fanout`` reads and
        hashes the source, for this target and for the others that copy
        the image at the same time. Raises CopyError; whatever fails, the
        temporary image is removed. A lease that cannot be renewed cancels
        this copy (``lease_lost``), never the others': another daemon may
        take over, and two writers must never share an image."""
        info = image.info
        target: rbd_images.OpenImage | None = None
        finished = lease_lost = False
        copying: asyncio.Task[Copied] | None = None
        lost = asyncio.create_task(lease.lost.wait())
        try:
            source = await fanout.source(
                self.name, lambda: self._open_source(image, rbd_locations), self.records)
            try:
                # Opening the source (and asking whether its snapshot was
                # verified before) may have taken seconds, and create_temp
                # removes the temporary image, which is the new holder's if
                # the lease was lost meanwhile.
                await self._confirm(lease)
            except LeaseLost:
                lease_lost = True
                raise CopyError("lease_lost", "the copy lease could not be renewed") from None
            target = await self._ceph_step(pool, "create", lambda c: rbd_images.create_temp(
                c, pool, info.id, source.size, source.description, self.cookie))
            LOG.info("target %s: copying image %s (%d bytes) from %s into %s", self.name,
                     info.id, source.size, source.description, pool)
            writer = Writer(self.ceph.guarded(target.image.write), self.ceph.executor,
                            lambda done, size: self.progress.__setitem__(info.id, (done, size)))
            copying = asyncio.create_task(fanout.copy(self.name, writer))
            await asyncio.wait({copying, lost}, return_when=asyncio.FIRST_COMPLETED)
            if not copying.done():
                await _settle(copying)  # this target drops out; the read goes on
                lease_lost = True
                raise CopyError("lease_lost", "the copy lease could not be renewed")
            try:
                copied = await self._ceph_result(pool, copying)
            except CopyError as exc:
                if exc.reason == "checksum_mismatch" and self.on_checked is not None:
                    self.on_checked(self, "mismatch")
                raise
            stats = copied.stats
            if self.on_checked is not None:
                self.on_checked(self, copied.outcome)
            try:
                await self._confirm(lease)
            except LeaseLost:
                lease_lost = True
                raise CopyError("lease_lost", "the copy lease could not be renewed") from None
            # Runs to its end even if this task is cancelled (a stop): it
            # uses the open image on a thread, and the clean-up below closes
            # that image, which must never happen under a running call.
            opened = target
            await _to_the_end(self._ceph_step(pool, "finish", lambda c: rbd_images.finish(
                c, opened, pool, info.id, self.cookie, copied.stamp)))
            finished = True
            if self.on_copied is not None:
                self.on_copied(self, stats)
            LOG.info("target %s: image %s copied in %.1fs: %d bytes written, %d skipped "
                     "(holes %d, zeroes %d), %s (%s)%s", self.name, info.id, stats.seconds,
                     stats.written, stats.skipped, stats.skipped_holes, stats.skipped_zeros,
                     copied.digest, copied.outcome,
                     f", one read for {stats.fanout} targets" if stats.fanout > 1 else "")
            if self.records is not None:
                await self.records.copied(self.name, info.id, stats, copied.digest,
                                          copied.outcome)
            return stats
        finally:
            fanout.leave(self.name)  # the read need not wait for this target any more
            lost.cancel()
            held_back: asyncio.CancelledError | None = None
            if copying is not None and not copying.done():
                # Cancelled from outside (a stop): its writes must end before
                # the image they use is closed; a second cancel meanwhile
                # waits until the clean-up below is done.
                try:
                    await _settle(copying)
                except asyncio.CancelledError as exc:
                    held_back = exc
            self.progress.pop(info.id, None)
            if not finished:
                # Without the lease the temporary image may be another
                # daemon's work now: close ours, touch nothing else.
                if not lease_lost:
                    try:
                        await self._confirm(lease)
                    except LeaseLost:
                        lease_lost = True
                await self._discard(pool, info.id, target, remove=not lease_lost)
            if held_back is not None:
                raise held_back

    async def _ceph_step(self, pool: str, op: str, fn: Callable[[Any], Any]) -> Any:
        """A copy step on Ceph: a full pool is ``target_full``, not an error."""
        try:
            return await self.ceph.run(op, fn)
        except _failures() as exc:
            await self._raise_if_full(pool, exc)
            raise

    async def _ceph_result(self, pool: str, task: asyncio.Task[T]) -> T:
        try:
            return await task
        except _failures() as exc:
            await self._raise_if_full(pool, exc)
            raise

    async def _raise_if_full(self, pool: str, exc: BaseException) -> None:
        """Writes to a full pool fail with EDQUOT or ENOSPC, or block until
        the op timeout: either way, say ``target_full`` when the OSD map
        says the pool is full."""
        full = getattr(exc, "errno", None) in _FULL
        if not full:
            try:
                full = await self.ceph.pool_full(pool)
            except Exception:  # the cluster may be what failed
                full = False
        if full:
            raise CopyError("target_full", f"pool {pool} is full: {exc}") from exc

    async def _discard(self, pool: str, image_id: str,
                       target: rbd_images.OpenImage | None, *, remove: bool) -> None:
        """After a failed copy: close, and (``remove``, while we hold the
        lease) remove the temporary image and the registry entry. Best
        effort: what stays is cleaned up by the next reconciliation."""
        if target is not None:
            # Off the loop, on the handle's own connection: with the
            # cluster gone, a close waits out its op timeouts.
            with contextlib.suppress(Exception):
                await self.ceph.offload(target.close)
        if not remove:
            return

        def discard(cluster: Any) -> None:
            rbd_images.remove_temp(cluster, pool, image_id)
            rbd_images.release(cluster, pool, image_id)
        try:
            await self.ceph.run("discard", discard)
        except Exception as exc:  # the cluster may be what failed
            LOG.warning("target %s: leftover of %s stays for clean-up: %s", self.name,
                        image_id, exc)

    async def _open_source(self, image: GlanceImage,
                           rbd_locations: list[RbdLocation]) -> OpenedSource:
        """The source to read: an RBD snapshot warmer can read directly,
        with its identity, else a download through Glance (none)."""
        sources = self._sources()
        unreadable: tuple[type[BaseException], ...] = (*ceph_errors(), CephUnavailable)
        for loc in rbd_locations:
            client = sources.get(loc.fsid)
            if client is None:
                continue
            try:
                source, handle = await self._open_rbd_source(client, loc)
            except unreadable as exc:  # try the next one
                LOG.info("target %s: cannot read %s directly (%s)", self.name, loc, exc)
                continue
            # Closed off the loop (with a cluster gone, a close waits out its
            # op timeouts), on the source client's threads.
            return OpenedSource(source, SourceSnapshot(image.info.id, loc.fsid, loc.pool,
                                                       loc.image, handle.snap_id, handle.rbd_id),
                                functools.partial(client.offload, handle.close))
        assert self.glance is not None
        glance, image_id = self.glance, image.info.id
        if image.info.size is None:
            raise CopyError("size_unknown", "Glance does not know the image size")
        return OpenedSource(HttpSource(lambda: glance.download(image_id), image.info.size,
                                       f"glance {glance.endpoint}/v2/images/{image_id}/file"))

    async def _open_rbd_source(self, client: CephClient, loc: RbdLocation
                               ) -> tuple[RbdSource, rbd_images.OpenSnapshot]:
        handle = await client.run("open_source", lambda c: rbd_images.OpenSnapshot(
            c, loc.pool, loc.image, loc.snapshot))

        def list_extents(cluster: Any) -> RbdSource:
            return RbdSource.open(handle, client.executor, f"rbd {loc}",
                                  max(1, self.config.copy_window // 2))
        try:
            return await client.run("extents", list_extents), handle
        except Exception:
            await client.run("close", lambda c: handle.close())
            raise

    # -- the copy lease ---------------------------------------------------------

    async def _renew(self, pool: str, image_id: str) -> bool:
        """Renew a lease this task holds (RADOS lock with MAY_RENEW)."""
        seconds = self.config.copy_lock_seconds
        return bool(await self.ceph.run("lock", lambda c: rbd_images.lock(
            c, pool, image_id, self.cookie, seconds)))

    async def _acquire(self, pool: str, image_id: str) -> bool:
        """Take the copy lease of ``image_id`` in ``pool``. Refused while any
        task of this daemon holds it: RADOS would let our own client
        "renew" it, and the second holder's release would free the first's."""
        key = (await self.fsid(), pool, image_id)
        if key in self._leases:
            return False
        self._leases.add(key)
        try:
            if await self._renew(pool, image_id):
                return True
        except BaseException:
            self._leases.discard(key)
            raise
        self._leases.discard(key)
        return False

    async def _release(self, pool: str, image_id: str) -> None:
        try:
            with contextlib.suppress(Exception):
                await self.ceph.run("unlock", lambda c: rbd_images.unlock(
                    c, pool, image_id, self.cookie))
        finally:
            self._leases.discard((await self.fsid(), pool, image_id))

    async def _keep_lease(self, lease: Lease) -> None:
        """Renew the lease every third of its term for as long as it is held;
        on the first renewal that fails (taken by another daemon, or the
        cluster does not answer), mark it lost and stop: whatever runs
        under it must then stop changing things."""
        failures: tuple[type[BaseException], ...] = (CephUnavailable, *ceph_errors())
        while True:
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(lease.done.wait(), self.config.copy_lock_seconds / 3)
            if lease.done.is_set():
                return  # released: never renew after that
            try:
                renewed = await self._renew(lease.pool, lease.image_id)
            except failures as exc:
                LOG.error("target %s: cannot renew the copy lease for %s: %s", self.name,
                          lease.image_id, exc)
                renewed = False
            if not renewed:
                LOG.error("target %s: lost the copy lease for %s", self.name, lease.image_id)
                lease.lost.set()
                return

    async def _confirm(self, lease: Lease) -> None:
        """Renew now, before a step that must not run without the lease
        (publish, remove, forget). Raises LeaseLost."""
        if lease.lost.is_set():
            raise LeaseLost(lease.image_id)
        try:
            renewed = await self._renew(lease.pool, lease.image_id)
        except (CephUnavailable, *ceph_errors()) as exc:  # type: ignore[misc]
            lease.lost.set()
            raise LeaseLost(lease.image_id) from exc
        if not renewed:
            lease.lost.set()
            raise LeaseLost(lease.image_id)

    @contextlib.asynccontextmanager
    async def _leased(self, pool: str, image_id: str) -> AsyncIterator[Lease | None]:
        """Hold ``image_id``'s copy lease in ``pool``, renewed in the
        background for the whole block. Yields None (and changes nothing)
        when another task or daemon holds it."""
        if not await self._acquire(pool, image_id):
            yield None
            return
        lease = Lease(pool, image_id)
        renewer = asyncio.create_task(self._keep_lease(lease))
        try:
            yield lease
        finally:
            # Stop the renewer and wait for it: a renewal still running on a
            # thread after the release would take the lock again.
            lease.done.set()
            with contextlib.suppress(Exception):
                await asyncio.shield(renewer)
            await self._release(pool, image_id)

    # -- inventory and eviction -----------------------------------------------

    async def inventory(self) -> list[rbd_images.Inspection]:
        """warmer's complete copies in this target's copy pool (from the
        registry, never by listing Glance's pool)."""
        pool = await self.copy_pool()
        return list(await self.ceph.run("inventory", lambda c: rbd_images.inventory(c, pool)))

    async def evict(self, image_id: str) -> str:
        """Take warmer's copy of ``image_id`` out of this target.

        Children always win: when the copy's snapshot has clones (or warmer
        cannot tell), nothing changes and ``has_children`` is returned, to be
        retried later. Otherwise, under the copy lease, the Glance location
        goes first (Glance then deletes the data itself, as it does for
        every location it drops), and whatever is left of warmer's copy is
        unprotected and removed. Returns ``removed``, ``gone``,
        ``has_children``, ``not_owned``, ``busy`` or ``glance_refused``;
        raises LocationConflict when Glance's list changed under it.
        """
        if not is_canonical_image_id(image_id):
            return "not_owned"
        pool = await self.copy_pool()
        existing = await self._inspect(pool, image_id)
        if existing is None:
            return await self._purge_copy(image_id)
        if not existing.owned:
            return "not_owned"
        if existing.protected and await self._has_children(pool, image_id):
            return "has_children"
        async with self._leased(pool, image_id) as lease:
            if lease is None:
                return "busy"
            if self.glance is not None:
                url = self.location_of(image_id, await self.fsid(), pool).url
                try:
                    async with self._locations(image_id) as held:
                        if not held:
                            return "busy"
                        await self._confirm(lease)  # right before the change
                        # Bounded by Glance's own request timeouts; the lease
                        # is renewed meanwhile, and the list is checked after.
                        removed = await self.glance.remove_location(image_id, url)
                    if removed is None:
                        # Glance says 404: a 404 is not a delete (invariant 8).
                        return "glance_404"
                except LeaseLost:
                    return "busy"
                except GlanceRefused as exc:
                    LOG.info("target %s: Glance kept %s: %s", self.name, url, exc)
                    return "glance_refused"
                except LocationsHidden as exc:
                    # Glance may still list it: removing the data would leave a
                    # location that points at nothing.
                    LOG.warning("target %s: not evicting %s: %s", self.name, image_id, exc)
                    return "locations_hidden"
            result = await self._remove(lease)
        # Dropping the location usually makes Glance delete the data itself.
        return "removed" if result == "gone" else result

    async def purge(self, image_id: str) -> str:
        """Remove warmer's copy of ``image_id`` (no Glance call): for images
        Glance confirmed gone. Children still win. The shared state forgets
        the image's verified snapshots and this copy's cost."""
        if not is_canonical_image_id(image_id):
            return "not_owned"  # no lock object, no lookup, for a crafted id
        if self.records is not None:
            await self.records.forget(image_id)
        return await self._purge_copy(image_id)

    async def _purge_copy(self, image_id: str) -> str:
        pool = await self.copy_pool()
        if not await self._has_anything(pool, image_id):
            if self.records is not None:
                await self.records.removed(self.name, image_id)
            return "gone"  # nothing registered, nothing to lock: nothing written in the pool
        async with self._leased(pool, image_id) as lease:
            if lease is None:
                return "busy"
            return await self._remove(lease)

    async def _has_anything(self, pool: str, image_id: str) -> bool:
        return bool(await self.ceph.run("lookup", lambda c: rbd_images.known(
            c, pool, image_id)))

    async def _remove(self, lease: Lease) -> str:
        pool, image_id = lease.pool, lease.image_id
        try:
            await self._confirm(lease)
        except LeaseLost:
            return "busy"
        try:
            result: str = await self.ceph.run("remove_owned", lambda c: rbd_images.remove_owned(
                c, pool, image_id))
        except ceph_errors() as exc:  # e.g. clones in a pool warmer cannot see
            LOG.warning("target %s: keeping %s/%s: %s", self.name, pool, image_id, exc)
            return "has_children"
        if result == "removed":
            LOG.info("target %s: removed warmer's copy %s/%s", self.name, pool, image_id)
        if result in ("removed", "gone") and self.records is not None:
            await self.records.removed(self.name, image_id)
        return result

    async def _has_children(self, pool: str, image_id: str) -> bool:
        try:
            kids = await self.ceph.run("children", lambda c: rbd_images.children(
                c, pool, image_id))
        except ceph_errors() as exc:  # cannot see every pool: assume there are clones
            LOG.warning("target %s: cannot list clones of %s/%s@snap (%s); keeping it",
                        self.name, pool, image_id, exc)
            return True
        return bool(kids)

    async def clean_up(self) -> list[str]:
        """Remove what a crash left behind: temporary images and registry
        entries with no copy. Safe with several daemons: each image is
        handled only under its lease, and only if it is warmer's."""
        if not self.config.copy_images:
            return []
        pool = await self.copy_pool()
        if await self.ceph.pool_full(pool):
            return []  # every write (even a lease) would block until the op timeout
        entries = await self.ceph.run("registry", lambda c: rbd_images.registered(c, pool))
        cleaned = []
        for entry in entries:
            image_id = entry.image_id
            async with self._leased(pool, image_id) as lease:
                if lease is None:
                    continue  # another daemon is copying it right now

                def tidy(cluster: Any, image_id: str = image_id) -> bool:
                    removed = rbd_images.remove_temp(cluster, pool, image_id)
                    forgotten = rbd_images.release(cluster, pool, image_id)
                    return removed or forgotten
                if await self.ceph.run("clean_up", tidy):
                    cleaned.append(image_id)
                    LOG.info("target %s: cleaned up what a crash left of %s in %s",
                             self.name, image_id, pool)
        return cleaned


class LocationGuard:
    """Changes to one Glance image's locations, one at a time across every
    target and daemon. Glance removes a location by its index in the list,
    so two removals at once (two daemons evicting two targets) can remove a
    third party's location, whose data Glance then deletes. A RADOS lock per
    image (``warmer.locations.<id>``) in the copy pool of one target that
    every daemon configures alike (the first that copies) serialises them;
    an asyncio lock does it within the daemon, where RADOS would let our
    own client "renew" the lock another task holds."""

    def __init__(self, target: Target, attempts: int = 20) -> None:
        self._target = target
        self._attempts = attempts
        self._local: dict[str, tuple[asyncio.Lock, int]] = {}

    @contextlib.asynccontextmanager
    async def held(self, image_id: str) -> AsyncIterator[bool]:
        """Yields whether the lock is held; False after a few tries while
        another daemon holds it. The block must end within the lease."""
        lock, users = self._local.get(image_id, (asyncio.Lock(), 0))
        self._local[image_id] = (lock, users + 1)
        try:
            async with lock:
                t = self._target
                pool = await t.copy_pool()
                # Not renewed: long enough for a change's few Glance requests
                # (each bounded by [glance] timeout); a crashed holder blocks
                # this image's location changes for at most this long.
                seconds = 3 * t.config.copy_lock_seconds
                for _ in range(self._attempts):
                    if await t.ceph.run("location_lock", lambda c: rbd_images.lock(
                            c, pool, image_id, t.cookie, seconds,
                            prefix=rbd_images.LOCATIONS_PREFIX)):
                        break
                    await asyncio.sleep(0.25)
                else:
                    yield False
                    return
                try:
                    yield True
                finally:
                    with contextlib.suppress(Exception):
                        await t.ceph.run("location_unlock", lambda c: rbd_images.drop_lock(
                            c, pool, image_id, rbd_images.LOCATIONS_PREFIX))
        finally:
            lock, users = self._local[image_id]
            if users == 1:
                del self._local[image_id]
            else:
                self._local[image_id] = (lock, users - 1)


@dataclasses.dataclass
class Lease:
    """A copy lease this task holds; ``lost`` is set when a renewal failed."""

    pool: str
    image_id: str
    lost: asyncio.Event = dataclasses.field(default_factory=asyncio.Event)
    done: asyncio.Event = dataclasses.field(default_factory=asyncio.Event)


class LeaseLost(Exception):
    """The copy lease could not be renewed: stop changing things."""


async def _to_the_end(step: Awaitable[T]) -> T:
    """Await ``step``; if this task is cancelled meanwhile, wait until the
    step has ended anyway, then re-raise the cancellation."""
    task = asyncio.ensure_future(step)
    try:
        return await asyncio.shield(task)
    except asyncio.CancelledError:
        await outlast([task])
        raise


async def _settle(task: asyncio.Task[Any]) -> None:
    """Cancel ``task`` and wait until it has really ended (its threads
    too), even if this task is cancelled meanwhile; re-raise that
    cancellation afterwards."""
    task.cancel()
    await outlast([task])


def _failures() -> tuple[type[BaseException], ...]:
    return (CephUnavailable, *ceph_errors())


# Copy failures that repeat for the same Glance view of the image.
REPEATING_FAILURES = frozenset({"checksum_mismatch", "size_mismatch", "size_unknown",
                                "unsupported_hash"})
MAX_REMEMBERED_FAILURES = 10_000


def _view(image: GlanceImage) -> tuple[Any, ...]:
    """What a repeating copy failure depends on: Glance's record of the
    data (hash, checksum, size) and where it says the data is."""
    info = image.info
    return (info.os_hash_algo, info.os_hash_value, info.checksum, info.size,
            tuple(loc.url for loc in image.locations))


def _complete(found: rbd_images.Inspection | None) -> bool:
    return (found is not None and found.owned and found.state == "complete"
            and found.protected)
