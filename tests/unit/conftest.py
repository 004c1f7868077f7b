"""Fixtures shared by several unit test modules."""

from __future__ import annotations

import asyncio
import concurrent.futures
import threading
import types
from collections.abc import Iterator

import pytest

from tests.unit import fake_rbd
from tests.unit.fake_bindings import FakeRados, fake_bindings
from tests.unit.fake_rbd import FakeCluster
from warmer.ceph import bindings as ceph_bindings
from warmer.ceph import client as ceph_client
from warmer.ceph import images, ownership


@pytest.fixture(autouse=True)
def no_image_closed_under_a_running_call() -> Iterator[None]:
    """Every test: no in-memory RBD image was closed while a call on it (a
    write, a read) still ran on a thread. Real librbd crashes there
    (tests/unit/fake_rbd.py records it)."""
    fake_rbd.closed_under_calls.clear()
    yield
    closes, fake_rbd.closed_under_calls[:] = list(fake_rbd.closed_under_calls), []
    assert not closes, "an image was closed under a running call:\n" + "\n".join(closes)


@pytest.fixture()
def loop() -> Iterator[asyncio.AbstractEventLoop]:
    """An event loop running in its own thread, as the daemon's loop runs
    beside oslo.messaging's listener threads."""
    loop = asyncio.new_event_loop()
    thread = threading.Thread(target=loop.run_forever, daemon=True)
    thread.start()
    yield loop
    loop.call_soon_threadsafe(loop.stop)
    thread.join()
    loop.close()


@pytest.fixture
def bindings(monkeypatch: pytest.MonkeyPatch) -> tuple[types.ModuleType, types.ModuleType]:
    """Fake rados/rbd modules under CephClient."""
    mods = fake_bindings()
    FakeRados.made = []
    FakeRados.on_call = None
    monkeypatch.setattr(ceph_client, "modules", lambda: mods)
    return mods


@pytest.fixture(scope="module")
def executor() -> Iterator[concurrent.futures.ThreadPoolExecutor]:
    """Two threads for a module's Ceph calls (a module may define its own)."""
    pool = concurrent.futures.ThreadPoolExecutor(2)
    yield pool
    pool.shutdown(wait=True)


@pytest.fixture
def clusters(monkeypatch: pytest.MonkeyPatch) -> tuple[FakeCluster, FakeCluster]:
    """Two in-memory Ceph clusters (tests/unit/fake_rbd.py) under the real
    CephClient: ``central.conf`` (fsid-central) and ``edge.conf`` (fsid-edge)."""
    for module in (ceph_bindings, ceph_client, images, ownership):
        monkeypatch.setattr(module, "modules", fake_rbd.modules)
    FakeCluster.registry.clear()
    return FakeCluster("central.conf", "fsid-central"), FakeCluster("edge.conf", "fsid-edge")
