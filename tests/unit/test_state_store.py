"""The shared state's values and stores: JSON round trips, unreadable values,
and the store semantics that both stores must share."""

from __future__ import annotations

import asyncio
import dataclasses
import math
import uuid
from collections.abc import Iterator
from typing import Any

import pytest

from tests.unit.state_stores import STORES, fake_rados_modules, make_store
from warmer.state.store import (
    Contribution,
    CopyCost,
    DemandTotals,
    Pin,
    Settings,
    ShardInfo,
    ShardLost,
    SourceSnapshot,
    StateStore,
    Tombstone,
    VerifiedSnapshot,
)

T0 = 1_764_000_000
HOUR = 3600.0


def ids(n: int) -> list[str]:
    return sorted(str(uuid.uuid4()) for _ in range(n))


@pytest.fixture(params=STORES)
def store(request: pytest.FixtureRequest, executor: Any) -> Iterator[StateStore]:
    with fake_rados_modules():
        yield make_store(request.param, executor)


def run(coro: Any) -> Any:
    return asyncio.run(coro)


# -- values ---------------------------------------------------------------------------

@pytest.mark.parametrize("value", [
    Contribution(3.25, T0),
    Contribution(1e-300, T0),
    Contribution(2.0 ** 255 * 1.1, -5),
])
def test_contribution_round_trips_exactly(value: Contribution) -> None:
    assert Contribution.from_json(value.to_json()) == value


def test_values_round_trip_through_json() -> None:
    image = str(uuid.uuid4())
    pin = Pin(image, "admin", T0 + 0.5, "golden image")
    assert Pin.from_json(image, pin.to_json()) == pin
    tomb = Tombstone(image, T0 + 1.25, "ctl-1")
    assert Tombstone.from_json(image, tomb.to_json()) == tomb
    cost = CopyCost("edge", image, 1 << 30, 12.5, "sha512:" + "ab" * 64, T0)
    assert CopyCost.from_json("edge", image, cost.to_json()) == cost
    full = CopyCost("edge", image, 4096, 0.5, "sha512:00", T0, 8192, "skipped_verified", "c-1",
                    fanout=3)
    assert CopyCost.from_json("edge", image, full.to_json()) == full
    # A record written before bytes read, check, daemon and fan-out were recorded.
    assert CopyCost.from_json("edge", image, b'{"bytes": 1, "seconds": 2, "digest": "md5:0", '
                                             b'"at": 3}') == CopyCost("edge", image, 1, 2.0,
                                                                      "md5:0", 3.0)
    info = ShardInfo("ctl-1", "abc", T0)
    assert ShardInfo.from_json("ctl-1", info.to_json()) == info
    record = VerifiedSnapshot(snapshot(image), "sha512:" + "ab" * 64, 1 << 30, T0, "ctl-1")
    assert VerifiedSnapshot.from_json(record.snapshot.key, record.to_json()) == record
    bad = VerifiedSnapshot(snapshot(image), "sha512:00", 1, T0, "ctl-2", mismatched=True)
    assert VerifiedSnapshot.from_json(bad.snapshot.key, bad.to_json()) == bad
    assert b"mismatched" not in record.to_json()  # what older daemons wrote and read
    assert Settings.from_json(Settings(86400.0, T0).to_json()) == Settings(86400.0, T0)


@pytest.mark.parametrize("raw", [
    b"", b"not json", b"[]", b'{"v": 1}', b'{"v": "1", "e": 5}', b'{"v": 1, "e": 5.5}',
    b'{"v": -1, "e": 5}', b'{"v": NaN, "e": 5}', b'{"v": Infinity, "e": 5}',
    b'{"v": true, "e": 5}', b"\xff\xfe", b'{"v": 1, "e": 1' + b"0" * 400 + b"}",
    b'{"v": 1' + b"0" * 400 + b', "e": 5}',
])
def test_unreadable_contributions_are_a_value_error(raw: bytes) -> None:
    with pytest.raises(ValueError):
        Contribution.from_json(raw)


