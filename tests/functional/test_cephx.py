"""warmer's cephx user has exactly the documented caps, and no more; Glance
and Cinder have exactly the caps of Ceph's OpenStack guide."""

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
              "osd": "profile rbd pool=images, profile rbd-read-only pool=volumes"}
# Ceph's OpenStack guide, unchanged.
GUIDE = {"glance": {"mon": "profile rbd", "osd": "profile rbd pool=images"},
         "cinder": {"mon": "profile rbd",
                    "osd": "profile rbd pool=volumes, profile rbd-read-only pool=images"}}


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


@CLUSTERS
def test_glance_and_cinder_have_exactly_the_guides_caps(stack: Stack, cluster: str) -> None:
    for user, caps in GUIDE.items():
        [entry] = json.loads(admin(stack, "auth", "get", f"client.{user}", "--format", "json",
                                   cluster=cluster))
        assert entry["caps"] == caps, user


def test_warmer_can_snapshot_glance_images_and_write_copies_to_glances_pool(
        stack: Stack) -> None:
    name = f"caps-{uuid.uuid4().hex[:8]}"
    with ceph.connect(stack.ceph_conf(), "glance", stack.keyring("glance")) as cluster:
        ceph.write_image(cluster, "images", name, os.urandom(4096), snapshot=None)
    with ceph.connect(stack.ceph_conf(), "warmer", stack.keyring("warmer")) as cluster:
        with cluster.open_ioctx("images") as ioctx, rbd.Image(ioctx, name) as img:
            img.create_snap("snap")
            img.protect_snap("snap")
            assert img.is_protected_snap("snap")
        copy_name = f"{name}-copy"
        ceph.write_image(cluster, "images", copy_name, os.urandom(4096), protect=True)
        assert ceph.snapshot_state(cluster, "images", copy_name) == "protected"


@CLUSTERS
def test_warmer_cannot_write_cinders_pool(stack: Stack, cluster: str) -> None:
    """Invariant 7: a Cinder volume is out of warmer's reach at the cephx level."""
    volume = f"volume-{uuid.uuid4()}"
    with ceph.connect(stack.ceph_conf(cluster), "cinder",
                      stack.keyring("cinder", cluster)) as as_cinder:
        ceph.write_image(as_cinder, "volumes", volume, os.urandom(4096), snapshot=None)
    try:
        with ceph.connect(stack.ceph_conf(cluster), "warmer",
                          stack.keyring("warmer", cluster)) as as_warmer, \
                as_warmer.open_ioctx("volumes") as ioctx:
            assert volume in rbd.RBD().list(ioctx)  # it may look
            with pytest.raises((rbd.PermissionError, rados.PermissionError)):
                rbd.RBD().remove(ioctx, volume)
            with pytest.raises((rbd.PermissionError, rados.PermissionError)):
                rbd.RBD().create(ioctx, f"volume-{uuid.uuid4()}", 4096)
            with rbd.Image(ioctx, volume, read_only=True) as img:
                assert img.size() == 4096
            with pytest.raises((rbd.PermissionError, rados.PermissionError)):
                with rbd.Image(ioctx, volume) as img:
                    img.write(b"x" * 512, 0)
    finally:
        with ceph.connect(stack.ceph_conf(cluster), "cinder",
                          stack.keyring("cinder", cluster)) as as_cinder:
            ceph.remove(as_cinder, "volumes", volume)


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
