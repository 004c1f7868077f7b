"""Leadership on the in-memory rados of fake_rbd, through the real
CephClient: its locks belong to one client instance and expire by the
cluster's clock, which these tests drive (``Clock``) together with each
daemon's own."""

from __future__ import annotations

import asyncio
import concurrent.futures
import threading
import time
from collections.abc import Iterator
from typing import Any

import pytest

from tests.unit import fake_rbd
from tests.unit.fake_rbd import FakeCluster
from tests.unit.state_stores import Clock
from warmer.ceph import bindings, client, images
from warmer.ceph.client import CephClient, ClusterConfig
from warmer.coordination import leader as leader_mod
from warmer.coordination.leader import LEADER_OBJECT, RECORD_XATTR, Leadership
from warmer.metrics import Metrics

CONF = "state.conf"
NAMESPACE = "warmer"
LEASE = 30


@pytest.fixture
def cluster(monkeypatch: pytest.MonkeyPatch) -> FakeCluster:
    for module in (bindings, client, images, leader_mod):
        monkeypatch.setattr(module, "modules", fake_rbd.modules)
    FakeCluster.registry.clear()
    return FakeCluster(CONF, "fsid-state")


@pytest.fixture
def executor() -> Iterator[concurrent.futures.ThreadPoolExecutor]:
    pool = concurrent.futures.ThreadPoolExecutor(4)
    yield pool
    pool.shutdown(wait=True)


@pytest.fixture
def clock(cluster: FakeCluster) -> Clock:
    c = Clock(1000.0)
    cluster.clock = c
    return c


def daemon(executor: concurrent.futures.Executor, name: str, clock: Any = time.monotonic,
           lease: int = LEASE) -> Leadership:
    """One daemon's leadership, with its own RADOS client instance."""
    ceph = CephClient(ClusterConfig(CONF, "warmer"), executor)
    return Leadership(ceph, "images", NAMESPACE, name, lease, metrics=Metrics(),
                      clock=clock, wall=clock)


def gauge(d: Leadership) -> float | None:
    assert d.metrics is not None
    return d.metrics.registry.get_sample_value("warmer_leader")


def changes(d: Leadership, change: str) -> float:
    assert d.metrics is not None
    return d.metrics.registry.get_sample_value("warmer_leader_changes_total",
                                               {"change": change}) or 0.0


def test_one_leader_among_three_and_every_daemon_can_tell_who(
        cluster: FakeCluster, executor: Any, clock: Clock) -> None:
    async def scenario() -> None:
        a, b, c = (daemon(executor, n, clock) for n in ("ctl-a", "ctl-b", "ctl-c"))
        for _ in range(3):  # a few heartbeats, in turn
            for d in (a, b, c):
                await d.attempt()
            clock.now += LEASE / 3
        assert [d.is_leader() for d in (a, b, c)] == [True, False, False]
        assert [gauge(d) for d in (a, b, c)] == [1.0, 0.0, 0.0]
        assert changes(a, "became_leader") == 1 and changes(a, "stepped_down") == 0
        for d in (b, c):
            assert d.view()["name"] == "ctl-a" and d.view()["self"] is False
            assert d.view()["since"] == 1000.0  # since its first term began
        assert a.view() == {"name": "ctl-a", "since": 1000.0, "self": True}
        # The lock is in the [state] namespace, not in the pool's default one.
        obj = cluster.ns_objects[("images", NAMESPACE)][LEADER_OBJECT]
        assert obj.lock is not None and obj.lock[0] == "ctl-a"
        assert b"ctl-a" in obj.xattrs[RECORD_XATTR]
        assert LEADER_OBJECT not in cluster.objects["images"]
    asyncio.run(scenario())


def test_a_leader_that_cannot_renew_steps_down_before_its_lock_can_expire(
        cluster: FakeCluster, executor: Any, clock: Clock) -> None:
    async def scenario() -> None:
        a, b = daemon(executor, "ctl-a", clock), daemon(executor, "ctl-b", clock)
        assert await a.attempt()  # renewed at 1000: the lock holds until 1030 in Ceph
        cluster.fail["lock_exclusive"] = fake_rbd.TimedOut("mon unreachable")
        for t in (1010.0, 1020.0):  # two failed heartbeats: still within its lease
            clock.now = t
            assert await a.attempt()
        clock.now = 1000 + LEASE - LEASE / 5  # 1024: it must stop believing now
        assert not await a.attempt()
        assert not a.is_leader() and gauge(a) == 0.0
        assert changes(a, "stepped_down") == 1
        del cluster.fail["lock_exclusive"]
        # Its lock still holds in Ceph: nobody else leads while it believed
        # it led, nor for a while after (the margin).
        assert not await b.attempt()
        clock.now = 1029.9
        assert not await b.attempt()
        clock.now = 1030.0  # expired in Ceph
        assert await b.attempt() and b.view()["self"]
    asyncio.run(scenario())


