"""The daemon's side of the shared demand (warmer/state/fleet.py): counted
events reach the writers once, a restart keeps scores without counting
anything twice, daemons converge to what one daemon that saw everything
would score, an outage loses no local count, and tombstones travel."""

from __future__ import annotations

import asyncio
import concurrent.futures
import datetime as dt
import math
import random
import uuid
from collections.abc import Iterator, Mapping, Sequence
from typing import Any

import pytest

from tests.unit import fake_rbd
from tests.unit.state_stores import STATE_CONF, Clock, fake_rados_modules
from warmer.ceph.client import CephClient, ClusterConfig
from warmer.events import ImageDeleted, ImageInfo, ImageSent, VolumeCreatedFromImage
from warmer.popularity import Policy
from warmer.state.fleet import FleetDemand, SiteStore, demand_namespace
from warmer.state.memory import MemoryStore
from warmer.state.rados import RadosStore
from warmer.state.store import StateStore, StateUnavailable
from warmer.tracker import Tracker, Weights

T0 = 1_764_000_000.0
HOUR = 3600.0
DAY = 86400.0
SITES = ("central", "edge")
IMAGES = sorted(str(uuid.UUID(int=n + 1)) for n in range(6))


@pytest.fixture(scope="module", autouse=True)
def _fake_rados() -> Iterator[None]:
    with fake_rados_modules():
        yield


@pytest.fixture(params=["memory", "rados"])
def state(request: pytest.FixtureRequest,
          executor: concurrent.futures.Executor) -> tuple[StateStore, dict[str, StateStore]]:
    """A base store and one demand store per site, as a fleet shares them
    (RADOS: one pool, the site namespaces next to the base one)."""
    if request.param == "memory":
        return MemoryStore(), {site: MemoryStore() for site in SITES}
    fake_rbd.FakeCluster(STATE_CONF, "fsid-state")
    client = CephClient(ClusterConfig(STATE_CONF, "warmer"), executor)
    base = RadosStore(client, "images", "warmer", page_size=3, write_batch=2)
    return base, {site: RadosStore(client, "images", demand_namespace("warmer", site),
                                   page_size=3, write_batch=2) for site in SITES}


def tracker(sites: Sequence[str] = SITES) -> Tracker:
    return Tracker(half_life=HOUR, weights=Weights(), policy=Policy(), threshold=2.0,
                   top_k=0, dedup_window=10_000, sites=sites)


def fleet(t: Tracker, base: StateStore, stores: Mapping[str, StateStore], daemon: str,
          clock: Clock, **kw: Any) -> FleetDemand:
    f = FleetDemand(t, base, {s: SiteStore(base, stores[s]) for s in t.sites}, daemon=daemon,
                    flush_interval=5.0, refresh_interval=10.0, clock=clock, **kw)
    t.on_demand = f.count
    return f


def volume(image_id: str, at: float, volume_id: str | None = None) -> VolumeCreatedFromImage:
    return VolumeCreatedFromImage(volume_id or str(uuid.uuid4()), image_id, "h@b#p", "raw",
                                  10, dt.datetime.fromtimestamp(at, dt.UTC))


def scores(t: Tracker, now: float) -> dict[tuple[str, str], float]:
    return {(site, i): t.score(i, now, site) for site in t.sites for i in IMAGES
            if t.score(i, now, site) > 0}


def close(a: dict[Any, float], b: dict[Any, float]) -> bool:
    return a.keys() == b.keys() and all(math.isclose(a[k], b[k], rel_tol=1e-9) for k in a)


def flush_all(*fleets: FleetDemand) -> Any:
    return asyncio.gather(*(w.flush() for f in fleets for w in f.writers.values()))


def test_demand_namespaces_are_one_per_site_under_the_base() -> None:
    assert demand_namespace("warmer", "edge") == "warmer.demand.edge"
    assert demand_namespace("", "edge") == "demand.edge"
    for bad in ("", "a b", ".edge", "edge/1", "*"):
        with pytest.raises(ValueError):
            demand_namespace("warmer", bad)
    with pytest.raises(ValueError, match="longer than 256"):
        demand_namespace("w" * 250, "edge")


