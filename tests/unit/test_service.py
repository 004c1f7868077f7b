"""The service's Ceph wiring: timeouts for every user. Fake rados modules
stand in for the real bindings."""

from __future__ import annotations

import types
from collections.abc import Iterator
from pathlib import Path

import pytest

from tests.unit.fake_bindings import FakeRados, fake_bindings
from warmer import conf as warmer_conf
from warmer.ceph import client as ceph_client
from warmer.service import Service

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


@pytest.fixture
def bindings(monkeypatch: pytest.MonkeyPatch) -> tuple[types.ModuleType, types.ModuleType]:
    mods = fake_bindings()
    FakeRados.made = []
    FakeRados.on_call = None
    monkeypatch.setattr(ceph_client, "modules", lambda: mods)
    return mods


@pytest.fixture
def service(tmp_path: Path, bindings: object) -> Iterator[Service]:
    path = tmp_path / "warmer.conf"
    path.write_text(CONF)
    svc = Service(warmer_conf.load(["--config-file", str(path)]))
    yield svc
    svc.executor.shutdown()


def test_op_timeouts_reach_warmers_and_cinders_connections(service: Service) -> None:
    central, edge = service.targets
    assert (edge.ceph.config.osd_op_timeout, edge.ceph.config.mon_op_timeout) == (1, 1)
    assert (edge.cinder_view.config.osd_op_timeout,
            edge.cinder_view.config.mon_op_timeout) == (1, 1)
    assert edge.cinder_view.config.user == "cinder"
    # The defaults: bounded, never "wait forever".
    assert (central.ceph.config.osd_op_timeout, central.ceph.config.mon_op_timeout) == (30, 30)
    assert central.cinder_view.config.osd_op_timeout == 30
