"""The per-daemon demand writer, on both stores: shards that add up exactly,
writes with a bounded delay, what a crash loses, re-basing, clean-up."""

from __future__ import annotations

import asyncio
import math
import random
import time
import uuid
from collections.abc import Iterator
from typing import Any

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from tests.unit.state_stores import STORES, Clock, FlakyStore, fake_rados_modules, make_store
from warmer.state.demand import MAX_FUTURE, DemandWriter
from warmer.state.store import REBASE_AFTER, Settings, ShardLost, StateStore, StateUnavailable

T0 = 1_764_000_000.0
HOUR = 3600.0
IMAGES = sorted(str(uuid.UUID(int=n + 1)) for n in range(5))


@pytest.fixture(scope="module", autouse=True)
def _fake_rados() -> Iterator[None]:
    with fake_rados_modules():
        yield


@pytest.fixture(params=STORES)
def kind(request: pytest.FixtureRequest) -> str:
    return str(request.param)


def writer(store: StateStore, daemon: str, clock: Clock, *, half_life: float = HOUR,
           floor: float = 0.0) -> DemandWriter:
    return DemandWriter(store, daemon, half_life=half_life, flush_interval=5.0, floor=floor,
                        clock=clock)


def expected(events: list[tuple[str, float, float]], now: float, half_life: float
             ) -> dict[str, float]:
    """The definition: each event decayed from its own timestamp."""
    out: dict[str, list[float]] = {}
    for image, weight, at in events:
        out.setdefault(image, []).append(weight * 2.0 ** ((at - now) / half_life))
    return {image: math.fsum(terms) for image, terms in out.items()}


def close(a: dict[str, float], b: dict[str, float]) -> bool:
    return a.keys() == b.keys() and all(
        math.isclose(a[k], b[k], rel_tol=1e-9, abs_tol=0.0) for k in a)


# -- the model ------------------------------------------------------------------------

def test_demand_halves_every_half_life(kind: str, executor: Any) -> None:
    clock = Clock(T0)
    store = make_store(kind, executor)

    async def go() -> None:
        w = writer(store, "ctl-1", clock)
        await w.start()
        w.add(IMAGES[0], 4.0, T0)
        await w.flush()
        totals = await store.read_demand(HOUR)
        assert math.isclose(totals.score(IMAGES[0], T0), 4.0)
        assert math.isclose(totals.score(IMAGES[0], T0 + HOUR), 2.0)
        assert math.isclose(totals.score(IMAGES[0], T0 + 3 * HOUR), 0.5)
        assert math.isclose(w.score(IMAGES[0], T0 + HOUR), 2.0)
    asyncio.run(go())


def test_three_daemons_add_up_to_one_that_saw_everything(kind: str, executor: Any) -> None:
    rng = random.Random(7)
    events = [(rng.choice(IMAGES), rng.uniform(0.1, 3.0), T0 + rng.uniform(0, 48 * HOUR))
              for _ in range(300)]
    clock = Clock(T0 + 48 * HOUR)
    shared, alone = make_store(kind, executor), make_store("memory", executor)

    async def go() -> None:
        writers = [writer(shared, f"ctl-{n}", clock) for n in range(3)]
        single = writer(alone, "solo", clock)
        for w in [*writers, single]:
            await w.start()
        for n, (image, weight, at) in enumerate(events):
            writers[n % 3].add(image, weight, at)
            single.add(image, weight, at)
            if n % 41 == 0:
                await writers[n % 3].flush()
        for w in [*writers, single]:
            await w.flush()
        now = clock.now
        split = (await shared.read_demand(HOUR)).scores(now)
        whole = (await alone.read_demand(HOUR)).scores(now)
        assert close(split, whole)
        assert close(split, expected(events, now, HOUR))
    asyncio.run(go())


# -- bounded delay, what a crash loses ------------------------------------------------

def test_nothing_is_written_before_a_flush_and_everything_after(kind: str,
                                                                 executor: Any) -> None:
    store = make_store(kind, executor)

    async def go() -> None:
        w = writer(store, "ctl-1", Clock(T0))
        await w.start()
        w.add(IMAGES[0], 1.0, T0)
        assert len(await store.read_demand(HOUR)) == 0
        assert w.pending == 1
        assert await w.flush() == 1
        assert w.pending == 0
        assert (await store.read_demand(HOUR)).image_ids() == [IMAGES[0]]
        assert await w.flush() == 0  # nothing pending: no write at all
    asyncio.run(go())


