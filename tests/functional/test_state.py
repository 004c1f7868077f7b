"""The shared state on the real stack's Ceph, as warmer's own cephx user
(``profile rbd pool=images``), in pool ``images`` under RADOS namespaces:
three daemons' shards written at once add up exactly for a fresh reader,
and only what was written survives a process."""

from __future__ import annotations

import asyncio
import concurrent.futures
import math
import random
import subprocess
import time
import uuid
from collections.abc import Iterator

import pytest
import rados
from stackclient import Stack, ceph

from tests.functional.conftest import record_timing
from warmer.ceph.client import CephClient, ClusterConfig
from warmer.state.demand import DemandWriter
from warmer.state.memory import MemoryStore
from warmer.state.rados import RadosStore
from warmer.state.store import Contribution, Pin, Settings, ShardLost, StateError

HOUR = 3600.0


@pytest.fixture(scope="module")
def executor() -> Iterator[concurrent.futures.ThreadPoolExecutor]:
    pool = concurrent.futures.ThreadPoolExecutor(8, thread_name_prefix="state")
    yield pool
    pool.shutdown(wait=True)


def state(stack: Stack, executor: concurrent.futures.Executor, namespace: str, *,
          pool: str = "images") -> RadosStore:
    """A store with its own RADOS connection, as one daemon has."""
    client = CephClient(ClusterConfig(stack.ceph_conf(), "warmer", stack.keyring("warmer")),
                        executor)
    return RadosStore(client, pool, namespace)


def fresh_namespace() -> str:
    return f"warmer-{uuid.uuid4().hex[:8]}"


def close(a: dict[str, float], b: dict[str, float]) -> bool:
    return a.keys() == b.keys() and all(math.isclose(a[k], b[k], rel_tol=1e-9) for k in a)


def test_three_daemons_flushing_at_once_add_up_for_a_fresh_reader(
        stack: Stack, executor: concurrent.futures.Executor) -> None:
    rng = random.Random(11)
    images = [str(uuid.uuid4()) for _ in range(300)]
    now = time.time()
    events = [(rng.choice(images), rng.choice([1.0, 0.5]), now - rng.uniform(0, 6 * HOUR))
              for _ in range(3000)]
    stores = [state(stack, executor, "warmer") for _ in range(3)]
    reference = MemoryStore()

    async def go() -> tuple[dict[str, float], dict[str, float], float]:
        writers = [DemandWriter(s, f"ctl-{n}", half_life=HOUR, flush_interval=0.02)
                   for n, s in enumerate(stores)]
        single = DemandWriter(reference, "solo", half_life=HOUR, flush_interval=1.0)
        for w in [*writers, single]:
            await w.start()
        runs = [asyncio.create_task(w.run()) for w in writers]
        for n, (image, weight, at) in enumerate(events):
            writers[rng.randrange(3)].add(image, weight, at)
            single.add(image, weight, at)
            if n % 50 == 0:
                await asyncio.sleep(0.005)  # let the three write while events arrive
        for w in writers:
            w.stop()
        await asyncio.wait_for(asyncio.gather(*runs), 30)
        await single.flush()
        # Each wrote many times while the others did.
        assert all(w.writes >= 5 for w in writers), [w.writes for w in writers]
        reader = state(stack, executor, "warmer")
        started = time.perf_counter()
        totals = await reader.read_demand(HOUR)
        read_seconds = time.perf_counter() - started
        assert set(await reader.shards()) == {"ctl-0", "ctl-1", "ctl-2"}
        at = time.time()
        whole = await reference.read_demand(HOUR)
        for s in [*stores, reader]:
            await s.close()
        return totals.scores(at), whole.scores(at), read_seconds

    split, whole, read_seconds = asyncio.run(go())
    assert len(split) == len({image for image, _, _ in events})
    assert close(split, whole)
    record_timing("state: fresh read of 3 shards (300 images)", read_seconds)


def test_unflushed_demand_is_lost_and_flushed_demand_is_not(
        stack: Stack, executor: concurrent.futures.Executor) -> None:
    namespace = fresh_namespace()
    flushed, unflushed = str(uuid.uuid4()), str(uuid.uuid4())
    now = time.time()

    async def go() -> None:
        first = state(stack, executor, namespace)
        w = DemandWriter(first, "ctl-1", half_life=HOUR, flush_interval=5.0)
        await w.start()
        w.add(flushed, 1.0, now)
        await w.flush()
        w.add(flushed, 2.0, now)
        w.add(unflushed, 2.0, now)
        await first.close()  # the process dies: its connection goes, nothing written

        second = state(stack, executor, namespace)
        restarted = DemandWriter(second, "ctl-1", half_life=HOUR, flush_interval=5.0)
        await restarted.start()
        assert restarted.score(flushed, now) == pytest.approx(1.0)
        assert restarted.score(unflushed, now) == 0.0
        restarted.add(flushed, 4.0, now)
        await restarted.flush()
        await second.close()

        reader = state(stack, executor, namespace)
        totals = await reader.read_demand(HOUR)
        assert totals.image_ids() == [flushed]
        assert totals.score(flushed, now) == pytest.approx(5.0)
        await reader.close()
    asyncio.run(go())