def test_only_counted_demand_reaches_the_hook_once_with_its_sites() -> None:
    calls: list[tuple[str, float, float, tuple[str, ...]]] = []
    t = Tracker(half_life=HOUR, weights=Weights(), policy=Policy(), threshold=2.0, top_k=0,
                dedup_window=100, own_users=frozenset({"warmer-user"}), sites=SITES,
                on_demand=lambda *a: calls.append(a))
    a, b = IMAGES[:2]
    t.apply(volume(a, T0, "vol-1"), sites=["edge", "nowhere", "edge"])
    t.apply(volume(a, T0 + 1, "vol-1"))  # duplicate
    t.apply(ImageSent(a, "msg-1", dt.datetime.fromtimestamp(T0 + 2, dt.UTC),
                      receiver_user_id="warmer-user"))  # warmer's own download
    t.apply(volume(a, T0 + 3, "vol-2"), sites=["nowhere"])  # counted in no site
    t.apply(ImageDeleted(b, dt.datetime.fromtimestamp(T0, dt.UTC)))
    t.apply(volume(b, T0 + 4, "vol-3"))  # deleted image
    t.apply(ImageSent(a, "msg-2", dt.datetime.fromtimestamp(T0 + 5, dt.UTC)))
    assert calls == [(a, 1.0, T0, ("edge",)), (a, 0.5, T0 + 5, SITES)]


def test_counted_events_reach_each_sites_writer_exactly_once(
        state: tuple[StateStore, dict[str, StateStore]]) -> None:
    base, stores = state
    clock = Clock(T0)
    t = tracker()
    f = fleet(t, base, stores, "ctl-1", clock)
    rng = random.Random(3)

    async def go() -> None:
        await f.start()
        for n in range(200):
            event = volume(rng.choice(IMAGES), T0 - rng.uniform(0, HOUR), f"vol-{n % 150}")
            t.apply(event, sites=rng.choice([["central"], ["edge"], SITES]))
        await flush_all(f)

    asyncio.run(go())
    for site in SITES:
        writer = f.writers[site]
        for image_id in IMAGES:
            assert math.isclose(writer.score(image_id, T0), t.score(image_id, T0, site),
                                rel_tol=1e-12)


def test_a_restart_under_the_same_name_keeps_every_score_and_counts_nothing_twice(
        state: tuple[StateStore, dict[str, StateStore]]) -> None:
    base, stores = state
    clock = Clock(T0)
    rng = random.Random(5)

    def feed(t: Tracker, n: int) -> None:
        for _ in range(n):
            t.apply(volume(rng.choice(IMAGES), clock.now - rng.uniform(0, HOUR)),
                    sites=rng.choice([["central"], ["edge"], SITES]))

    async def go() -> None:
        other_t = tracker()
        other = fleet(other_t, base, stores, "ctl-2", clock)
        await other.start()
        feed(other_t, 50)
        await flush_all(other)

        first_t = tracker()
        first = fleet(first_t, base, stores, "ctl-1", clock)
        await first.start()
        feed(first_t, 80)
        await flush_all(first)
        clock.now += 30
        await first.refresh()
        await first.refresh()  # a second refresh changes nothing
        before = scores(first_t, clock.now)

        # The process dies after its flush; a new one starts under the same name.
        second_t = tracker()
        second = fleet(second_t, base, stores, "ctl-1", clock)
        assert await second.start()
        assert close(scores(second_t, clock.now), before)
        for _ in range(3):
            await second.refresh()
        assert close(scores(second_t, clock.now), before)
        assert set(second_t.image_ids()) == {i for _, i in before}

        # And it keeps counting on top of its previous life, once.
        feed(second_t, 40)
        await flush_all(second)
        after = scores(second_t, clock.now)
        third_t = tracker()
        assert await fleet(third_t, base, stores, "ctl-1", clock).start()
        assert close(scores(third_t, clock.now), after)

    asyncio.run(go())


def test_daemons_that_split_the_events_converge_to_one_that_saw_them_all(
        state: tuple[StateStore, dict[str, StateStore]]) -> None:
    base, stores = state
    clock = Clock(T0)
    rng = random.Random(7)
    names = ["ctl-1", "ctl-2", "ctl-3"]
    trackers = [tracker() for _ in names]
    reference = tracker()

    async def go() -> None:
        fleets = [fleet(t, base, stores, name, clock) for t, name in zip(trackers, names,
                                                                          strict=True)]
        for f in fleets:
            await f.start()
        for n in range(600):
            event = volume(rng.choice(IMAGES), clock.now - rng.uniform(0, 3 * HOUR))
            sites = rng.choice([["central"], ["edge"], SITES])
            trackers[rng.randrange(3)].apply(event, sites=sites)
            reference.apply(event, sites=sites)
            if n % 100 == 0:
                # Flushes and refreshes at any moment, in any order.
                f = rng.choice(fleets)
                await flush_all(f)
                await rng.choice(fleets).refresh()
                clock.now += rng.uniform(0, 60)
        await flush_all(*fleets)
        for f in fleets:
            await f.refresh()

    asyncio.run(go())
    want = scores(reference, clock.now)
    assert len(want) == 2 * len(IMAGES)
    for t in trackers:
        assert close(scores(t, clock.now), want)


