"""The service's Ceph wiring: timeouts for every user, one bounded thread
pool per target, probes that a hung cluster cannot hold up for the others.
Fake rados modules stand in for the real bindings."""

from __future__ import annotations

import asyncio
import contextlib
import threading
import time
from collections.abc import Callable, Iterator
from pathlib import Path

import pytest

from tests.unit.fake_bindings import FakeRados
from warmer import conf as warmer_conf
from warmer.glance.client import LocationConflict
from warmer.service import Service
from warmer.state.fleet import SiteStore
from warmer.state.memory import MemoryStore
from warmer.state.rados import RadosStore
from warmer.warming.copy import CopyStats

CONF = """
[DEFAULT]
enabled_targets = central,edge
[glance]
endpoint = http://127.0.0.1:9
[warming]
ceph_threads = 2
[central]
ceph_conf = /etc/ceph/central.conf
cinder_user = cinder
[edge]
ceph_conf = /etc/ceph/edge.conf
cinder_user = cinder
connect_timeout = 1
rados_osd_op_timeout = 1
rados_mon_op_timeout = 1
"""


@contextlib.contextmanager
def running(tmp_path: Path, conf: str) -> Iterator[Service]:
    """A Service built from ``conf`` (its Ceph bindings faked), closed after."""
    path = tmp_path / "warmer.conf"
    path.write_text(conf)
    svc = Service(warmer_conf.load(["--config-file", str(path)]))
    try:
        yield svc
    finally:
        svc.close_ceph()


@pytest.fixture
def service(tmp_path: Path, bindings: object) -> Iterator[Service]:
    with running(tmp_path, CONF) as svc:
        yield svc


async def until(check: Callable[[], bool]) -> None:
    async with asyncio.timeout(10):
        while not check():  # noqa: ASYNC110 - polls plain state, no event to wait on
            await asyncio.sleep(0.01)


def test_op_timeouts_reach_warmers_and_cinders_connections(service: Service) -> None:
    central, edge = service.targets
    assert (edge.ceph.config.osd_op_timeout, edge.ceph.config.mon_op_timeout) == (1, 1)
    assert (edge.cinder_view.config.osd_op_timeout,
            edge.cinder_view.config.mon_op_timeout) == (1, 1)
    assert edge.cinder_view.config.user == "cinder"
    # The defaults: bounded, never "wait forever".
    assert (central.ceph.config.osd_op_timeout, central.ceph.config.mon_op_timeout) == (30, 30)
    assert central.cinder_view.config.osd_op_timeout == 30


def test_each_target_has_its_own_bounded_thread_pool(service: Service) -> None:
    central, edge = service.targets
    assert central.ceph.executor is not edge.ceph.executor
    # Cinder's user in a cluster shares that target's pool, not another's.
    assert edge.cinder_view.executor is edge.ceph.executor
    assert set(service.executors) == {"central", "edge"}
    assert all(e._max_workers == 2 for e in service.executors.values())


def test_a_hung_cluster_does_not_starve_the_other_targets(service: Service) -> None:
    """Every thread edge has is stuck in a call that never returns (a sick
    cluster without op timeouts): central's calls still run at once."""
    central, edge = service.targets
    release = threading.Event()

    def hang_edge(conffile: str) -> None:
        if "edge" in conffile:
            release.wait(10)
    FakeRados.on_call = hang_edge

    async def scenario() -> float:
        stuck = [asyncio.ensure_future(edge.ceph.probe()) for _ in range(3)]
        await asyncio.sleep(0.1)
        started = time.monotonic()
        await asyncio.wait_for(central.ceph.probe("volumes"), 2)
        await asyncio.wait_for(central.cinder_view.probe(), 2)
        took = time.monotonic() - started
        assert not any(f.done() for f in stuck)
        release.set()
        await asyncio.gather(*stuck)
        return took
    try:
        assert asyncio.run(scenario()) < 1
    finally:
        release.set()


def test_probes_are_independent_and_a_hung_probe_is_down_in_bounded_time(
        service: Service) -> None:
    central, edge = service.targets
    release = threading.Event()

    def hang_edge(conffile: str) -> None:
        if "edge" in conffile:
            release.wait(10)
    FakeRados.on_call = hang_edge
    service.ceph_up["edge"] = True  # it was up, then hung

    async def scenario() -> tuple[float, float]:
        started = time.monotonic()
        probes = asyncio.ensure_future(service._probe_ceph())
        await until(lambda: service.ceph_up["central"])
        central_up = time.monotonic() - started
        assert service.ceph_up["edge"]  # edge's probe is still waiting
        await until(lambda: not service.ceph_up["edge"])
        edge_down = time.monotonic() - started
        probes.cancel()
        release.set()
        return central_up, edge_down
    try:
        central_up, edge_down = asyncio.run(scenario())
    finally:
        release.set()
    assert central_up < 0.5
    # connect_timeout + mon + osd op timeouts = 3 s for edge.
    assert 2.5 < edge_down < 4.5
    assert service.ready() == {"bus": False, "ceph:central": True, "ceph:edge": False}


