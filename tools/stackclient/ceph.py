"""RBD set-up and checks as the stack's OpenStack users."""

from __future__ import annotations

import contextlib
from collections.abc import Iterator
from typing import Any

import rados
import rbd


@contextlib.contextmanager
def connect(conf_file: str, user: str, keyring: str) -> Iterator[Any]:
    cluster = rados.Rados(conffile=conf_file, name=f"client.{user}",
                          conf={"keyring": keyring})
    cluster.connect(timeout=15)
    try:
        yield cluster
    finally:
        cluster.shutdown()


def write_image(cluster: Any, pool: str, name: str, data: bytes, *,
                snapshot: str | None = "snap", protect: bool = False) -> None:
    """Create an RBD image with ``data``, optionally snapshot and protect it:
    how an image registered by location in Glance is usually made."""
    with cluster.open_ioctx(pool) as ioctx:
        rbd.RBD().create(ioctx, name, len(data), old_format=False,
                         features=rbd.RBD_FEATURE_LAYERING)
        with rbd.Image(ioctx, name) as img:
            img.write(data, 0)
            if snapshot:
                img.create_snap(snapshot)
                if protect:
                    img.protect_snap(snapshot)


def snapshot_state(cluster: Any, pool: str, name: str, snapshot: str = "snap") -> str:
    """``missing``, ``unprotected`` or ``protected``."""
    with cluster.open_ioctx(pool) as ioctx, rbd.Image(ioctx, name, read_only=True) as img:
        if snapshot not in {s["name"] for s in img.list_snaps()}:
            return "missing"
        return "protected" if img.is_protected_snap(snapshot) else "unprotected"


def read_all(cluster: Any, pool: str, name: str, snapshot: str | None = None) -> bytes:
    # Opened at the head, then set to the snapshot: librbd 16.2 corrupts
    # memory opening read-only at a snapshot (warmer/ceph/bindings.py).
    with cluster.open_ioctx(pool) as ioctx, rbd.Image(ioctx, name, read_only=True) as img:
        if snapshot is not None:
            img.set_snap(snapshot)
        return bytes(img.read(0, img.size()))


def clone_v1(cluster: Any, src_pool: str, name: str, snapshot: str, dst_pool: str,
             clone_name: str) -> None:
    """Clone as Cinder does with default client compatibility (v1 clone,
    which needs the parent snapshot protected)."""
    cluster.conf_set("rbd_default_clone_format", "1")
    with cluster.open_ioctx(src_pool) as src, cluster.open_ioctx(dst_pool) as dst:
        rbd.RBD().clone(src, name, snapshot, dst, clone_name,
                        features=rbd.RBD_FEATURE_LAYERING)


def remove(cluster: Any, pool: str, name: str) -> None:
    with cluster.open_ioctx(pool) as ioctx:
        rbd.RBD().remove(ioctx, name)
