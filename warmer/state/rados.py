"""The shared state in RADOS: JSON values in the omap of a few objects.

All objects live in one pool and RADOS namespace that the operator names
([state] pool, namespace); every daemon of a fleet must name the same.

=============================  ==========================  =======================
object                         omap key                    value
=============================  ==========================  =======================
``warmer.state``               ``settings``                :class:`Settings`
                               ``shard.<daemon>``          :class:`ShardInfo`
``warmer.demand.<daemon>``     ``_owner``                  instance id (plain text)
                               ``<image id>``              :class:`Contribution`
``warmer.pins``                ``<image id>``              :class:`Pin`
``warmer.tombstones``          ``<image id>``              :class:`Tombstone`
``warmer.costs.<target>``      ``<image id>``              :class:`CopyCost`
``warmer.verified``            ``<image id>/<fsid>/        :class:`VerifiedSnapshot`
                               <pool>/<image>@<snap id>``
``warmer.mismatched``          the same                    :class:`VerifiedSnapshot`
                                                           (``mismatched``)
=============================  ==========================  =======================

Only the daemon named in a shard's object writes it, and only while the
shard's ``_owner`` is its own instance: every write carries ``omap_cmp``
on that key, so a write from a superseded process fails as a whole with
ECANCELED (:class:`ShardLost`). ``settings`` is written once, under
``omap_cmp`` against the empty value (an absent key compares as empty):
of daemons racing to record it, one wins and all read the winner's.

Reads go in pages of ``page_size`` keys (``get_omap_vals`` with
``start_after``) until a page comes back empty; keys that are not
canonical image ids, and values that do not parse, are skipped and logged.

Every rados call blocks: each public method runs them on the executor of
its :class:`~warmer.ceph.client.CephClient`, never on the event loop. The
connection is made lazily and rebuilt after a shutdown or blocklisting, as
for the targets' connections.
"""

from __future__ import annotations

import asyncio
import concurrent.futures
import errno
import logging
import time
from collections.abc import Callable, Collection, Iterable, Iterator, Mapping, Sequence
from typing import Any, Protocol, TypeVar

from oslo_config import cfg

from warmer.ceph.bindings import Rados, modules
from warmer.ceph.client import CephClient, CephUnavailable, ClusterConfig
from warmer.ids import bounded_token, canonical_image_id, is_canonical_image_id
from warmer.state.store import (
    Contribution,
    CopyCost,
    DemandTotals,
    Pin,
    Settings,
    ShardInfo,
    ShardLost,
    StateError,
    StateStore,
    StateUnavailable,
    Tombstone,
    VerifiedSnapshot,
)

LOG = logging.getLogger(__name__)
T = TypeVar("T")

META_OBJECT = "warmer.state"
SETTINGS_KEY = "settings"
DIRECTORY_PREFIX = "shard."
SHARD_PREFIX = "warmer.demand."
OWNER_KEY = "_owner"
PINS_OBJECT = "warmer.pins"
TOMBSTONES_OBJECT = "warmer.tombstones"
COSTS_PREFIX = "warmer.costs."
VERIFIED_OBJECT = "warmer.verified"
MISMATCHED_OBJECT = "warmer.mismatched"
PAGE_SIZE = 1000
WRITE_BATCH = 1000  # keys per write op; a shard write of more goes in steps


class Ioctx(Protocol):
    """The part of ``rados.Ioctx`` the state uses."""

    def set_namespace(self, nspace: str) -> None: ...
    def close(self) -> None: ...
    def set_omap(self, op: Any, keys: Sequence[str], values: Sequence[bytes]) -> None: ...
    def remove_omap_keys(self, op: Any, keys: Sequence[str]) -> None: ...
    def operate_write_op(self, op: Any, oid: str) -> None: ...
    def operate_read_op(self, op: Any, oid: str) -> None: ...
    def get_omap_vals(self, op: Any, start_after: str, filter_prefix: str,
                      max_return: int) -> tuple[Any, int]: ...
    def get_omap_vals_by_keys(self, op: Any, keys: Sequence[str]) -> tuple[Any, int]: ...


def shard_object(daemon: str) -> str:
    return SHARD_PREFIX + bounded_token(daemon, "daemon name")


def costs_object(target: str) -> str:
    return COSTS_PREFIX + bounded_token(target, "target name")


