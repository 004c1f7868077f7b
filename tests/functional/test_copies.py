"""Copies into other clusters and from non-RBD stores, on the real stack:
central and edge are independent Ceph clusters; Glance has both as RBD
stores, plus a file store."""

from __future__ import annotations

import asyncio
import concurrent.futures
import contextlib
import hashlib
import json
import os
import subprocess
import time
import uuid
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
import rbd
from stackclient import Stack, ceph
from stackclient.cinder import CinderNotifier
from stackclient.daemon import Daemon
from stackclient.glance import Glance

from tests.functional.conftest import record_timing
from tests.functional.test_daemon import WARM, demand
from warmer.ceph.client import CephClient, ClusterConfig
from warmer.state.rados import RadosStore

MiB = 1 << 20
ROOT = Path(__file__).resolve().parents[2]


def sparse(size: int, data_every: int = 4) -> bytes:
    """Random 1 MiB blocks every ``data_every`` MiB, zeroes between."""
    return b"".join(os.urandom(MiB) if i % data_every == 0 else bytes(MiB)
                    for i in range(size // MiB))


def edge_url(stack: Stack, image_id: str) -> str:
    return f"rbd://{stack.fsid('edge')}/images/{image_id}/snap"


def locations(glance: Glance, image_id: str) -> dict[str, str]:
    return {loc["url"]: loc["metadata"].get("store", "") for loc in
            glance.get(image_id)["locations"]}


def edge_images(stack: Stack) -> list[str]:
    with ceph.connect(stack.ceph_conf("edge"), "admin", stack.keyring("admin", "edge")) as c, \
            c.open_ioctx("images") as ioctx:
        return list(rbd.RBD().list(ioctx))


def test_raw_image_on_central_becomes_cloneable_on_edge(
        stack: Stack, daemon: Daemon, glance: Glance, cinder: CinderNotifier) -> None:
    # Glance's RBD store writes 8 MiB chunks and, thin-provisioned, skips
    # all-zero ones: 1 MiB of data every 16 MiB leaves real holes.
    data = sparse(64 * MiB, data_every=16)
    image_id = glance.create("central-raw")["id"]
    glance.upload(image_id, data)
    assert edge_url(stack, image_id) not in locations(glance, image_id)
    holes_before = daemon.metric("warmer_copy_bytes_total", target="edge", kind="hole")

    started = time.monotonic()
    demand(cinder, glance, image_id)
    daemon.wait_until(lambda: daemon.target_state(image_id, "edge") == WARM, 30, "warm on edge")
    record_timing("demand -> cloneable on edge (64 MiB, 1/16 data)",
                  time.monotonic() - started)

    assert locations(glance, image_id)[edge_url(stack, image_id)] == "edge"
    view = daemon.image(image_id)
    assert view is not None
    edge = next(t for t in view["targets"] if t["target"] == "edge")
    assert edge["location"] == edge_url(stack, image_id)
    # Glance's thin-provisioned RBD store left holes; the copy skipped them.
    assert daemon.metric("warmer_copy_bytes_total", target="edge", kind="hole") > holes_before
    with ceph.connect(stack.ceph_conf("edge"), "cinder", stack.keyring("cinder", "edge")) as c:
        assert ceph.snapshot_state(c, "images", image_id) == "protected"
        assert ceph.read_all(c, "images", image_id, "snap") == data
        clone = f"volume-{uuid.uuid4()}"
        ceph.clone_v1(c, "images", image_id, "snap", "volumes", clone)
        assert ceph.read_all(c, "volumes", clone) == data
        ceph.remove(c, "volumes", clone)
    with ceph.connect(stack.ceph_conf("edge"), "admin", stack.keyring("admin", "edge")) as c, \
            c.open_ioctx("images") as ioctx, rbd.Image(ioctx, image_id, read_only=True) as img:
        meta = dict(img.metadata_list())
    assert meta["warmer.owner"] == "warmer" and meta["warmer.state"] == "complete"
    assert meta["warmer.verified"] == "sha512:" + hashlib.sha512(data).hexdigest()


def cinder_clone_image(cinder_python: Path, stack: Stack, image_id: str,
                       cluster: str = "edge") -> dict[str, Any]:
    """Cinder's own RBDDriver.clone_image, for ``cluster``, as client.cinder."""
    out = subprocess.run([str(cinder_python), str(ROOT / "tools" / "cinder_clone.py"),
                          "--ceph-conf", stack.ceph_conf(cluster),
                          "--glance-url", stack["GLANCE_URL"], image_id],
                         capture_output=True, text=True, check=True).stdout
    result: dict[str, Any] = json.loads(out.strip().splitlines()[-1])
    return result


def test_cinders_rbd_driver_clones_on_edge_only_after_warmer_published(
        stack: Stack, daemon: Daemon, glance: Glance, cinder: CinderNotifier,
        cinder_python: Path) -> None:
    image_id = glance.create("cinder-proof")["id"]
    glance.upload(image_id, os.urandom(4 * MiB))
    before = cinder_clone_image(cinder_python, stack, image_id)
    assert before["cloned"] is False  # Cinder would download the image

    demand(cinder, glance, image_id)
    daemon.wait_until(lambda: daemon.target_state(image_id, "edge") == WARM, 30, "warm on edge")
    after = cinder_clone_image(cinder_python, stack, image_id)
    assert after["cloned"] is True, after
    assert edge_url(stack, image_id) in after["locations"]
    record_timing("Cinder RBDDriver.clone_image on edge (incl. resize)", after["seconds"])
    with ceph.connect(stack.ceph_conf("edge"), "cinder", stack.keyring("cinder", "edge")) as c:
        ceph.remove(c, "volumes", after["volume"])


def test_file_store_image_is_copied_over_http_into_both_clusters(
        stack: Stack, daemon: Daemon, glance: Glance) -> None:
    data = sparse(16 * MiB, data_every=2)
    image_id = glance.create("file-raw", tags=["warmer-pin"])["id"]
    glance.upload(image_id, data, store=stack["GLANCE_FILE_STORE"])
    assert all(url.startswith("file://") for url in locations(glance, image_id))
    daemon.wait_until(lambda: (v := daemon.image(image_id)) and len(v["targets"]) == 2 and
                      all((t["state"], t["reason"]) == WARM for t in v["targets"]),
                      30, "warm in both clusters")
    locs = locations(glance, image_id)
    assert locs[f"rbd://{stack.fsid('central')}/images/{image_id}/snap"] == "central"
    assert locs[edge_url(stack, image_id)] == "edge"
    for cluster in ("central", "edge"):
        with ceph.connect(stack.ceph_conf(cluster), "cinder",
                          stack.keyring("cinder", cluster)) as c:
            assert ceph.read_all(c, "images", image_id, "snap") == data


def test_checksum_mismatch_publishes_nothing(
        stack: Stack, daemon: Daemon, glance: Glance, cinder: CinderNotifier) -> None:
    image_id = glance.create("tampered")["id"]
    glance.upload(image_id, os.urandom(4 * MiB))
    # Behind Glance's back, the snapshot's data changes: Glance's hash no
    # longer describes it.
    with ceph.connect(stack.ceph_conf(), "admin", stack.keyring("admin")) as c, \
            c.open_ioctx("images") as ioctx, rbd.Image(ioctx, image_id) as img:
        img.unprotect_snap("snap")
        img.remove_snap("snap")
        img.write(os.urandom(MiB), 0)
        img.create_snap("snap")
        img.protect_snap("snap")
    mismatches = verifications(daemon)["mismatch"]
    demand(cinder, glance, image_id)
    daemon.wait_until(lambda: daemon.target_state(image_id, "edge") ==
                      ("cold", "checksum_mismatch"), 30, "mismatch reported")
    assert edge_url(stack, image_id) not in locations(glance, image_id)
    names = edge_images(stack)
    assert image_id not in names and f"warmer-tmp.{image_id}" not in names
    assert verifications(daemon)["mismatch"] == mismatches + 1
    with shared_state(stack, daemon) as store:
        assert asyncio.run(store.verified(image_id)) == {}  # nothing vouched for
        # and the mismatch is recorded (warmer.mismatched), for every daemon
        [key] = asyncio.run(store.mismatched(image_id))
        assert key.startswith(f"{image_id}/") and f"/images/{image_id}@" in key


RESULTS = ("verified", "skipped_verified", "mismatch")


def verifications(daemon: Daemon, target: str = "edge") -> dict[str, float]:
    return {r: daemon.metric("warmer_copy_verifications_total", target=target, result=r)
            for r in RESULTS}


@contextlib.contextmanager
def shared_state(stack: Stack, daemon: Daemon) -> Iterator[RadosStore]:
    """The daemon's shared state (central's images pool, its namespace),
    read as warmer's own user."""
    with concurrent.futures.ThreadPoolExecutor(1) as executor:
        client = CephClient(ClusterConfig(stack.ceph_conf(), "warmer",
                                          stack.keyring("warmer")), executor)
        try:
            yield RadosStore(client, "images", daemon.state_namespace)
        finally:
            client.close()


def snap_id(stack: Stack, image_id: str) -> int:
    with ceph.connect(stack.ceph_conf(), "admin", stack.keyring("admin")) as c, \
            c.open_ioctx("images") as ioctx, rbd.Image(ioctx, image_id, read_only=True) as img:
        return int(img.snap_get_id("snap"))


def copy_again(daemon: Daemon, image_id: str) -> None:
    """The operator evicts the copy from edge and warms it there again."""
    status, body = daemon.request("POST", f"/v1/images/{image_id}/evict?target=edge")
    assert status == 200, body
    status, body = daemon.request("POST", f"/v1/images/{image_id}/warm?target=edge")
    assert status == 202, body
    daemon.wait_until(lambda: daemon.target_state(image_id, "edge") == WARM, 30,
                      "warm on edge again")


def test_a_verified_snapshot_is_copied_again_without_a_hash_and_a_recreated_one_is_hashed(
        stack: Stack, daemon: Daemon, glance: Glance, cinder: CinderNotifier) -> None:
    data = sparse(32 * MiB, data_every=16)
    image_id = glance.create("verify-once")["id"]
    glance.upload(image_id, data)
    with shared_state(stack, daemon) as store:
        verify_once(stack, daemon, glance, cinder, store, image_id, data)


def verify_once(stack: Stack, daemon: Daemon, glance: Glance, cinder: CinderNotifier,
                store: RadosStore, image_id: str, data: bytes) -> None:
    digest = "sha512:" + hashlib.sha512(data).hexdigest()
    before = verifications(daemon)

    # The first copy hashes every byte, and the state records the snapshot.
    demand(cinder, glance, image_id)
    daemon.wait_until(lambda: daemon.target_state(image_id, "edge") == WARM, 30, "warm on edge")
    assert verifications(daemon) == {**before, "verified": before["verified"] + 1}
    first_snap = snap_id(stack, image_id)
    key = f"{image_id}/{stack.fsid()}/images/{image_id}@{first_snap}"
    records = asyncio.run(store.verified(image_id))
    assert list(records) == [key] and records[key].digest == digest
    assert records[key].size == len(data)

    # A later copy of the very same snapshot hashes nothing; the data is right.
    copy_again(daemon, image_id)
    assert verifications(daemon) == {**before, "verified": before["verified"] + 1,
                                     "skipped_verified": before["skipped_verified"] + 1}
    with ceph.connect(stack.ceph_conf("edge"), "cinder", stack.keyring("cinder", "edge")) as c:
        assert ceph.read_all(c, "images", image_id, "snap") == data
    with ceph.connect(stack.ceph_conf("edge"), "admin", stack.keyring("admin", "edge")) as c, \
            c.open_ioctx("images") as ioctx, rbd.Image(ioctx, image_id, read_only=True) as img:
        assert img.metadata_get("warmer.verified") == f"skipped_verified:{digest}"
    cost = asyncio.run(store.costs("edge"))[image_id]
    host = daemon.get("/v1/status")["host"]
    assert (cost.check, cost.digest, cost.by) == ("skipped_verified", digest, host)
    # Glance's thin-provisioned store left holes (not read), and zeroes were read, not written.
    assert 0 < cost.copied_bytes < cost.read_bytes < len(data)
    view = daemon.image(image_id)
    assert view is not None and view["copy_costs"]["edge"]["check"] == "skipped_verified"

    # The snapshot removed and created again under the same name (same data,
    # Glance's digest unchanged): a new snapshot id, hashed again.
    with ceph.connect(stack.ceph_conf(), "admin", stack.keyring("admin")) as c, \
            c.open_ioctx("images") as ioctx, rbd.Image(ioctx, image_id) as img:
        img.unprotect_snap("snap")
        img.remove_snap("snap")
        with contextlib.suppress(rbd.ImageExists):  # warmer's repair may be quicker
            img.create_snap("snap")
        if not img.is_protected_snap("snap"):
            img.protect_snap("snap")
    assert snap_id(stack, image_id) != first_snap
    copy_again(daemon, image_id)
    assert verifications(daemon)["verified"] == before["verified"] + 2
    assert verifications(daemon)["skipped_verified"] == before["skipped_verified"] + 1
    # Only the new snapshot's record stays.
    assert list(asyncio.run(store.verified(image_id))) == [
        f"{image_id}/{stack.fsid()}/images/{image_id}@{snap_id(stack, image_id)}"]
    assert asyncio.run(store.costs("edge"))[image_id].check == "verified"


def test_image_without_a_glance_checksum_is_never_published(
        stack: Stack, daemon: Daemon, glance: Glance, cinder: CinderNotifier) -> None:
    from tests.functional.test_daemon import register_unprotected
    image_id = register_unprotected(stack, glance, os.urandom(MiB))
    demand(cinder, glance, image_id)
    daemon.wait_until(lambda: daemon.target_state(image_id, "edge") ==
                      ("cold", "no_glance_checksum"), 30, "refused")
    assert daemon.target_state(image_id, "central") == WARM  # same cluster: no copy needed
    assert edge_url(stack, image_id) not in locations(glance, image_id)


@pytest.mark.parametrize("order", ["glance_deletes_first", "warmer_evicts_first"])
def test_image_delete_converges_in_either_order(
        stack: Stack, daemon: Daemon, glance: Glance, order: str) -> None:
    image_id = glance.create(f"delete-{order}", tags=["warmer-pin"])["id"]
    glance.upload(image_id, os.urandom(2 * MiB))
    daemon.wait_until(lambda: daemon.target_state(image_id, "edge") == WARM, 30, "warm on edge")
    assert image_id in edge_images(stack)
    if order == "warmer_evicts_first":
        # Eviction's first step, as warmer does it: drop the Glance location
        # (Glance deletes that copy's data itself).
        url = edge_url(stack, image_id)
        index = list(locations(glance, image_id)).index(url)
        glance.patch(image_id, [{"op": "remove", "path": f"/locations/{index}"}])
    # warmer may be copying it again (it is pinned), reading the source: then
    # Glance answers 409 until that copy is done, as for a Cinder clone.
    glance.delete_eventually(image_id)
    daemon.wait_until(lambda: daemon.image(image_id) is None, 15, "forgotten")
    with shared_state(stack, daemon) as store:  # the deleted image's records go too
        daemon.wait_until(lambda: not asyncio.run(store.verified(image_id)) and
                          image_id not in asyncio.run(store.costs("edge")), 30,
                          "the image's verified snapshot and copy cost forgotten")
    # A copy may have been under way when Glance deleted the image (warmer
    # still wanted it); it must not survive either.
    daemon.wait_until(lambda: not {image_id, f"warmer-tmp.{image_id}"} & set(edge_images(stack)),
                      30, "nothing of it left on edge")