def test_a_superseded_process_writes_nothing_at_all(
        stack: Stack, executor: concurrent.futures.Executor) -> None:
    """omap_cmp on the real OSD: the refused op is refused as a whole."""
    namespace = fresh_namespace()
    a, b = str(uuid.uuid4()), str(uuid.uuid4())
    now = int(time.time())

    async def go() -> None:
        old, new = state(stack, executor, namespace), state(stack, executor, namespace)
        await old.claim_shard("ctl-1", "old")
        await old.write_shard("ctl-1", "old", {a: Contribution(1.0, now)}, ())
        assert await new.claim_shard("ctl-1", "new") == {a: Contribution(1.0, now)}
        with pytest.raises(ShardLost):
            await old.write_shard("ctl-1", "old", {b: Contribution(1.0, now)}, (a,))
        with pytest.raises(ShardLost):
            await old.write_shard("ctl-9", "old", {b: Contribution(1.0, now)}, ())
        totals = await new.read_demand(HOUR)
        assert totals.image_ids() == [a]
        await new.write_shard("ctl-1", "new", {b: Contribution(2.0, now)}, (a,))
        assert (await new.read_demand(HOUR)).image_ids() == [b]
        for s in (old, new):
            await s.close()
    asyncio.run(go())


def test_racing_daemons_agree_on_one_half_life(
        stack: Stack, executor: concurrent.futures.Executor) -> None:
    namespace = fresh_namespace()

    async def go() -> list[Settings]:
        stores = [state(stack, executor, namespace) for _ in range(3)]
        got = await asyncio.gather(*(s.settings(Settings(HOUR * (n + 1), time.time()))
                                     for n, s in enumerate(stores)))
        for s in stores:
            await s.close()
        return list(got)
    got = asyncio.run(go())
    assert got[0] == got[1] == got[2]


def test_100k_images_over_three_shards_write_and_read_back(
        stack: Stack, executor: concurrent.futures.Executor) -> None:
    namespace = fresh_namespace()
    images = [str(uuid.uuid4()) for _ in range(100_000)]
    now = time.time()

    async def go() -> tuple[float, float]:
        stores = [state(stack, executor, namespace) for _ in range(3)]
        writers = [DemandWriter(s, f"ctl-{n}", half_life=HOUR, flush_interval=5.0)
                   for n, s in enumerate(stores)]
        for w in writers:
            await w.start()
        for n, image in enumerate(images):
            writers[n % 3].add(image, 1.0, now)
        started = time.perf_counter()
        await asyncio.gather(*(w.flush() for w in writers))
        flush_seconds = time.perf_counter() - started
        reader = state(stack, executor, namespace)
        started = time.perf_counter()
        totals = await reader.read_demand(HOUR)
        read_seconds = time.perf_counter() - started
        assert len(totals) == len(images)
        assert totals.score(images[0], now) == pytest.approx(1.0)
        for s in [*stores, reader]:
            await s.close()
        return flush_seconds, read_seconds
    flush_seconds, read_seconds = asyncio.run(go())
    record_timing("state: flush 100k images over 3 shards", flush_seconds)
    record_timing("state: fresh read of 100k images, 3 shards", read_seconds)


def test_the_state_needs_write_access_to_its_pool(
        stack: Stack, executor: concurrent.futures.Executor) -> None:
    """warmer's user has the rbd profile on ``images`` (state works there,
    in any namespace) and read-only on Cinder's ``volumes``, where the state
    is refused: the caps docs/cephx.md lists are the ones it needs."""
    async def go() -> None:
        refused = state(stack, executor, "warmer", pool="volumes")
        with pytest.raises(StateError):
            await refused.claim_shard("ctl-1", "i")
        await refused.close()
    asyncio.run(go())
    with ceph.connect(stack.ceph_conf(), "admin", stack.keyring("admin")) as cluster, \
            cluster.open_ioctx("volumes") as ioctx:
        ioctx.set_namespace("warmer")
        with pytest.raises(rados.ObjectNotFound):
            ioctx.stat("warmer.state")  # nothing was written


def test_the_narrowest_caps_for_the_state_are_enough(
        stack: Stack, executor: concurrent.futures.Executor) -> None:
    """docs/cephx.md: read and write in the state's pool and namespace is
    all the state needs (no object class, no other namespace)."""
    user = f"state-{uuid.uuid4().hex[:6]}"
    keyring = stack.dir / f"ceph.client.{user}.keyring"
    out = subprocess.run(
        ["ceph", "--conf", stack.ceph_conf(), "--name", "client.admin", "--keyring",
         stack.keyring("admin"), "auth", "get-or-create", f"client.{user}", "mon", "allow r",
         "osd", "allow rw pool=images namespace=warmer-narrow"],
        check=True, capture_output=True, text=True).stdout
    keyring.write_text(out)

    def narrow(namespace: str) -> RadosStore:
        client = CephClient(ClusterConfig(stack.ceph_conf(), user, str(keyring)), executor)
        return RadosStore(client, "images", namespace)
    image = str(uuid.uuid4())
    now = time.time()

    async def go() -> None:
        allowed = narrow("warmer-narrow")
        w = DemandWriter(allowed, "ctl-1", half_life=HOUR, flush_interval=5.0)
        await w.start()
        w.add(image, 1.0, now)
        await w.flush()
        assert (await allowed.read_demand(HOUR)).score(image, now) == pytest.approx(1.0)
        await allowed.put_pin(Pin(image, "admin", now))
        assert set(await allowed.pins()) == {image}
        await allowed.close()
        elsewhere = narrow("warmer")
        with pytest.raises(StateError):
            await elsewhere.pins()
        await elsewhere.close()
    asyncio.run(go())