def test_unreadable_values_are_a_value_error() -> None:
    image = str(uuid.uuid4())
    with pytest.raises(ValueError):
        Pin.from_json(image, b'{"by": 3, "at": 1}')
    with pytest.raises(ValueError):
        Tombstone.from_json(image, b'{"by": "x"}')
    with pytest.raises(ValueError):
        CopyCost.from_json("edge", image, b'{"bytes": -1, "seconds": 1, "at": 1}')
    with pytest.raises(ValueError):
        Settings.from_json(b'{"half_life": 0, "since": 1}')


def snapshot(image_id: str, snap_id: int = 4, *, image: str | None = None,
             rbd_id: str = "10a2b3c4d5") -> SourceSnapshot:
    return SourceSnapshot(image_id, "fsid-central", "images", image or image_id, snap_id, rbd_id)


def test_a_verified_record_whose_value_names_another_snapshot_is_a_value_error() -> None:
    image = str(uuid.uuid4())
    record = VerifiedSnapshot(snapshot(image, 4), "sha512:00", 1, T0)
    with pytest.raises(ValueError):
        VerifiedSnapshot.from_json(snapshot(image, 5).key, record.to_json())
    with pytest.raises(ValueError):
        VerifiedSnapshot.from_json(record.snapshot.key, record.to_json().replace(
            b'"sha512:00"', b'"00"'))
    with pytest.raises(ValueError):  # "no", a string, is true in a truth test
        VerifiedSnapshot.from_json(record.snapshot.key, record.to_json().replace(
            b'"by"', b'"mismatched": "no", "by"'))


def test_a_verified_record_vouches_only_for_the_same_snapshot_size_and_digest() -> None:
    image = str(uuid.uuid4())
    snap = snapshot(image, 4)
    record = VerifiedSnapshot(snap, "sha512:ab", 100, T0)
    assert record.vouches_for(snap, "sha512:AB", 100)
    assert not record.vouches_for(snapshot(image, 5), "sha512:ab", 100)  # re-created
    assert not record.vouches_for(snapshot(image, 4, rbd_id="other"), "sha512:ab", 100)
    assert not record.vouches_for(snapshot(image, 4, image="other"), "sha512:ab", 100)
    assert not record.vouches_for(snap, "sha512:cd", 100)  # Glance says another digest
    assert not record.vouches_for(snap, "md5:ab", 100)
    assert not record.vouches_for(snap, "sha512:ab", 101)
    assert not record.vouches_for(snap, "", 100)
    assert not dataclasses.replace(record, mismatched=True).vouches_for(snap, "sha512:ab", 100)


def test_a_value_that_is_not_finite_is_never_written() -> None:
    with pytest.raises(ValueError):
        Contribution(math.inf, T0).to_json()


# -- totals ---------------------------------------------------------------------------

def test_totals_sum_contributions_made_relative_to_different_epochs() -> None:
    h = HOUR
    totals = DemandTotals(h)
    # The same demand (1.0 at T0) expressed relative to three epochs.
    totals.add("a", Contribution(1.0, T0))
    totals.add("a", Contribution(0.5, T0 + int(h)))
    totals.add("a", Contribution(2.0, T0 - int(h)))
    assert totals.epoch == T0 + int(h)
    assert math.isclose(totals.score("a", T0), 3.0, rel_tol=1e-12)
    assert math.isclose(totals.score("a", T0 + 2 * h), 0.75, rel_tol=1e-12)
    assert totals.scores(T0) == {"a": totals.score("a", T0)}
    assert totals.score("missing", T0) == 0.0