def test_a_crash_loses_the_unflushed_window_only(kind: str, executor: Any) -> None:
    """kill -9 between two writes: a new process under the same name finds
    exactly what was written, and counts on from there."""
    clock = Clock(T0)
    store = make_store(kind, executor)

    async def go() -> None:
        first = writer(store, "ctl-1", clock)
        await first.start()
        first.add(IMAGES[0], 1.0, T0)
        await first.flush()
        first.add(IMAGES[0], 5.0, T0)  # never written: the process dies here
        first.add(IMAGES[1], 5.0, T0)
        restarted = writer(store, "ctl-1", clock)
        await restarted.start()
        assert restarted.score(IMAGES[0], T0) == pytest.approx(1.0)
        assert restarted.score(IMAGES[1], T0) == 0.0
        restarted.add(IMAGES[0], 2.0, T0)
        await restarted.flush()
        totals = await store.read_demand(HOUR)
        assert totals.score(IMAGES[0], T0) == pytest.approx(3.0)
        assert IMAGES[1] not in totals
    asyncio.run(go())


def test_run_writes_every_interval_and_once_more_on_stop(kind: str, executor: Any) -> None:
    store = make_store(kind, executor)

    async def go() -> None:
        w = DemandWriter(store, "ctl-1", half_life=HOUR, flush_interval=0.05)
        await w.start()
        task = asyncio.create_task(w.run())
        w.add(IMAGES[0], 1.0, time.time())
        for _ in range(100):
            await asyncio.sleep(0.01)
            if len(await store.read_demand(HOUR)):
                break
        assert (await store.read_demand(HOUR)).image_ids() == [IMAGES[0]]
        w.add(IMAGES[1], 1.0, time.time())
        w.stop()
        await asyncio.wait_for(task, 5)
        assert sorted((await store.read_demand(HOUR)).image_ids()) == IMAGES[:2]
    asyncio.run(go())


@pytest.mark.parametrize("mode", ["before", "after"])
def test_a_failed_write_keeps_everything_and_a_retry_counts_it_once(
        kind: str, executor: Any, mode: str) -> None:
    """Writes are absolute values, not increments: a write whose reply was
    lost (``after``: it was applied) may be repeated without double count."""
    store = FlakyStore(make_store(kind, executor))

    async def go() -> None:
        w = writer(store, "ctl-1", Clock(T0))  # type: ignore[arg-type]
        await w.start()
        w.add(IMAGES[0], 1.0, T0)
        await w.flush()
        w.add(IMAGES[0], 2.0, T0)
        store.fail = [mode]
        with pytest.raises(StateUnavailable):
            await w.flush()
        assert w.pending == 1
        w.add(IMAGES[0], 4.0, T0)
        await w.flush()
        totals = await store.read_demand(HOUR)
        assert totals.score(IMAGES[0], T0) == pytest.approx(7.0)
    asyncio.run(go())


def test_two_processes_under_one_name_lose_no_count(kind: str, executor: Any,
                                                     caplog: pytest.LogCaptureFixture) -> None:
    clock = Clock(T0)
    store = make_store(kind, executor)

    async def go() -> None:
        old, new = writer(store, "ctl-1", clock), writer(store, "ctl-1", clock)
        await old.start()
        old.add(IMAGES[0], 1.0, T0)
        await old.flush()
        await new.start()  # the shard is new's now
        new.add(IMAGES[0], 2.0, T0)
        old.add(IMAGES[0], 4.0, T0)
        await new.flush()
        with pytest.raises(ShardLost):
            await old.flush()  # refused; old claims the shard back and reloads it
        await old.flush()  # 1 + 2 + 4
        new.add(IMAGES[0], 8.0, T0)
        with pytest.raises(ShardLost):
            await new.flush()  # and now the other way round
        await new.flush()
        totals = await store.read_demand(HOUR)
        assert totals.score(IMAGES[0], T0) == pytest.approx(15.0)
    asyncio.run(go())
    assert "claimed by another process" in caplog.text


# -- re-basing ------------------------------------------------------------------------

def test_the_epoch_moves_before_values_grow_past_the_bound(kind: str, executor: Any) -> None:
    h = 60.0
    clock = Clock(T0)
    store = make_store(kind, executor)
    events: list[tuple[str, float, float]] = []

    async def go() -> None:
        w = writer(store, "ctl-1", clock, half_life=h)
        await w.start()
        first_epoch = w.epoch
        for step in range(1, 9):  # 8 x 100 half-lives: several re-bases
            clock.now = T0 + step * 100 * h
            event = (IMAGES[step % 2], 1.0, clock.now)
            events.append(event)
            w.add(*event)
            await w.flush()
        assert w.epoch > first_epoch
        stored = await store.claim_shard("ctl-1", w.instance)
        assert all(c.value < 2.0 ** (REBASE_AFTER + 1) for c in stored.values())
        totals = await store.read_demand(h)
        assert close(totals.scores(clock.now), expected(events, clock.now, h))
    asyncio.run(go())


