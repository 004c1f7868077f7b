"""warmer's cephx user has exactly the documented caps, and no more."""

from __future__ import annotations

import json
import os
import subprocess
import uuid
from pathlib import Path

import pytest
import rados
import rbd
from stackclient import Stack, ceph

ROOT = Path(__file__).resolve().parents[2]
DOCUMENTED = {"mon": "profile rbd",
              "osd": "profile rbd pool=images, profile rbd pool=volumes"}


CLUSTERS = pytest.mark.parametrize("cluster", ["central", "edge"])


def admin(stack: Stack, *args: str, cluster: str = "central") -> str:
    return subprocess.run(["ceph", "--conf", stack.ceph_conf(cluster), "--name", "client.admin",
                           "--keyring", stack.keyring("admin", cluster), *args],
                          check=True, capture_output=True, text=True).stdout


@CLUSTERS
def test_warmer_caps_are_exactly_the_documented_ones(stack: Stack, cluster: str) -> None:
    [entry] = json.loads(admin(stack, "auth", "get", "client.warmer", "--format", "json",
                               cluster=cluster))
    assert entry["caps"] == DOCUMENTED
    doc = (ROOT / "docs" / "cephx.md").read_text()
    for daemon, caps in DOCUMENTED.items():
        assert f"{daemon} '{caps}'" in doc, f"docs/cephx.md does not document {daemon} caps"


def test_warmer_can_snapshot_glance_images_and_write_copies_to_cinders_pool(
        stack: Stack) -> None:
    name = f"caps-{uuid.uuid4().hex[:8]}"
    with ceph.connect(stack.ceph_conf(), "glance", stack.keyring("glance")) as cluster:
        ceph.write_image(cluster, "images", name, os.urandom(4096), snapshot=None)
    with ceph.connect(stack.ceph_conf(), "warmer", stack.keyring("warmer")) as cluster:
        with cluster.open_ioctx("images") as ioctx, rbd.Image(ioctx, name) as img:
            img.create_snap("snap")
            img.protect_snap("snap")
            assert img.is_protected_snap("snap")
        ceph.write_image(cluster, "volumes", name, os.urandom(4096), protect=True)
        assert ceph.snapshot_state(cluster, "volumes", name) == "protected"


@CLUSTERS
def test_warmer_is_refused_on_pools_it_was_not_given(stack: Stack, cluster: str) -> None:
    pool = "unrelated"
    if pool not in admin(stack, "osd", "pool", "ls", cluster=cluster):
        admin(stack, "osd", "pool", "create", pool, "8", cluster=cluster)
        admin(stack, "osd", "pool", "application", "enable", pool, "rbd", cluster=cluster)
    with ceph.connect(stack.ceph_conf(cluster), "warmer",
                      stack.keyring("warmer", cluster)) as cluster, \
            cluster.open_ioctx(pool) as ioctx:
        with pytest.raises((rbd.PermissionError, rados.PermissionError)):
            rbd.RBD().create(ioctx, f"nope-{uuid.uuid4().hex[:6]}", 4096)
        with pytest.raises((rbd.PermissionError, rados.PermissionError)):
            rbd.RBD().list(ioctx)
