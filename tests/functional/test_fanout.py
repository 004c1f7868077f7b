"""Fan-out on the real stack: an image wanted in several targets is read
once and hashed once, and every target is written from that read.

The stack has two clusters; a third target, ``edgefan``, copies into an
extra pool of edge (``fanout``). Glance's and Cinder's users of edge get
read (Glance: rbd profile, as for its own pool, since deleting the image
deletes that copy too) on the extra pool for the length of the module, so
that Glance accepts the copy's location and Cinder can clone it; their
caps are put back afterwards. warmer's target there uses a user of its
own (rbd profile on ``fanout``, read-only on Cinder's pool), so
``client.warmer`` keeps exactly its documented caps.

* An image in central (Glance's RBD store): central repairs its own
  snapshot, edge and edgefan copy it from one read of central's snapshot.
* An image in Glance's file store: central, edge and edgefan all copy it
  from one download through Glance.
"""

from __future__ import annotations

import asyncio
import hashlib
import json
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

from tests.functional.conftest import admin, record_timing, user_keyring
from tests.functional.test_copies import cinder_clone_image, locations, shared_state, sparse
from tests.functional.test_daemon import WARM, demand

MiB = 1 << 20
POOL = "fanout"
TARGETS = ("central", "edge", "edgefan")


def caps(stack: Stack, user: str) -> dict[str, str]:
    [entry] = json.loads(admin(stack, "edge", "auth", "get", f"client.{user}",
                               "--format", "json"))
    return dict(entry["caps"])


def set_caps(stack: Stack, user: str, new: dict[str, str]) -> None:
    admin(stack, "edge", "auth", "caps", f"client.{user}",
          *(arg for daemon, value in sorted(new.items()) for arg in (daemon, value)))


@pytest.fixture(scope="module")
def fanout_pool(stack: Stack) -> Iterator[tuple[str, Path]]:
    """The pool ``fanout`` in edge, and a warmer user for it (name, keyring)."""
    existing = admin(stack, "edge", "osd", "pool", "ls").split()
    if POOL not in existing:
        admin(stack, "edge", "osd", "pool", "create", POOL, "8")
        subprocess.run(["rbd", "--conf", stack.ceph_conf("edge"), "--name", "client.admin",
                        "--keyring", stack.keyring("admin", "edge"), "pool", "init", POOL],
                       check=True)
    before = {user: caps(stack, user) for user in ("glance", "cinder")}
    set_caps(stack, "glance", {**before["glance"], "osd": before["glance"]["osd"]
                               + f", profile rbd pool={POOL}"})
    set_caps(stack, "cinder", {**before["cinder"], "osd": before["cinder"]["osd"]
                               + f", profile rbd-read-only pool={POOL}"})
    name = f"warmer-fan-{uuid.uuid4().hex[:6]}"
    keyring = user_keyring(stack, "edge", name)
    keyring.write_text(admin(stack, "edge", "auth", "get-or-create", f"client.{name}",
                             "mon", "profile rbd", "osd",
                             f"profile rbd pool={POOL}, profile rbd-read-only pool=volumes"))
    try:
        yield name, keyring
    finally:
        for user, old in before.items():
            set_caps(stack, user, old)
        admin(stack, "edge", "auth", "del", f"client.{name}")
        keyring.unlink()


@pytest.fixture(scope="module")
def fan_daemon(stack: Stack, fanout_pool: tuple[str, Path]) -> Iterator[Daemon]:
    user, keyring = fanout_pool
    d = Daemon(stack, name="fanout", overrides=(
        "[DEFAULT]\nenabled_targets = central,edge,edgefan\n"
        "[edgefan]\n"
        f"ceph_conf = {stack.ceph_conf('edge')}\n"
        f"rados_user = {user}\nkeyring = {keyring}\n"
        f"cinder_user = cinder\ncinder_keyring = {stack.keyring('cinder', 'edge')}\n"
        f"pool = volumes\nglance_store = edge\ncopy_pool = {POOL}\n"
        "repair_glance_snapshots = true\n")).start()
    yield d
    d.kill()


def url(stack: Stack, cluster: str, pool: str, image_id: str) -> str:
    return f"rbd://{stack.fsid(cluster)}/{pool}/{image_id}/snap"


def reads(d: Daemon) -> tuple[float, float]:
    return (d.metric("warmer_copy_source_reads_total"),
            d.metric("warmer_copy_source_read_bytes_total"))


def copies(d: Daemon) -> dict[str, float]:
    return {t: d.metric("warmer_copy_duration_seconds_count", target=t) for t in TARGETS}


def all_warm(d: Daemon, image_id: str) -> bool:
    view = d.image(image_id)
    return bool(view) and len(view["targets"]) == len(TARGETS) and all(  # type: ignore[index]
        (t["state"], t["reason"]) == WARM for t in view["targets"])  # type: ignore[index]


def clones_as_cinder(stack: Stack, pool: str, image_id: str, data: bytes,
                     cluster: str = "edge") -> None:
    """A v1 clone of the copy as Cinder's user, with the image's data."""
    with ceph.connect(stack.ceph_conf(cluster), "cinder", stack.keyring("cinder", cluster)) as c:
        assert ceph.snapshot_state(c, pool, image_id) == "protected"
        clone = f"volume-{uuid.uuid4()}"
        ceph.clone_v1(c, pool, image_id, "snap", "volumes", clone)
        try:
            assert ceph.read_all(c, "volumes", clone) == data
        finally:
            ceph.remove(c, "volumes", clone)