def test_a_hung_renewal_does_not_keep_a_daemon_leader(cluster: FakeCluster,
                                                       executor: Any) -> None:
    """The renewal never comes back (no op timeout): the leader steps down
    by the clock, L/5 before its lock can expire, with the metric."""
    async def scenario() -> None:
        a = daemon(executor, "ctl-a", lease=1)
        assert await a.attempt()
        release = threading.Event()
        real_op = cluster.op

        def hang(name: str) -> None:
            if name == "lock_exclusive":
                release.wait(10)
            real_op(name)
        cluster.op = hang  # type: ignore[method-assign]
        renewal = asyncio.create_task(a.attempt())
        started = time.monotonic()
        while a.is_leader():  # noqa: ASYNC110 - is_leader() turns by the clock alone
            await asyncio.sleep(0.01)
        assert time.monotonic() - started < 1.0 - 0.2 + 0.1
        await asyncio.sleep(0.05)
        assert gauge(a) == 0.0 and changes(a, "stepped_down") == 1  # the timer fired
        assert not renewal.done()
        release.set()
        await renewal
    asyncio.run(scenario())


def test_a_follower_takes_over_a_dead_leader_within_the_bound(
        cluster: FakeCluster, executor: Any, clock: Clock) -> None:
    async def scenario() -> None:
        a, b = daemon(executor, "ctl-a", clock), daemon(executor, "ctl-b", clock)
        assert await a.attempt()
        clock.now += 7.0  # b's heartbeats are out of step with a's
        assert not await b.attempt()
        clock.now += 3.0
        assert await a.attempt()  # a's last renewal, at 1010
        died = clock.now
        while not await b.attempt():  # a is gone (kill -9): it never renews again
            clock.now += LEASE / 3
        assert clock.now - died <= LEASE + LEASE / 3 < 2 * LEASE
        assert b.is_leader() and not a.is_leader()
    asyncio.run(scenario())


def test_a_second_process_under_the_same_name_never_leads_beside_the_first(
        cluster: FakeCluster, executor: Any, clock: Clock) -> None:
    """A daemon started by hand next to the service, or two controllers
    configured with one host name: a lock held under our own name may be a
    live process's, so it is never broken; it is taken once it ran out."""
    async def scenario() -> None:
        first, other = daemon(executor, "ctl-a", clock), daemon(executor, "ctl-a", clock)
        assert await first.attempt()
        for _ in range(6):  # the first keeps renewing: the other never leads
            clock.now += LEASE / 3
            assert await first.attempt() and first.is_leader()
            assert not await other.attempt() and not other.is_leader()
        # The first dies (kill -9: no release); its lease runs out.
        clock.now += LEASE + 1
        assert not first.is_leader()
        assert await other.attempt() and other.is_leader()
    asyncio.run(scenario())


def test_a_clean_stop_releases_the_lock_for_the_next_heartbeat_of_another(
        cluster: FakeCluster, executor: Any, clock: Clock) -> None:
    async def scenario() -> None:
        a, b = daemon(executor, "ctl-a", clock), daemon(executor, "ctl-b", clock)
        assert await a.attempt()
        assert not await b.attempt()
        await a.close()
        assert not a.is_leader() and gauge(a) == 0.0
        assert changes(a, "stepped_down") == 1
        assert await b.attempt()  # at once: no lease to wait out
        assert not await a.attempt()  # closed: it tries no more
        assert changes(a, "became_leader") == 1
    asyncio.run(scenario())


def test_ceph_unreachable_never_raises_and_the_heartbeat_keeps_trying(
        cluster: FakeCluster, executor: Any) -> None:
    async def scenario() -> None:
        a = daemon(executor, "ctl-a", lease=3)
        a.interval = 0.05
        cluster.fail["connect"] = fake_rbd.TimedOut("no mon")
        beat = asyncio.create_task(a.run())
        await asyncio.sleep(0.3)
        assert not beat.done() and not a.is_leader()
        cluster.fail.clear()
        cluster.fail["open_ioctx"] = fake_rbd.RadosPermissionError("no caps")
        await asyncio.sleep(0.2)
        assert not beat.done() and not a.is_leader()
        cluster.fail.clear()
        await asyncio.wait_for(a.wait(), 2)
        assert a.is_leader()
        beat.cancel()
        await a.close()
    asyncio.run(scenario())


def test_wait_returns_once_leading(cluster: FakeCluster, executor: Any) -> None:
    async def scenario() -> None:
        a = daemon(executor, "ctl-a")
        waiter = asyncio.create_task(a.wait())
        await asyncio.sleep(0.05)
        assert not waiter.done()
        await a.attempt()
        await asyncio.wait_for(waiter, 1)
    asyncio.run(scenario())