class RadosStore:
    """:class:`~warmer.state.store.StateStore` on RADOS omap."""

    def __init__(self, client: CephClient, pool: str, namespace: str = "", *,
                 page_size: int = PAGE_SIZE, write_batch: int = WRITE_BATCH) -> None:
        self.client = client
        self.pool = pool
        self.namespace = namespace
        self.page_size = page_size
        self.write_batch = write_batch

    @classmethod
    def from_conf(cls, conf: cfg.ConfigOpts, executor: concurrent.futures.Executor,
                  observe: Callable[[str, str], None] | None = None) -> RadosStore:
        """The store that ``[state]`` describes, on ``executor``."""
        group = conf.state
        client = CephClient(ClusterConfig(group.ceph_conf, group.rados_user, group.keyring,
                                          group.connect_timeout), executor, observe)
        return cls(client, group.pool, group.namespace or "")

    async def _run(self, op: str, fn: Callable[[Ioctx], T]) -> T:
        rados, _ = modules()

        def call(cluster: Rados) -> T:
            ioctx: Ioctx = cluster.open_ioctx(self.pool)  # type: ignore[assignment]
            try:
                if self.namespace:
                    ioctx.set_namespace(self.namespace)
                return fn(ioctx)
            finally:
                ioctx.close()

        try:
            return await self.client.run(f"state.{op}", call)
        except CephUnavailable as exc:
            raise StateUnavailable(str(exc)) from exc
        except rados.Error as exc:
            raise StateError(f"{op} in pool {self.pool} namespace "
                             f"{self.namespace or '(default)'}: {exc}") from exc

    # -- settings ------------------------------------------------------------------

    async def settings(self, proposed: Settings) -> Settings:
        def record(ioctx: Ioctx) -> Settings:
            rados, _ = modules()
            with rados.WriteOpCtx() as op:
                op.new(rados.LIBRADOS_CREATE_IDEMPOTENT)
                op.omap_cmp(SETTINGS_KEY, "", rados.LIBRADOS_CMPXATTR_OP_EQ)
                ioctx.set_omap(op, (SETTINGS_KEY,), (proposed.to_json(),))
                try:
                    ioctx.operate_write_op(op, META_OBJECT)
                except rados.Error as exc:
                    if getattr(exc, "errno", None) != errno.ECANCELED:
                        raise  # else: recorded already, by us or another daemon
            raw = _read_keys(ioctx, META_OBJECT, (SETTINGS_KEY,)).get(SETTINGS_KEY)
            if raw is None:
                raise StateError(f"{META_OBJECT} has no {SETTINGS_KEY} after recording it")
            try:
                return Settings.from_json(raw)
            except ValueError as exc:
                raise StateError(f"unreadable {SETTINGS_KEY} in {META_OBJECT}: {exc}") from exc
        return await self._run("settings", record)

    # -- demand ----------------------------------------------------------------------

    async def claim_shard(self, daemon: str, instance: str) -> dict[str, Contribution]:
        obj = shard_object(daemon)
        info = ShardInfo(daemon, instance, time.time())

        def claim(ioctx: Ioctx) -> dict[str, Contribution]:
            # Listed first: a shard with data is never missing from the directory.
            _write(ioctx, META_OBJECT, [(DIRECTORY_PREFIX + daemon, info.to_json())], ())
            _write(ioctx, obj, [(OWNER_KEY, instance.encode())], ())
            return dict(_contributions(ioctx, obj, self.page_size))
        return await self._run("claim_shard", claim)

    async def write_shard(self, daemon: str, instance: str, put: Mapping[str, Contribution],
                          remove: Collection[str]) -> None:
        obj = shard_object(daemon)
        items = [(canonical_image_id(k), c.to_json()) for k, c in put.items()]
        await self._run("write_shard", lambda ioctx: _write(
            ioctx, obj, items, tuple(remove), owner=instance, batch=self.write_batch))

    async def shards(self) -> dict[str, ShardInfo]:
        def read(ioctx: Ioctx) -> dict[str, ShardInfo]:
            found: dict[str, ShardInfo] = {}
            for key, raw in _pages(ioctx, META_OBJECT, self.page_size, DIRECTORY_PREFIX):
                daemon = key[len(DIRECTORY_PREFIX):]
                try:
                    found[daemon] = ShardInfo.from_json(daemon, raw)
                except ValueError as exc:
                    _skip(META_OBJECT, key, exc)
            return found
        return await self._run("shards", read)

    async def read_demand(self, half_life: float, skip: Collection[str] = ()) -> DemandTotals:
        totals = DemandTotals(half_life)

        def merge(obj: str) -> Callable[[Ioctx], None]:
            return lambda ioctx: totals.add_all(_contributions(ioctx, obj, self.page_size))
        for daemon in sorted(set(await self.shards()) - set(skip)):
            # One executor job per shard; the merge runs there too, off the loop.
            await self._run("read_demand", merge(shard_object(daemon)))
        return totals

    async def demand_of(self, image_ids: Collection[str], half_life: float) -> DemandTotals:
        keys = [canonical_image_id(i) for i in image_ids]
        totals = DemandTotals(half_life)
        daemons = sorted(await self.shards())

        def read(ioctx: Ioctx) -> None:
            for daemon in daemons:
                obj = shard_object(daemon)
                for at in range(0, len(keys), self.page_size):
                    found = _read_keys(ioctx, obj, keys[at:at + self.page_size])
                    totals.add_all(_parse_contributions(obj, found.items()))
        if keys:
            await self._run("demand_of", read)
        return totals

    # -- pins, tombstones, costs -----------------------------------------------------

    async def put_pin(self, pin: Pin) -> None:
        await self._put(PINS_OBJECT, canonical_image_id(pin.image_id), pin.to_json())

    async def remove_pin(self, image_id: str) -> None:
        await self._remove(PINS_OBJECT, (image_id,))

    async def pins(self) -> dict[str, Pin]:
        return await self._all(PINS_OBJECT, Pin.from_json)

    async def put_tombstone(self, tombstone: Tombstone) -> None:
        await self._put(TOMBSTONES_OBJECT, canonical_image_id(tombstone.image_id),
                        tombstone.to_json())

    async def remove_tombstones(self, image_ids: Collection[str]) -> None:
        await self._remove(TOMBSTONES_OBJECT, tuple(image_ids))

    async def tombstones(self) -> dict[str, Tombstone]:
        return await self._all(TOMBSTONES_OBJECT, Tombstone.from_json)

    async def put_cost(self, cost: CopyCost) -> None:
        await self._put(costs_object(cost.target), canonical_image_id(cost.image_id),
                        cost.to_json())

    async def remove_cost(self, target: str, image_id: str) -> None:
        await self._remove(costs_object(target), (image_id,))

    async def costs(self, target: str) -> dict[str, CopyCost]:
        return await self._all(costs_object(target),
                               lambda key, raw: CopyCost.from_json(target, key, raw))

    # -- verified snapshots --------------------------------------------------------

    async def verified(self, image_id: str) -> dict[str, VerifiedSnapshot]:
        prefix = canonical_image_id(image_id) + "/"
        return await self._run("verified", lambda ioctx: _verified(ioctx, prefix,
                                                                   self.page_size))

    async def put_verified(self, record: VerifiedSnapshot) -> None:
        canonical_image_id(record.snapshot.image_id)
        key, value = record.snapshot.key, record.to_json()

        def put(ioctx: Ioctx) -> None:
            stale = [k for k, _ in _pages(ioctx, VERIFIED_OBJECT, self.page_size,
                                          record.snapshot.location_prefix) if k != key]
            _write(ioctx, VERIFIED_OBJECT, [(key, value)], stale, batch=self.write_batch)
        await self._run("put_verified", put)

    async def remove_verified(self, image_ids: Collection[str]) -> None:
        await self._remove_images("remove_verified", VERIFIED_OBJECT, image_ids)

    async def mismatched(self, image_id: str) -> set[str]:
        prefix = canonical_image_id(image_id) + "/"
        return await self._run("mismatched", lambda ioctx: {
            k for k, _ in _pages(ioctx, MISMATCHED_OBJECT, self.page_size, prefix)})

    async def put_mismatched(self, record: VerifiedSnapshot) -> None:
        canonical_image_id(record.snapshot.image_id)
        await self._put(MISMATCHED_OBJECT, record.snapshot.key, record.to_json())

    async def remove_mismatched(self, image_ids: Collection[str]) -> None:
        await self._remove_images("remove_mismatched", MISMATCHED_OBJECT, image_ids)

    async def _remove_images(self, op: str, obj: str, image_ids: Collection[str]) -> None:
        """Drop every key of ``obj`` that belongs to one of ``image_ids``."""
        prefixes = [canonical_image_id(i) + "/" for i in image_ids]

        def remove(ioctx: Ioctx) -> None:
            keys = [k for prefix in prefixes
                    for k, _ in _pages(ioctx, obj, self.page_size, prefix)]
            if keys:
                _write(ioctx, obj, (), keys, batch=self.write_batch, missing_ok=True)
        if prefixes:
            await self._run(op, remove)

    async def close(self) -> None:
        loop = asyncio.get_running_loop()
        await loop.run_in_executor(self.client.executor, self.client.close)

    async def _put(self, obj: str, key: str, value: bytes) -> None:
        await self._run("put", lambda ioctx: _write(ioctx, obj, [(key, value)], ()))

    async def _remove(self, obj: str, keys: Sequence[str]) -> None:
        if keys:
            await self._run("remove", lambda ioctx: _write(
                ioctx, obj, (), keys, batch=self.write_batch, missing_ok=True))

    async def _all(self, obj: str, parse: Callable[[str, bytes], T]) -> dict[str, T]:
        def read(ioctx: Ioctx) -> dict[str, T]:
            found: dict[str, T] = {}
            for key, raw in _pages(ioctx, obj, self.page_size):
                if not is_canonical_image_id(key):
                    continue
                try:
                    found[key] = parse(key, raw)
                except ValueError as exc:
                    _skip(obj, key, exc)
            return found
        return await self._run("read", read)