class Outage:
    """Passes everything to ``inner`` unless ``down``: then every call
    raises StateUnavailable."""

    def __init__(self, inner: StateStore) -> None:
        self.inner = inner
        self.down = False

    def __getattr__(self, name: str) -> Any:
        attr = getattr(self.inner, name)
        if not callable(attr):
            return attr

        async def call(*args: Any, **kwargs: Any) -> Any:
            if self.down:
                raise StateUnavailable("injected: cluster down")
            return await attr(*args, **kwargs)
        return call


def test_a_store_outage_loses_no_local_count_and_is_counted_and_recovers(
        state: tuple[StateStore, dict[str, StateStore]]) -> None:
    base, stores = state
    outage_base = Outage(base)
    outage_stores: dict[str, StateStore] = {s: Outage(stores[s]) for s in SITES}  # type: ignore[misc]
    clock = Clock(T0)
    errors: list[str] = []
    t = tracker()
    reference = tracker()
    f = fleet(t, outage_base, outage_stores, "ctl-1", clock,  # type: ignore[arg-type]
              on_error=lambda op, exc: errors.append(op))
    for o in [outage_base, *outage_stores.values()]:
        o.down = True  # type: ignore[attr-defined]

    async def go() -> None:
        assert not await f.start()
        for n in range(30):
            event = volume(IMAGES[n % 3], clock.now - n)
            t.apply(event)
            reference.apply(event)
        assert not await f.refresh()
        assert scores(t, clock.now) == scores(reference, clock.now)
        for o in [outage_base, *outage_stores.values()]:
            o.down = False  # type: ignore[attr-defined]
        assert await f.start()  # what run() does at the next interval
        await flush_all(f)
        # A fresh daemon reads everything that was counted during the outage.
        fresh = tracker()
        assert await fleet(fresh, base, stores, "ctl-9", clock).start()
        assert close(scores(fresh, clock.now), scores(reference, clock.now))
        assert close(scores(t, clock.now), scores(reference, clock.now))

    asyncio.run(go())
    assert "start" in errors and "tombstone" in errors


def test_run_flushes_refreshes_and_writes_a_last_time_on_stop(
        state: tuple[StateStore, dict[str, StateStore]]) -> None:
    base, stores = state
    clock = Clock(T0)
    t, other_t = tracker(), tracker()

    async def go() -> None:
        other = fleet(other_t, base, stores, "ctl-2", clock)
        await other.start()
        f = FleetDemand(t, base, {s: SiteStore(base, stores[s]) for s in SITES},
                        daemon="ctl-1", flush_interval=0.02, refresh_interval=0.02,
                        clock=clock)
        t.on_demand = f.count
        await f.start()
        task = asyncio.create_task(f.run())
        other_t.apply(volume(IMAGES[0], T0))
        await flush_all(other)
        async with asyncio.timeout(10):
            while t.score(IMAGES[0], T0) == 0:  # noqa: ASYNC110 - polls plain state
                await asyncio.sleep(0.01)
        t.apply(volume(IMAGES[1], T0))
        f.stop()
        await asyncio.wait_for(task, 10)
        await other.refresh()
        assert other_t.score(IMAGES[1], T0) == pytest.approx(1.0)

    asyncio.run(go())


def test_a_confirmed_delete_is_a_tombstone_every_daemon_and_restart_applies(
        state: tuple[StateStore, dict[str, StateStore]]) -> None:
    base, stores = state
    clock = Clock(T0)
    changed: list[str] = []
    a_t, b_t = tracker(), tracker()
    gone, kept = IMAGES[:2]

    async def go() -> None:
        a = fleet(a_t, base, stores, "ctl-1", clock)
        b = fleet(b_t, base, stores, "ctl-2", clock, on_changed=changed.append)
        await a.start()
        await b.start()
        for image_id in (gone, kept):
            a_t.apply(volume(image_id, T0))
        await flush_all(a)
        await b.refresh()
        assert b_t.score(gone, T0) == pytest.approx(1.0)
        a_t.apply(ImageDeleted(gone, dt.datetime.fromtimestamp(T0, dt.UTC)))
        a.record_deleted(gone)  # the engine confirmed it with Glance
        await a.refresh()
        await flush_all(a)
        changed.clear()
        await b.refresh()
        assert b_t.is_deleted(gone) and b_t.image(gone) is None
        assert gone in changed  # the engine is asked to look (and purge)
        assert b_t.score(kept, T0) == pytest.approx(1.0)
        restarted = tracker()
        await fleet(restarted, base, stores, "ctl-1", clock).start()
        assert restarted.is_deleted(gone)
        assert restarted.score(kept, T0) == pytest.approx(1.0)
        assert gone not in (await stores["central"].read_demand(HOUR)).image_ids()

    asyncio.run(go())


