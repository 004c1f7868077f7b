"""``warmer doctor`` on the real stack: each thing broken on purpose is
named, with its remedy, and the exit status says whether Cinder clones.

The doctor runs as the CLI does, in its own process from warmer's config
files; Cinder's and Glance's users come from a cinder.conf and a copy of
the stack's glance-api.conf, which the tests narrow where they must.
"""

from __future__ import annotations

import configparser
import json
import os
import subprocess
import uuid
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
from stackclient import Stack, ceph
from stackclient.daemon import Daemon
from stackclient.glance import Glance

from tests.functional.test_daemon import WARM, register_unprotected

MiB = 1 << 20


def admin(stack: Stack, cluster: str, *args: str) -> str:
    return subprocess.run(["ceph", "--conf", stack.ceph_conf(cluster), "--name", "client.admin",
                           "--keyring", stack.keyring("admin", cluster), *args],
                          check=True, capture_output=True, text=True).stdout


@pytest.fixture
def make_user(stack: Stack) -> Iterator[Any]:
    """A cephx user with the given osd caps, whose keyring is where the
    stack's ceph.conf looks for it ($cluster.$name.keyring): a Cinder or
    Glance user that connects with its ceph.conf alone. Deleted afterwards."""
    made: list[tuple[str, str, Path]] = []

    def make(cluster: str, osd_caps: str) -> str:
        name = f"doctor-{uuid.uuid4().hex[:8]}"
        keyring = Path(stack.ceph_conf(cluster)).parent / f"ceph.client.{name}.keyring"
        keyring.write_text(admin(stack, cluster, "auth", "get-or-create", f"client.{name}",
                                 "mon", "profile rbd", "osd", osd_caps))
        made.append((cluster, name, keyring))
        return name

    yield make
    for cluster, name, keyring in made:
        admin(stack, cluster, "auth", "del", f"client.{name}")
        keyring.unlink()


def cinder_conf(stack: Stack, path: Path, users: dict[str, str] | None = None) -> Path:
    """A cinder.conf with one RBD backend per cluster, as Cinder's guide
    has it (rbd_user cinder, rbd_pool volumes), unless ``users`` says."""
    users = users or {}
    text = "[DEFAULT]\nenabled_backends = ceph-central,ceph-edge\n"
    for cluster in ("central", "edge"):
        text += (f"[ceph-{cluster}]\nvolume_driver = cinder.volume.drivers.rbd.RBDDriver\n"
                 f"rbd_user = {users.get(cluster, 'cinder')}\nrbd_pool = volumes\n"
                 f"rbd_ceph_conf = {stack.ceph_conf(cluster)}\n")
    path.write_text(text)
    return path


def glance_conf(stack: Stack, path: Path, users: dict[str, str] | None = None) -> Path:
    """The stack's glance-api.conf, with other store users if ``users`` says."""
    parser = configparser.RawConfigParser(strict=False, interpolation=None)
    parser.read(stack["GLANCE_CONF"])
    for store, user in (users or {}).items():
        parser.set(store, "rbd_store_user", user)
    with open(path, "w") as f:
        parser.write(f)
    return path


def doctor(daemon: Daemon, *args: str) -> tuple[int, dict[str, Any], str]:
    """The doctor's exit status, its JSON report, and its text report."""
    as_json = daemon.cli("doctor", *args, "--json")
    text = daemon.cli("doctor", *args)
    assert as_json.returncode == text.returncode, (as_json.stderr, text.stderr)
    assert as_json.returncode in (0, 1), as_json.stderr
    return as_json.returncode, json.loads(as_json.stdout), text.stdout


def verdict(report: dict[str, Any], target: str) -> dict[str, Any]:
    return next(v for v in report["image"]["targets"] if v["target"] == target)


def codes(diagnoses: list[dict[str, Any]], blocking: bool | None = None) -> set[str]:
    return {d["code"] for d in diagnoses if blocking is None or d["blocking"] == blocking}


def remedy(diagnoses: list[dict[str, Any]], code: str) -> str:
    found = [d["remedy"] for d in diagnoses if d["code"] == code]
    assert found and found[0], f"{code} has no remedy in {diagnoses}"
    return str(found[0])


def test_a_healthy_image_clones_in_both_targets_and_exits_0(
        stack: Stack, daemon: Daemon, glance: Glance, tmp_path: Path) -> None:
    image_id = glance.create("doctor-healthy", tags=["warmer-pin"])["id"]
    glance.upload(image_id, os.urandom(4 * MiB))
    for target in ("central", "edge"):
        daemon.wait_until(lambda t=target: daemon.target_state(image_id, t) == WARM, 30,
                          f"warm on {target}")
    rc, report, text = doctor(daemon, image_id, "--cinder-conf",
                              str(cinder_conf(stack, tmp_path / "cinder.conf")),
                              "--glance-conf", str(glance_conf(stack, tmp_path / "glance.conf")))
    assert rc == 0, text
    assert report["blocked"] is False
    for target in ("central", "edge"):
        v = verdict(report, target)
        assert v["clones"] is True, text
        assert v["location"] == f"rbd://{stack.fsid(target)}/images/{image_id}/snap"
        assert "cloneable" in codes(v["diagnoses"])
        assert f"{target}: CLONES from {v['location']}" in text
    deployment = report["deployment"]
    assert "glance_user_ok" in codes(deployment["edge"])
    assert "clone_v1" in codes(deployment["central"])
    assert "cinder_backend" in codes(deployment["cinder"])
    assert not codes([d for ds in deployment.values() for d in ds], blocking=True)


