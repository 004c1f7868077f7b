"""A copy pool that reaches its quota, on the real stack: warmer says
``target_full``, writes nothing, leaves nothing, and does not loop; once
the quota is lifted, the next demand copies.

Pool quotas need pool statistics, which need a ceph-mgr: the module starts
one for edge (recorded by the stack, stopped by its PID at the end)."""

from __future__ import annotations

import json
import os
import subprocess
import time
from collections.abc import Iterator
from pathlib import Path

import pytest
from stackclient import Stack
from stackclient.cinder import CinderNotifier
from stackclient.daemon import Daemon
from stackclient.glance import Glance

from tests.functional.conftest import record_timing
from tests.functional.edge import registry
from tests.functional.test_copies import edge_images
from tests.functional.test_daemon import WARM, demand

ROOT = Path(__file__).resolve().parents[2]
MiB = 1 << 20


def admin(stack: Stack, *args: str) -> str:
    return subprocess.run(["ceph", "--conf", stack.ceph_conf("edge"), "--name", "client.admin",
                           "--keyring", stack.keyring("admin", "edge"), *args],
                          check=True, capture_output=True, text=True).stdout


def rados(stack: Stack, *args: str) -> None:
    subprocess.run(["rados", "--conf", stack.ceph_conf("edge"), "--name", "client.admin",
                    "--keyring", stack.keyring("admin", "edge"), "-p", "images", *args],
                   check=True, capture_output=True, timeout=30)


def images_pool_full(stack: Stack) -> bool:
    dump = json.loads(admin(stack, "osd", "dump", "--format", "json"))
    [pool] = [p for p in dump["pools"] if p["pool_name"] == "images"]
    return "full_quota" in pool["flags_names"].split(",")


@pytest.fixture(scope="module")
def edge_mgr(stack: Stack) -> Iterator[None]:
    subprocess.run([str(ROOT / "tools" / "stack"), "start-mgr", str(stack.dir), "edge"],
                   check=True, capture_output=True)
    yield
    admin(stack, "osd", "pool", "set-quota", "images", "max_objects", "0")


def test_a_full_copy_pool_is_target_full_with_nothing_written_and_no_loop(
        stack: Stack, edge_mgr: None, daemon: Daemon, glance: Glance,
        cinder: CinderNotifier) -> None:
    image_id = glance.create("full-pool")["id"]
    glance.upload(image_id, os.urandom(2 * MiB))  # into central, before edge fills
    # A quota of one object, and two written: the mgr reports the pool's
    # new statistics, and the mon flags it full.
    admin(stack, "osd", "pool", "set-quota", "images", "max_objects", "1")
    for n in (1, 2):
        rados(stack, "put", f"quota-fill-{n}", "/etc/hostname")
    started = time.monotonic()
    daemon.wait_until(lambda: images_pool_full(stack), 60, "edge images flagged full")
    record_timing("quota reached -> pool flagged full (mgr stats)", time.monotonic() - started)

    creates = daemon.metric("warmer_ceph_operations_total", operation="create")
    demand(cinder, glance, image_id)
    daemon.wait_until(lambda: daemon.target_state(image_id, "edge") == ("cold", "target_full"),
                      30, "target_full on edge")
    assert daemon.target_state(image_id, "central") == WARM  # the other target is fine
    demand(cinder, glance, image_id)  # more demand: checked again, still nothing written
    time.sleep(3)
    assert daemon.target_state(image_id, "edge") == ("cold", "target_full")
    assert daemon.metric("warmer_ceph_operations_total", operation="create") == creates
    assert not {image_id, f"warmer-tmp.{image_id}"} & set(edge_images(stack))
    assert image_id not in registry(stack)

    admin(stack, "osd", "pool", "set-quota", "images", "max_objects", "0")
    daemon.wait_until(lambda: not images_pool_full(stack), 60, "edge images writable")
    for n in (1, 2):
        rados(stack, "rm", f"quota-fill-{n}")
    demand(cinder, glance, image_id)
    daemon.wait_until(lambda: daemon.target_state(image_id, "edge") == WARM, 60,
                      "copied once the quota is lifted")