def test_a_tombstone_for_an_image_glance_still_has_is_taken_back_everywhere(
        state: tuple[StateStore, dict[str, StateStore]]) -> None:
    base, stores = state
    clock = Clock(T0)
    b_changed: list[str] = []
    c_changed: list[str] = []
    a_t, b_t, c_t = tracker(), tracker(), tracker()
    image_id = IMAGES[0]

    async def go() -> None:
        a = fleet(a_t, base, stores, "ctl-1", clock)
        b = fleet(b_t, base, stores, "ctl-2", clock, on_changed=b_changed.append)
        c = fleet(c_t, base, stores, "ctl-3", clock, on_changed=c_changed.append)
        for f in (a, b, c):
            await f.start()
        a.record_deleted(image_id)  # e.g. after a 404 from a wrong endpoint
        await a.refresh()
        await b.refresh()
        await c.refresh()
        assert b_t.is_deleted(image_id) and c_t.is_deleted(image_id)
        # b's engine asked Glance, which still has it: b revives it, and the
        # tombstone leaves the state at b's next refresh.
        b_t.revive(ImageInfo(image_id, "active", "raw", 10, "public"))
        b.record_revived(image_id)
        await b.refresh()
        assert image_id not in await base.tombstones()
        # c notices the tombstone went, and asks its engine to look again
        # (Glance's answer revives it there too).
        c_changed.clear()
        await c.refresh()
        assert c_changed == [image_id]
        b_t.apply(volume(image_id, T0))
        assert b_t.score(image_id, T0) == pytest.approx(1.0)  # demand counts again
        await b.refresh()
        assert b_t.score(image_id, T0) == pytest.approx(1.0)  # and is not dropped

    asyncio.run(go())


def test_a_peer_that_re_bases_its_epoch_changes_nothing_here(
        state: tuple[StateStore, dict[str, StateStore]]) -> None:
    """The same demand written relative to a newer epoch (a peer restarted
    or re-based) is no change: no image is re-evaluated for it."""
    from warmer.state.store import Contribution
    base, stores = state
    changed: list[str] = []
    t = tracker()
    store = stores[SITES[0]]

    async def go() -> None:
        f = fleet(t, base, stores, "ctl-1", Clock(T0), on_changed=changed.append)
        await f.start()
        await store.claim_shard("ctl-9", "i1")
        epoch = int(T0)
        await store.write_shard("ctl-9", "i1", {i: Contribution(3.0, epoch) for i in IMAGES}, ())
        await f.refresh()
        assert sorted(changed) == sorted(IMAGES)
        changed.clear()
        later = epoch + 7 * int(HOUR)  # re-based seven half-lives on
        await store.write_shard("ctl-9", "i1", {i: Contribution(3.0 * 2.0 ** -7, later)
                                                for i in IMAGES}, ())
        await f.refresh()
        assert changed == []
        await store.write_shard("ctl-9", "i1", {IMAGES[0]: Contribution(1.0, later)}, ())
        await f.refresh()
        assert changed == [IMAGES[0]]  # a real change still counts

    asyncio.run(go())


def test_tombstones_older_than_the_ttl_leave_the_state_without_reviving_anything(
        state: tuple[StateStore, dict[str, StateStore]]) -> None:
    base, stores = state
    clock = Clock(T0)
    changed: list[str] = []
    a_t, b_t = tracker(), tracker()
    old, recent = IMAGES[:2]

    async def go() -> None:
        a = fleet(a_t, base, stores, "ctl-1", clock, tombstone_ttl=DAY)
        b = fleet(b_t, base, stores, "ctl-2", clock, tombstone_ttl=DAY,
                  on_changed=changed.append)
        await a.start()
        await b.start()
        a.record_deleted(old)
        await a.refresh()
        await b.refresh()
        assert b_t.is_deleted(old)
        clock.now = T0 + DAY / 2
        a.record_deleted(recent)
        await a.refresh()
        await b.refresh()
        changed.clear()
        clock.now = T0 + DAY + 1  # old's tombstone is a day old, recent's half
        await b.refresh()
        assert set(await base.tombstones()) == {recent}
        assert old not in changed  # expired, not revived: nothing to look at
        await a.refresh()  # a sees it gone too, and does not take it back
        assert set(await base.tombstones()) == {recent}
        assert old not in changed
        # The engine confirms the same delete again (a purge that waits for
        # clones does, every pass): an expired tombstone is not recorded anew.
        for daemon in (a, b):
            daemon.record_deleted(old)
            await daemon.refresh()
        assert set(await base.tombstones()) == {recent}
        # Without a TTL nothing expires.
        keeper = fleet(tracker(), base, stores, "ctl-3", clock)
        clock.now = T0 + 100 * DAY
        await keeper.start()
        await keeper.refresh()
        assert set(await base.tombstones()) == {recent}

    asyncio.run(go())