def test_totals_never_overflow_whatever_the_epochs() -> None:
    h = 60.0
    totals = DemandTotals(h)
    totals.add("a", Contribution(2.0 ** 250, T0))
    totals.add("a", Contribution(2.0 ** 250, T0 + int(250 * h)))
    totals.add("b", Contribution(1.0, T0 - int(5000 * h)))
    score = totals.score("a", T0 + 250 * h)
    assert math.isfinite(score) and math.isclose(score, 2.0 ** 250 * (1 + 2.0 ** -250))
    assert totals.score("b", T0) == 0.0  # 2**-5000: below the float range, not an error
    # A reader's clock far behind: the score saturates (to inf), nothing raises.
    assert totals.score("a", T0 - 10 ** 9) >= score


# -- store semantics, both stores -----------------------------------------------------

def test_settings_are_recorded_once_and_the_first_wins(store: StateStore) -> None:
    async def go() -> None:
        first = await store.settings(Settings(HOUR, T0))
        second = await store.settings(Settings(2 * HOUR, T0 + 1))
        assert first == second == Settings(HOUR, T0)
    run(go())


def test_a_shard_is_written_only_by_the_instance_that_claimed_it_last(
        store: StateStore) -> None:
    a, b = ids(2)

    async def go() -> None:
        assert await store.claim_shard("ctl-1", "first") == {}
        await store.write_shard("ctl-1", "first", {a: Contribution(1.0, T0)}, ())
        assert await store.claim_shard("ctl-1", "second") == {a: Contribution(1.0, T0)}
        with pytest.raises(ShardLost):
            await store.write_shard("ctl-1", "first", {b: Contribution(1.0, T0)}, ())
        with pytest.raises(ShardLost):
            await store.write_shard("ctl-1", "first", {}, (a,))
        totals = await store.read_demand(HOUR)
        assert totals.image_ids() == [a]  # the refused writes applied nothing
        await store.write_shard("ctl-1", "second", {b: Contribution(2.0, T0)}, (a,))
        assert (await store.read_demand(HOUR)).image_ids() == [b]
        assert (await store.shards())["ctl-1"].instance == "second"
    run(go())


def test_a_write_to_a_shard_never_claimed_is_refused(store: StateStore) -> None:
    with pytest.raises(ShardLost):
        run(store.write_shard("ctl-9", "x", {ids(1)[0]: Contribution(1.0, T0)}, ()))


def test_demand_is_summed_over_every_shard_and_read_in_pages(store: StateStore) -> None:
    images = ids(40)  # several pages and write batches (7 and 5)

    async def go() -> None:
        for n, daemon in enumerate(["ctl-1", "ctl-2", "ctl-3"]):
            await store.claim_shard(daemon, f"i{n}")
            await store.write_shard(daemon, f"i{n}", {
                image: Contribution(float(k + n), T0) for k, image in enumerate(images)}, ())
        totals = await store.read_demand(HOUR)
        assert {i: totals.score(i, T0) for i in images} == \
            {image: float(3 * k + 3) for k, image in enumerate(images)}
        some = await store.demand_of(images[:9] + [str(uuid.uuid4())], HOUR)
        assert sorted(some.image_ids()) == images[:9]
        assert some.score(images[8], T0) == totals.score(images[8], T0)
        assert set(await store.shards()) == {"ctl-1", "ctl-2", "ctl-3"}
    run(go())


def test_pins_tombstones_and_costs_are_kept_and_removed(store: StateStore) -> None:
    a, b = ids(2)

    async def go() -> None:
        await store.put_pin(Pin(a, "admin", T0, "golden"))
        await store.put_pin(Pin(a, "admin", T0 + 1, "again"))  # idempotent: last wins
        assert await store.pins() == {a: Pin(a, "admin", T0 + 1, "again")}
        await store.remove_pin(a)
        await store.remove_pin(a)
        assert await store.pins() == {}
        await store.put_tombstone(Tombstone(a, T0, "ctl-1"))
        await store.put_tombstone(Tombstone(b, T0, "ctl-2"))
        assert set(await store.tombstones()) == {a, b}
        await store.remove_tombstones([a])
        assert set(await store.tombstones()) == {b}
        cost = CopyCost("edge", a, 4096, 0.5, "sha512:00", T0)
        await store.put_cost(cost)
        assert await store.costs("edge") == {a: cost}
        assert await store.costs("central") == {}
        await store.remove_cost("edge", a)
        assert await store.costs("edge") == {}
    run(go())


