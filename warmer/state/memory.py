"""The shared state in this process's memory, behind the same interface as
:class:`~warmer.state.rados.RadosStore`: for unit tests, and for a single
daemon that needs no sharing. It keeps the semantics the writers rely on
(settings recorded once, a shard written only by the instance that claimed
it, a refused write applying nothing), and nothing survives the process.
"""

from __future__ import annotations

import time
from collections.abc import Callable, Collection, Mapping

from warmer.ids import bounded_token, canonical_image_id
from warmer.state.store import (
    Contribution,
    CopyCost,
    DemandTotals,
    Pin,
    Settings,
    ShardInfo,
    ShardLost,
    StateStore,
    Tombstone,
    VerifiedSnapshot,
)


class MemoryStore:
    """One shared state. Several writers (one per simulated daemon) may
    share one instance."""

    def __init__(self, clock: Callable[[], float] = time.time) -> None:
        self._clock = clock
        self._settings: Settings | None = None
        self._owners: dict[str, ShardInfo] = {}
        self._shards: dict[str, dict[str, Contribution]] = {}
        self._pins: dict[str, Pin] = {}
        self._tombstones: dict[str, Tombstone] = {}
        self._costs: dict[str, dict[str, CopyCost]] = {}
        self._verified: dict[str, VerifiedSnapshot] = {}
        self._mismatched: dict[str, VerifiedSnapshot] = {}
        self.writes = 0  # write_shard calls that were applied

    async def settings(self, proposed: Settings) -> Settings:
        if self._settings is None:
            self._settings = proposed
        return self._settings

    async def claim_shard(self, daemon: str, instance: str) -> dict[str, Contribution]:
        bounded_token(daemon, "daemon name")
        self._owners[daemon] = ShardInfo(daemon, instance, self._clock())
        return dict(self._shards.setdefault(daemon, {}))

    async def write_shard(self, daemon: str, instance: str, put: Mapping[str, Contribution],
                          remove: Collection[str]) -> None:
        owner = self._owners.get(daemon)
        if owner is None or owner.instance != instance:
            raise ShardLost(f"demand shard {daemon} is not held by {instance}")
        for image_id in put:
            canonical_image_id(image_id)
        shard = self._shards.setdefault(daemon, {})
        shard.update(put)
        for image_id in remove:
            shard.pop(image_id, None)
        self.writes += 1

    async def shards(self) -> dict[str, ShardInfo]:
        return dict(self._owners)

    async def read_demand(self, half_life: float, skip: Collection[str] = ()) -> DemandTotals:
        totals = DemandTotals(half_life)
        for daemon, shard in self._shards.items():
            if daemon not in skip:
                totals.add_all(shard.items())
        return totals

    async def demand_of(self, image_ids: Collection[str], half_life: float) -> DemandTotals:
        totals = DemandTotals(half_life)
        for shard in self._shards.values():
            totals.add_all((i, shard[i]) for i in image_ids if i in shard)
        return totals

    async def put_pin(self, pin: Pin) -> None:
        self._pins[canonical_image_id(pin.image_id)] = pin

    async def remove_pin(self, image_id: str) -> None:
        self._pins.pop(image_id, None)

    async def pins(self) -> dict[str, Pin]:
        return dict(self._pins)

    async def put_tombstone(self, tombstone: Tombstone) -> None:
        self._tombstones[canonical_image_id(tombstone.image_id)] = tombstone

    async def remove_tombstones(self, image_ids: Collection[str]) -> None:
        for image_id in image_ids:
            self._tombstones.pop(image_id, None)

    async def tombstones(self) -> dict[str, Tombstone]:
        return dict(self._tombstones)

    async def put_cost(self, cost: CopyCost) -> None:
        bounded_token(cost.target, "target name")
        self._costs.setdefault(cost.target, {})[canonical_image_id(cost.image_id)] = cost

    async def remove_cost(self, target: str, image_id: str) -> None:
        self._costs.get(target, {}).pop(image_id, None)

    async def costs(self, target: str) -> dict[str, CopyCost]:
        return dict(self._costs.get(target, {}))

    async def verified(self, image_id: str) -> dict[str, VerifiedSnapshot]:
        prefix = canonical_image_id(image_id) + "/"
        return {k: v for k, v in self._verified.items() if k.startswith(prefix)}

    async def put_verified(self, record: VerifiedSnapshot) -> None:
        canonical_image_id(record.snapshot.image_id)
        prefix = record.snapshot.location_prefix
        for key in [k for k in self._verified if k.startswith(prefix)]:
            del self._verified[key]
        self._verified[record.snapshot.key] = record

    async def remove_verified(self, image_ids: Collection[str]) -> None:
        _drop(self._verified, image_ids)

    async def mismatched(self, image_id: str) -> set[str]:
        prefix = canonical_image_id(image_id) + "/"
        return {k for k in self._mismatched if k.startswith(prefix)}

    async def put_mismatched(self, record: VerifiedSnapshot) -> None:
        canonical_image_id(record.snapshot.image_id)
        self._mismatched[record.snapshot.key] = record

    async def remove_mismatched(self, image_ids: Collection[str]) -> None:
        _drop(self._mismatched, image_ids)

    async def close(self) -> None:
        pass


def _drop(records: dict[str, VerifiedSnapshot], image_ids: Collection[str]) -> None:
    prefixes = tuple(canonical_image_id(i) + "/" for i in image_ids)
    for key in [k for k in records if k.startswith(prefixes)]:
        del records[key]


def _implements_the_interface(store: MemoryStore) -> StateStore:
    return store  # checked by mypy