def test_a_missing_location_is_named_with_its_remedy(
        stack: Stack, daemon: Daemon, glance: Glance) -> None:
    image_id = glance.create("doctor-central-only")["id"]
    glance.upload(image_id, os.urandom(MiB))
    rc, report, text = doctor(daemon, image_id)
    assert rc == 1, text
    assert verdict(report, "central")["clones"] is True
    edge = verdict(report, "edge")
    assert edge["clones"] is False
    assert "no_location_in_cluster" in codes(edge["diagnoses"], blocking=True)
    assert "pin it" in remedy(edge["diagnoses"], "no_location_in_cluster")
    assert "edge: DOES NOT CLONE" in text


def test_a_wrong_fsid_is_named_with_the_right_location(
        stack: Stack, daemon: Daemon, glance: Glance) -> None:
    image_id = str(uuid.uuid4())
    with ceph.connect(stack.ceph_conf("edge"), "glance", stack.keyring("glance", "edge")) as c:
        ceph.write_image(c, "images", image_id, os.urandom(MiB), protect=True)
    glance.create("doctor-wrong-fsid", id=image_id)
    wrong = str(uuid.uuid4())
    glance.add_location(image_id, f"rbd://{wrong}/images/{image_id}/snap", "edge")
    rc, report, text = doctor(daemon, image_id, "--target", "edge")
    assert rc == 1, text
    edge = verdict(report, "edge")
    assert edge["clones"] is False
    # Named once, as what it is: not as a copy of warmer's left unpublished.
    assert codes(edge["diagnoses"]) == {"location_fsid_wrong"}
    assert (f"rbd://{stack.fsid('edge')}/images/{image_id}/snap"
            in remedy(edge["diagnoses"], "location_fsid_wrong"))


def test_qcow2_is_named_with_its_remedy(daemon: Daemon, glance: Glance, tmp_path: Path) -> None:
    path = tmp_path / "disk.qcow2"
    subprocess.run(["qemu-img", "create", "-q", "-f", "qcow2", str(path), "16M"], check=True)
    image_id = glance.create("doctor-qcow2", disk_format="qcow2")["id"]
    glance.upload(image_id, path.read_bytes())
    rc, report, text = doctor(daemon, image_id)
    assert rc == 1, text
    for target in ("central", "edge"):
        v = verdict(report, target)
        assert v["clones"] is False
        assert "disk_format_not_raw" in codes(v["diagnoses"], blocking=True)
        assert "qemu-img convert -O raw" in remedy(v["diagnoses"], "disk_format_not_raw")


def test_an_unprotected_snapshot_under_clone_v1_is_named_with_its_remedy(
        stack: Stack, daemon: Daemon, glance: Glance) -> None:
    image_id = register_unprotected(stack, glance, os.urandom(MiB))
    rc, report, text = doctor(daemon, image_id, "--target", "central")
    assert rc == 1, text
    assert "clone_v1" in codes(report["deployment"]["central"])
    central = verdict(report, "central")
    assert central["clones"] is False
    # Cinder would pick it (it passes _is_cloneable) and its clone would fail.
    assert central["location"] == f"rbd://{stack.fsid()}/images/{image_id}/snap"
    assert "snapshot_unprotected" in codes(central["diagnoses"], blocking=True)
    assert (f"rbd snap protect images/{image_id}@snap"
            in remedy(central["diagnoses"], "snapshot_unprotected"))


def test_cinder_without_read_access_is_named_with_its_remedy(
        stack: Stack, daemon: Daemon, glance: Glance, make_user: Any, tmp_path: Path) -> None:
    image_id = glance.create("doctor-cinder-cannot-read")["id"]
    glance.upload(image_id, os.urandom(MiB))
    narrow = make_user("central", "profile rbd pool=volumes")  # nothing on images
    conf = cinder_conf(stack, tmp_path / "cinder.conf", {"central": narrow})
    rc, report, text = doctor(daemon, image_id, "--target", "central", "--cinder-conf",
                              str(conf))
    assert rc == 1, text
    central = verdict(report, "central")
    assert central["clones"] is False
    assert "cinder_user_cannot_read" in codes(central["diagnoses"], blocking=True)
    fix = remedy(central["diagnoses"], "cinder_user_cannot_read")
    assert f"client.{narrow}" in fix and "profile rbd-read-only pool=images" in fix
    # The same image, as the guide's client.cinder: it clones.
    rc, report, _ = doctor(daemon, image_id, "--target", "central", "--cinder-conf",
                           str(cinder_conf(stack, tmp_path / "guide.conf")))
    assert rc == 0 and verdict(report, "central")["clones"] is True


def test_glance_without_caps_on_the_copy_pool_is_named_with_its_remedy(
        stack: Stack, daemon: Daemon, glance: Glance, make_user: Any, tmp_path: Path) -> None:
    image_id = glance.create("doctor-glance-cannot-read")["id"]
    glance.upload(image_id, os.urandom(MiB))
    narrow = make_user("edge", "profile rbd pool=volumes")  # nothing on images
    conf = glance_conf(stack, tmp_path / "glance.conf", {"edge": narrow})
    rc, report, text = doctor(daemon, image_id, "--target", "edge", "--glance-conf", str(conf))
    assert rc == 1, text
    deployment = report["deployment"]["edge"]
    assert "glance_user_cannot_read_copy_pool" in codes(deployment, blocking=True)
    fix = remedy(deployment, "glance_user_cannot_read_copy_pool")
    assert f"client.{narrow}" in fix and "profile rbd pool=images" in fix
    edge = verdict(report, "edge")
    assert {"no_location_in_cluster", "glance_user_cannot_read_copy_pool"} <= codes(
        edge["diagnoses"], blocking=True)
    # Without the image: the deployment alone blocks, and says so.
    rc, report, _ = doctor(daemon, "--target", "edge", "--glance-conf", str(conf))
    assert rc == 1 and report["image"] is None