def test_verified_snapshots_are_kept_per_image_replaced_per_rbd_image_and_removed(
        store: StateStore) -> None:
    a, b = ids(2)
    first = VerifiedSnapshot(snapshot(a, 4), "sha512:aa", 10, T0, "ctl-1")
    other_pool = VerifiedSnapshot(dataclasses.replace(snapshot(a, 4), pool="images-b"),
                                  "sha512:aa", 10, T0, "ctl-1")
    recreated = VerifiedSnapshot(snapshot(a, 9), "sha512:aa", 10, T0 + 1, "ctl-2")
    of_b = VerifiedSnapshot(snapshot(b, 4), "sha512:bb", 10, T0, "ctl-1")

    async def go() -> None:
        assert await store.verified(a) == {}
        for record in (first, other_pool, of_b, first):  # idempotent
            await store.put_verified(record)
        assert await store.verified(a) == {first.snapshot.key: first,
                                           other_pool.snapshot.key: other_pool}
        # The same RBD image's snapshot re-created: the older record goes.
        await store.put_verified(recreated)
        assert await store.verified(a) == {recreated.snapshot.key: recreated,
                                           other_pool.snapshot.key: other_pool}
        await store.remove_verified([a])
        await store.remove_verified([a])
        assert await store.verified(a) == {}
        assert await store.verified(b) == {of_b.snapshot.key: of_b}
    run(go())


def test_mismatches_are_kept_apart_from_the_verified_records(store: StateStore) -> None:
    """No write or removal of verified records touches them (a daemon of an
    earlier version makes those), only the image's deletion does."""
    a, b = ids(2)
    bad = VerifiedSnapshot(snapshot(a, 4), "sha512:ff", 10, T0, "ctl-1", mismatched=True)
    good = VerifiedSnapshot(snapshot(a, 4), "sha512:aa", 10, T0, "ctl-2")
    of_b = VerifiedSnapshot(snapshot(b, 4), "sha512:ff", 10, T0, "ctl-1", mismatched=True)

    async def go() -> None:
        assert await store.mismatched(a) == set()
        for record in (bad, of_b, bad):  # idempotent
            await store.put_mismatched(record)
        await store.put_verified(good)
        await store.put_verified(dataclasses.replace(good, snapshot=snapshot(a, 9)))
        await store.remove_verified([a])
        assert await store.mismatched(a) == {bad.snapshot.key}
        assert await store.verified(a) == {}
        await store.remove_mismatched([a])
        await store.remove_mismatched([a])
        assert await store.mismatched(a) == set()
        assert await store.mismatched(b) == {of_b.snapshot.key}
    run(go())


@pytest.mark.parametrize("bad", ["volume-1", "{x}", "A" * 36, ""])
def test_keys_that_are_not_canonical_image_ids_are_refused(store: StateStore,
                                                           bad: str) -> None:
    with pytest.raises(ValueError):
        run(store.put_pin(Pin(bad, "admin", T0)))
    with pytest.raises(ValueError):
        run(store.put_cost(CopyCost("edge", bad, 1, 1.0, "", T0)))
    with pytest.raises(ValueError):
        run(store.put_verified(VerifiedSnapshot(snapshot(bad), "md5:0", 1, T0)))
    with pytest.raises(ValueError):
        run(store.verified(bad))


def test_names_that_are_not_tokens_are_refused(store: StateStore) -> None:
    with pytest.raises(ValueError):
        run(store.claim_shard("../x", "i"))
    with pytest.raises(ValueError):
        run(store.put_cost(CopyCost("a b", ids(1)[0], 1, 1.0, "", T0)))