# -- blocking helpers: run on the executor only --------------------------------------


def _pages(ioctx: Ioctx, obj: str, page_size: int, prefix: str = ""
           ) -> Iterator[tuple[str, bytes]]:
    """Every key of ``obj`` (with ``prefix``), in key order, a page at a
    time. An absent object has none. A page may come back short of
    ``page_size`` (the OSD caps replies), so only an empty one ends it."""
    rados, _ = modules()
    after = ""
    while True:
        with rados.ReadOpCtx() as op:
            values, _ = ioctx.get_omap_vals(op, after, prefix, page_size)
            try:
                ioctx.operate_read_op(op, obj)
            except rados.ObjectNotFound:
                return
            page = list(values)
        if not page:
            return
        yield from page
        after = page[-1][0]


def _read_keys(ioctx: Ioctx, obj: str, keys: Sequence[str]) -> dict[str, bytes]:
    rados, _ = modules()
    with rados.ReadOpCtx() as op:
        values, _ = ioctx.get_omap_vals_by_keys(op, tuple(keys))
        try:
            ioctx.operate_read_op(op, obj)
        except rados.ObjectNotFound:
            return {}
        return dict(values)


def _contributions(ioctx: Ioctx, obj: str, page_size: int
                   ) -> Iterator[tuple[str, Contribution]]:
    return _parse_contributions(obj, _pages(ioctx, obj, page_size))