def costs(stack: Stack, d: Daemon, image_id: str, targets: tuple[str, ...]) -> dict[str, Any]:
    with shared_state(stack, d) as store:
        return {t: asyncio.run(store.costs(t)).get(image_id) for t in targets}


def test_an_image_wanted_in_two_other_targets_is_read_once_and_both_clone(
        stack: Stack, fan_daemon: Daemon, glance: Glance, cinder: CinderNotifier,
        cinder_python: Path) -> None:
    d = fan_daemon
    # 1 MiB of data every 4 MiB: Glance's thin store skips its all-zero
    # 8 MiB chunks only, so most of it is allocated (and read).
    data = sparse(96 * MiB, data_every=4)
    image_id = glance.create("fan-out-rbd")["id"]
    glance.upload(image_id, data)
    reads_before, bytes_before = reads(d)
    copies_before = copies(d)

    demand(cinder, glance, image_id)
    d.wait_until(lambda: all_warm(d, image_id), 60, "warm in every target")

    # One read of central's snapshot fed both copies.
    reads_after, bytes_after = reads(d)
    assert reads_after == reads_before + 1
    copied = {t: n - copies_before[t] for t, n in copies(d).items()}
    assert copied == {"central": 0, "edge": 1, "edgefan": 1}  # central: its own snapshot
    cost = costs(stack, d, image_id, ("edge", "edgefan"))
    assert cost["edge"] is not None and cost["edgefan"] is not None
    assert cost["edge"].fanout == cost["edgefan"].fanout == 2
    assert cost["edge"].read_bytes == cost["edgefan"].read_bytes == bytes_after - bytes_before
    assert 0 < cost["edge"].read_bytes <= len(data)
    assert cost["edge"].check == "verified"
    assert "one read of rbd" in d.log.read_text() and "for 2 targets" in d.log.read_text()

    # Each copy is its own: published with its own location, cloneable by Cinder.
    locs = locations(glance, image_id)
    assert locs[url(stack, "edge", "images", image_id)] == "edge"
    assert locs[url(stack, "edge", POOL, image_id)] == "edge"
    digest = "sha512:" + hashlib.sha512(data).hexdigest()
    for pool in ("images", POOL):
        clones_as_cinder(stack, pool, image_id, data)
        with ceph.connect(stack.ceph_conf("edge"), "admin", stack.keyring("admin", "edge")) as c, \
                c.open_ioctx(pool) as ioctx, rbd.Image(ioctx, image_id, read_only=True) as img:
            assert img.metadata_get("warmer.verified") == digest
    result = cinder_clone_image(cinder_python, stack, image_id)  # Cinder's own driver
    assert result["cloned"] is True, result
    with ceph.connect(stack.ceph_conf("edge"), "cinder", stack.keyring("cinder", "edge")) as c:
        ceph.remove(c, "volumes", result["volume"])
    glance.delete_eventually(image_id)


def test_a_file_store_image_is_downloaded_once_for_three_targets(
        stack: Stack, fan_daemon: Daemon, glance: Glance, cinder_python: Path) -> None:
    d = fan_daemon
    data = sparse(32 * MiB, data_every=2)
    image_id = glance.create("fan-out-http", tags=["warmer-pin"])["id"]
    downloads_before = d.metric("warmer_notifications_total", event_type="image.send",
                                outcome="own_download")
    reads_before, bytes_before = reads(d)
    glance.upload(image_id, data, store=stack["GLANCE_FILE_STORE"])
    uploaded = time.monotonic()
    d.wait_until(lambda: all_warm(d, image_id), 60, "warm in every target")
    record_timing("file store, pinned -> warm in 3 targets, one download (32 MiB)",
                  time.monotonic() - uploaded)
    # One download through Glance (Glance says so too: one image.send) for three copies.
    reads_after, bytes_after = reads(d)
    assert (reads_after - reads_before, bytes_after - bytes_before) == (1, len(data))
    d.wait_until(lambda: d.metric("warmer_notifications_total", event_type="image.send",
                                  outcome="own_download") > downloads_before, 15,
                 "Glance's image.send of warmer's download")
    assert d.metric("warmer_notifications_total", event_type="image.send",
                    outcome="own_download") == downloads_before + 1
    cost = costs(stack, d, image_id, TARGETS)
    assert {t: c.fanout for t, c in cost.items()} == dict.fromkeys(TARGETS, 3), cost
    locs = locations(glance, image_id)
    for cluster, pool in (("central", "images"), ("edge", "images"), ("edge", POOL)):
        assert url(stack, cluster, pool, image_id) in locs
        clones_as_cinder(stack, pool, image_id, data, cluster)
    for cluster in ("central", "edge"):
        result = cinder_clone_image(cinder_python, stack, image_id, cluster)
        assert result["cloned"] is True, result
        with ceph.connect(stack.ceph_conf(cluster), "cinder",
                          stack.keyring("cinder", cluster)) as c:
            ceph.remove(c, "volumes", result["volume"])
    glance.delete_eventually(image_id)
