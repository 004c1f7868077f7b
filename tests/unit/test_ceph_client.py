"""CephClient's connection handling, with fake rados/rbd modules shaped like
the real bindings (rados and rbd share no base exception class)."""

from __future__ import annotations

import asyncio
import concurrent.futures
import types
from typing import Any

import pytest

from tests.unit.fake_bindings import FakeRados, fake_bindings
from warmer.ceph import client as ceph_client
from warmer.ceph.client import CephClient, ClusterConfig


@pytest.fixture
def bindings(monkeypatch: pytest.MonkeyPatch) -> tuple[types.ModuleType, types.ModuleType]:
    mods = fake_bindings()
    FakeRados.made = []
    FakeRados.on_call = None
    monkeypatch.setattr(ceph_client, "modules", lambda: mods)
    return mods


def client(**config: Any) -> CephClient:
    executor = concurrent.futures.ThreadPoolExecutor(2)
    return CephClient(ClusterConfig("/etc/ceph/edge.conf", "warmer", **config), executor)


def test_every_connection_is_made_with_osd_and_mon_op_timeouts(bindings: Any) -> None:
    c = client(osd_op_timeout=7, mon_op_timeout=9)
    asyncio.run(c.probe())
    [cluster] = FakeRados.made
    assert cluster.conf["rados_osd_op_timeout"] == "7"
    assert cluster.conf["rados_mon_op_timeout"] == "9"


def test_timeouts_default_to_thirty_seconds(bindings: Any) -> None:
    c = client()
    asyncio.run(c.probe())
    assert FakeRados.made[0].conf["rados_osd_op_timeout"] == "30"
    assert FakeRados.made[0].conf["rados_mon_op_timeout"] == "30"