def _parse_contributions(obj: str, items: Iterable[tuple[str, bytes]]
                         ) -> Iterator[tuple[str, Contribution]]:
    for key, raw in items:
        if not is_canonical_image_id(key):
            continue  # _owner, or something that is not warmer's
        try:
            yield key, Contribution.from_json(raw)
        except ValueError as exc:
            _skip(obj, key, exc)


def _verified(ioctx: Ioctx, prefix: str, page_size: int) -> dict[str, VerifiedSnapshot]:
    found: dict[str, VerifiedSnapshot] = {}
    for key, raw in _pages(ioctx, VERIFIED_OBJECT, page_size, prefix):
        try:
            found[key] = VerifiedSnapshot.from_json(key, raw)
        except ValueError as exc:
            _skip(VERIFIED_OBJECT, key, exc)
    return found


def _skip(obj: str, key: str, exc: Exception) -> None:
    LOG.warning("state: skipping the unreadable value of %s in %s: %s", key, obj, exc)


def _write(ioctx: Ioctx, obj: str, put: Sequence[tuple[str, bytes]], remove: Sequence[str],
           *, owner: str | None = None, batch: int = WRITE_BATCH,
           missing_ok: bool = False) -> None:
    """Set ``put`` and delete ``remove`` in ``obj``'s omap, ``batch`` keys
    per write op. With ``owner``, each op applies only if the object's
    ``_owner`` is ``owner`` (else :class:`ShardLost`: that op and the
    following ones apply nothing, the earlier ones are in its ``applied``).
    With ``missing_ok``, an absent object is not an error (for deletions
    only)."""
    rados, _ = modules()
    steps: list[tuple[Sequence[tuple[str, bytes]], Sequence[str]]] = []
    for at in range(0, len(put), batch):
        steps.append((put[at:at + batch], ()))
    for at in range(0, len(remove), batch):
        steps.append(((), remove[at:at + batch]))
    applied: list[str] = []
    for items, keys in steps:
        with rados.WriteOpCtx() as op:
            if owner is not None:
                op.omap_cmp(OWNER_KEY, owner, rados.LIBRADOS_CMPXATTR_OP_EQ)
            if items:
                ioctx.set_omap(op, tuple(k for k, _ in items), tuple(v for _, v in items))
            if keys:
                ioctx.remove_omap_keys(op, tuple(keys))
            try:
                ioctx.operate_write_op(op, obj)
            except rados.ObjectNotFound:
                if owner is not None:
                    raise ShardLost(f"{obj} is gone", applied) from None
                if not missing_ok:
                    raise
                return
            except rados.Error as exc:
                if owner is not None and getattr(exc, "errno", None) == errno.ECANCELED:
                    raise ShardLost(f"{obj} is now held by another process", applied) from None
                raise
        applied.extend(k for k, _ in items)
        applied.extend(keys)


def _implements_the_interface(store: RadosStore) -> StateStore:
    return store  # checked by mypy