def test_stop_shuts_down_every_pool_before_any_connection(service: Service) -> None:
    central, edge = service.targets
    order: list[str] = []
    for t in service.targets:
        for client in (t.ceph, t.cinder_view):
            client.close = (lambda name=f"{t.name}/{client.config.user}":  # type: ignore[method-assign]
                            order.append(f"close {name}"))
    for name, executor in service.executors.items():
        real = executor.shutdown

        def shutdown(wait: bool = True, *, cancel_futures: bool = False,
                     name: str = name, real: object = real) -> None:
            order.append(f"pool {name} wait={wait}")
            real(wait=wait, cancel_futures=cancel_futures)  # type: ignore[operator]
        executor.shutdown = shutdown  # type: ignore[method-assign]
    service.close_ceph()
    pools = [i for i, step in enumerate(order) if step.startswith("pool")]
    closes = [i for i, step in enumerate(order) if step.startswith("close")]
    assert max(pools) < min(closes)
    assert {s for s in order if s.startswith("close")} == {
        "close central/warmer", "close central/cinder", "close edge/warmer", "close edge/cinder"}
    # No pool waits for its threads before every pool was told to stop.
    assert order[:2] == ["pool central wait=False", "pool edge wait=False"]


def test_the_engine_reconciles_only_as_the_leader_of_the_state_namespace(
        service: Service) -> None:
    leadership = service.leadership
    assert service.engine.reconciler.leader is leadership
    assert (leadership.pool, leadership.namespace, leadership.lease) == ("images", "warmer", 30)
    assert leadership.name == service.conf.host
    # Its calls are bounded by a third of the lease, on a thread of its own.
    config = leadership.client.config
    assert (config.osd_op_timeout, config.mon_op_timeout, config.connect_timeout) == (10, 10, 10)
    assert leadership.client.executor is service.leader_executor
    assert service.leader_executor._max_workers == 1
    assert not leadership.is_leader()


def test_without_demand_patterns_one_shared_site_counts_for_every_target(
        service: Service) -> None:
    assert service.sites is None and service.engine.sites is None
    assert service.tracker.sites == ("all-targets",)
    assert {site: w.store.demand.namespace  # type: ignore[attr-defined]
            for site, w in service.fleet.writers.items()} == {
        "all-targets": "warmer.demand.all-targets"}


@pytest.fixture
def sited_service(tmp_path: Path, bindings: object) -> Iterator[Service]:
    with running(tmp_path, CONF + "demand_backends = ceph-edge\n") as svc:  # in [edge]
        yield svc


def test_the_shared_demand_has_one_namespace_per_target_and_is_hooked_up(
        sited_service: Service) -> None:
    service = sited_service
    assert service.engine.sites is service.sites is not None
    assert service.tracker.sites == ("central", "edge")
    assert service.tracker.on_demand == service.fleet.count
    assert service.engine.on_deleted == service.fleet.record_deleted
    assert isinstance(service.fleet.base, RadosStore)
    assert service.fleet.base.namespace == "warmer"
    namespaces = {}
    for site, writer in service.fleet.writers.items():
        assert isinstance(writer.store, SiteStore) and writer.store.base is service.fleet.base
        assert isinstance(writer.store.demand, RadosStore)
        namespaces[site] = writer.store.demand.namespace
    assert namespaces == {"central": "warmer.demand.central", "edge": "warmer.demand.edge"}
    # Verified snapshots and copy costs: the base namespace, one book for every target.
    assert service.records.store is service.fleet.base and service.records.trust
    assert all(t.records is service.records for t in service.targets)
    checked = service.targets[0].on_checked
    assert checked is not None
    checked(service.targets[0], "skipped_verified")
    assert service.metrics.copy_verifications.labels(
        service.targets[0].name, "skipped_verified")._value.get() == 1
    copied = service.targets[0].on_copied
    assert copied is not None
    copied(service.targets[0], CopyStats(8, written=5, skipped_holes=2, skipped_zeros=1,
                                          seconds=0.5))
    assert service.metrics.copied_bytes.labels(
        service.targets[0].name, "hole")._value.get() == 2


def test_without_a_state_cluster_demand_stays_in_memory(tmp_path: Path,
                                                         bindings: object) -> None:
    with running(tmp_path, CONF + "[state]\nenabled = false\n") as svc:
        assert isinstance(svc.fleet.base, MemoryStore)
        assert svc.state_executor is None

        async def scenario() -> None:
            assert await svc.fleet.start()
        asyncio.run(scenario())


def test_the_hands_off_gauge_reads_the_engines_book_at_each_scrape(service: Service) -> None:
    def scraped() -> float | None:
        return service.metrics.registry.get_sample_value(
            "warmer_hands_off_images", {"reason": "location_conflict"})
    assert scraped() == 0
    service.engine.hands_off.let_go("a", LocationConflict("a", "rbd://x", ["rbd://x"], []))
    assert scraped() == 1