def test_an_event_stamped_far_in_the_future_counts_as_of_the_bound(kind: str,
                                                                    executor: Any) -> None:
    clock = Clock(T0)
    store = make_store(kind, executor)

    async def go() -> None:
        w = writer(store, "ctl-1", clock)
        await w.start()
        w.add(IMAGES[0], 1.0, T0 + 10 * 365 * 86400)
        w.add(IMAGES[1], 1.0, T0)
        await w.flush()
        totals = await store.read_demand(HOUR)
        assert totals.score(IMAGES[0], T0 + MAX_FUTURE) == pytest.approx(1.0)
        assert totals.score(IMAGES[1], T0) == pytest.approx(1.0)
    asyncio.run(go())


def test_a_daemon_configured_with_another_half_life_uses_the_recorded_one(
        kind: str, executor: Any, caplog: pytest.LogCaptureFixture) -> None:
    store = make_store(kind, executor)

    async def go() -> None:
        await store.settings(Settings(HOUR, T0))
        w = writer(store, "ctl-1", Clock(T0), half_life=2 * HOUR)
        await w.start()
        assert w.half_life == HOUR
    asyncio.run(go())
    assert "using the recorded one" in caplog.text


# -- clean-up -------------------------------------------------------------------------

def test_cold_and_tombstoned_images_are_dropped_by_their_owner(kind: str,
                                                                executor: Any) -> None:
    clock = Clock(T0)
    store = make_store(kind, executor)

    async def go() -> None:
        w = writer(store, "ctl-1", clock, floor=0.01)
        await w.start()
        w.add(IMAGES[0], 1.0, T0 - 10 * HOUR)  # 1/1024 by now: below the floor
        w.add(IMAGES[1], 1.0, T0)
        w.add(IMAGES[2], 1.0, T0)
        await w.flush()
        assert len(await store.read_demand(HOUR)) == 3
        assert w.sweep(T0, tombstoned={IMAGES[2]}) == 2
        await w.flush()
        assert (await store.read_demand(HOUR)).image_ids() == [IMAGES[1]]
    asyncio.run(go())


def test_forgetting_an_image_while_its_write_is_in_flight_sticks(kind: str,
                                                                  executor: Any) -> None:
    store = make_store(kind, executor)

    async def go() -> None:
        w = writer(store, "ctl-1", Clock(T0))
        await w.start()
        w.add(IMAGES[0], 1.0, T0)
        flight = asyncio.create_task(w.flush())
        await asyncio.sleep(0)  # the write has started
        w.forget(IMAGES[0])
        await flight
        assert w.score(IMAGES[0], T0) == 0.0
        await w.flush()
        assert IMAGES[0] not in await store.read_demand(HOUR)
    asyncio.run(go())


# -- the property: N daemons, any split, any order, any flush timing -----------------

event = st.tuples(st.sampled_from(IMAGES), st.floats(0.1, 5.0),
                  st.floats(0.0, 1.0))  # time as a fraction of the span
step = st.tuples(event, st.integers(0, 2),  # which daemon counts it
                 st.sampled_from(["none", "ok", "ok", "before", "after"]))  # then its flush


@pytest.mark.parametrize("store_kind", STORES)
@settings(max_examples=60, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(steps=st.lists(step, min_size=1, max_size=40),
       half_life=st.sampled_from([60.0, 3600.0, 86400.0]),
       span=st.sampled_from([2.0, 40.0, 700.0]))  # in half-lives; 700 crosses re-bases
def test_shards_add_up_exactly_whatever_the_split_order_and_flush_timing(
        store_kind: str, executor: Any, steps: list[tuple[Any, int, str]],
        half_life: float, span: float) -> None:
    events = [(image, weight, T0 + frac * span * half_life)
              for (image, weight, frac), _, _ in steps]
    clock = Clock(T0)
    shared = FlakyStore(make_store(store_kind, executor))
    alone = make_store("memory", executor)

    async def go() -> None:
        writers = [writer(shared, f"ctl-{n}", clock,  # type: ignore[arg-type]
                          half_life=half_life) for n in range(3)]
        single = writer(alone, "solo", clock, half_life=half_life)
        for w in [*writers, single]:
            await w.start()
        # Time runs forward while events arrive in any order: an event is
        # never seen before it happened, but may be seen long after.
        for n, ((image, weight, at), (_, daemon, flush)) in enumerate(zip(events, steps,
                                                                           strict=True)):
            clock.now = max(clock.now, at, T0 + (n + 1) / len(events) * span * half_life)
            writers[daemon].add(image, weight, at)
            single.add(image, weight, at)
            if flush != "none":
                shared.fail = [] if flush == "ok" else [flush]
                try:
                    await writers[daemon].flush()
                except StateUnavailable:
                    pass
        shared.fail = []
        for w in [*writers, single]:
            await w.flush()  # the clean stop
        now = clock.now
        split = (await shared.read_demand(half_life)).scores(now)
        whole = (await alone.read_demand(half_life)).scores(now)
        assert close(split, whole), (split, whole)
        assert close(split, expected(events, now, half_life))
    asyncio.run(go())
