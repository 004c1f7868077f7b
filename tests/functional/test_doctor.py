"""``warmer doctor`` on the real stack: each thing broken on purpose is
named, with its remedy, and the exit status says whether Cinder clones.

The doctor runs as the CLI does, in its own process from warmer's config
files; Cinder's and Glance's users come from a cinder.conf and a copy of
the stack's glance-api.conf, which the tests narrow where they must.
"""

from __future__ import annotations

import configparser
import contextlib
import json
import os
import subprocess
import uuid
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import pytest
import rados
import rbd
from stackclient import Stack, ceph
from stackclient.daemon import Daemon
from stackclient.glance import Glance

from tests.functional.conftest import ScratchPools, admin, user_keyring
from tests.functional.test_daemon import WARM, register_by_location, register_unprotected

MiB = 1 << 20


def cinder_conf(stack: Stack, path: Path, users: dict[str, str] | None = None, *,
                pools: dict[str, str] | None = None, extra: str = "",
                more_backends: tuple[str, ...] = (),
                ceph_confs: dict[str, Path] | None = None) -> Path:
    """A cinder.conf with one RBD backend per cluster, as Cinder's guide
    has it (rbd_user cinder, rbd_pool volumes, the stack's ceph.conf),
    unless ``users``, ``pools`` or ``ceph_confs`` say; ``extra`` is
    appended (more sections), and ``more_backends`` are enabled too."""
    users, pools, confs = users or {}, pools or {}, ceph_confs or {}
    backends = ",".join(["ceph-central", "ceph-edge", *more_backends])
    text = f"[DEFAULT]\nenabled_backends = {backends}\n"
    for cluster in ("central", "edge"):
        text += (f"[ceph-{cluster}]\nvolume_driver = cinder.volume.drivers.rbd.RBDDriver\n"
                 f"rbd_user = {users.get(cluster, 'cinder')}\n"
                 f"rbd_pool = {pools.get(cluster, 'volumes')}\n"
                 f"rbd_ceph_conf = {confs.get(cluster, stack.ceph_conf(cluster))}\n")
    path.write_text(text + extra)
    return path


def glance_conf(stack: Stack, path: Path, users: dict[str, str] | None = None, *,
                ceph_confs: dict[str, str] | None = None) -> Path:
    """The stack's glance-api.conf, with other store users if ``users`` says,
    and other ``rbd_store_ceph_conf`` if ``ceph_confs`` does."""
    parser = configparser.RawConfigParser(strict=False, interpolation=None)
    parser.read(stack["GLANCE_CONF"])
    for store, user in (users or {}).items():
        parser.set(store, "rbd_store_user", user)
    for store, conf in (ceph_confs or {}).items():
        parser.set(store, "rbd_store_ceph_conf", conf)
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


def named(diagnoses: list[dict[str, Any]], text: str, code: str, *, blocking: bool,
          unsafe: bool = False) -> str:
    """``code`` is among ``diagnoses``, blocking or not and unsafe or not as
    said, with a remedy that the text report prints under it; returns the
    remedy."""
    assert code in codes(diagnoses, blocking=blocking), (code, blocking, text)
    assert any(d["code"] == code and d["unsafe"] == unsafe for d in diagnoses), (code, text)
    fix = remedy(diagnoses, code)
    level = "UNSAFE" if unsafe else "BLOCKING" if blocking else "warning"
    assert f"[{level}] {code}: " in text and f"remedy: {fix}" in text, text
    return fix


def test_a_healthy_image_clones_in_both_targets_and_exits_0(
        stack: Stack, daemon: Daemon, glance: Glance, pinned: Callable[[str], str],
        tmp_path: Path) -> None:
    image_id = pinned("doctor-healthy")
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
    # What every report says, and what Cinder without service credentials sees.
    assert "locations_visible" in codes(report["image"]["diagnoses"])
    assert "cinder_no_glance_auth" in codes(report["deployment"]["cinder"])
    assert "glance_stores" in codes(report["deployment"]["glance"])
    assert {"cluster", "warmer_caps_probed"} <= codes(report["deployment"]["central"])
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
    # Without --cinder-conf, how Cinder reads locations is an assumption, said so.
    assert "--cinder-conf" in named(report["image"]["diagnoses"], text,
                                    "locations_api_not_checked", blocking=False)
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


def at_central(d: Daemon, image_id: str, *args: str
               ) -> tuple[int, dict[str, Any], str, dict[str, Any]]:
    """The doctor, with ``d``'s config, on ``image_id`` at central: exit
    status, report, text, central's verdict."""
    rc, report, text = doctor(d, image_id, "--target", "central", *args)
    return rc, report, text, verdict(report, "central")


def test_an_unprotected_snapshot_under_clone_v1_is_named_with_its_remedy(
        stack: Stack, daemon: Daemon, glance: Glance, tmp_path: Path) -> None:
    image_id = register_unprotected(stack, glance, os.urandom(MiB))
    rc, report, text, central = at_central(daemon, image_id, "--cinder-conf",
                                           str(cinder_conf(stack, tmp_path / "cinder.conf")))
    assert rc == 1, text
    assert "clone_v1" in codes(report["deployment"]["central"])
    assert central["clones"] is False
    # Cinder would pick it (it passes _is_cloneable) and its clone would fail.
    assert central["location"] == f"rbd://{stack.fsid()}/images/{image_id}/snap"
    assert "snapshot_unprotected" in codes(central["diagnoses"], blocking=True)
    assert (f"rbd snap protect images/{image_id}@snap"
            in remedy(central["diagnoses"], "snapshot_unprotected"))
    # Without cinder.conf, Cinder's clone format is not known: not CLONES.
    rc, report, text, central = at_central(daemon, image_id)
    assert rc == 1, text
    assert "--cinder-conf" in named(report["deployment"]["central"], text,
                                    "clone_format_unknown", blocking=False)
    assert central["clones"] is False
    assert "central: DOES NOT CLONE" in text
    assert f"rbd snap protect images/{image_id}@snap" in named(
        central["diagnoses"], text, "clone_format_unknown", blocking=True)


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


def test_stale_locations_are_named_snapshot_then_image_missing(
        stack: Stack, daemon: Daemon, glance: Glance) -> None:
    """Someone removed the RBD snapshot, then the RBD image, behind Glance's
    back (a manual clean-up): the location stays and Cinder downloads."""
    image_id = register_by_location(stack, glance, os.urandom(MiB), protect=True)
    with ceph.connect(stack.ceph_conf(), "glance", stack.keyring("glance")) as cluster, \
            cluster.open_ioctx("images") as ioctx, rbd.Image(ioctx, image_id) as img:
        img.unprotect_snap("snap")
        img.remove_snap("snap")
    rc, report, text = doctor(daemon, image_id, "--target", "central")
    assert rc == 1, text
    central = verdict(report, "central")
    assert central["clones"] is False
    fix = named(central["diagnoses"], text, "snapshot_missing", blocking=True)
    assert f"rbd snap create images/{image_id}@snap" in fix
    assert f"rbd snap protect images/{image_id}@snap" in fix
    with ceph.connect(stack.ceph_conf(), "glance", stack.keyring("glance")) as cluster:
        ceph.remove(cluster, "images", image_id)
    rc, report, text = doctor(daemon, image_id, "--target", "central")
    assert rc == 1, text
    central = verdict(report, "central")
    assert codes(central["diagnoses"]) == {"rbd_image_missing"}
    assert "replace the stale location" in named(central["diagnoses"], text,
                                                 "rbd_image_missing", blocking=True)


def test_an_unknown_image_and_one_without_data_are_named(
        daemon: Daemon, glance: Glance) -> None:
    unknown = str(uuid.uuid4())
    rc, report, text = doctor(daemon, unknown)
    assert rc == 1, text
    assert report["image"]["targets"] == []
    assert "check the id" in named(report["image"]["diagnoses"], text, "image_not_found",
                                   blocking=True)
    queued = glance.create("doctor-no-data")["id"]
    rc, report, text = doctor(daemon, queued, "--target", "edge")
    assert rc == 1, text
    image = report["image"]["diagnoses"]
    assert "wait for the upload" in named(image, text, "image_not_active", blocking=True)
    assert "upload the image's data" in named(image, text, "no_locations", blocking=True)
    # Not sent to pinning: there is nothing to copy.
    edge = verdict(report, "edge")
    fix = named(edge["diagnoses"], text, "no_location_in_cluster", blocking=True)
    assert "pin" not in fix and "image's own diagnoses" in fix


def test_an_unprotected_snapshot_clones_only_where_cinders_own_config_says_v2(
        stack: Stack, glance: Glance, tmp_path: Path) -> None:
    """warmer's ceph.conf at clone v2 says nothing of Cinder's clones: the
    stack's Cinder (its ceph.conf: auto, on a luminous cluster) still makes
    v1 clones, and an unprotected snapshot does not clone. With Cinder's own
    rbd_ceph_conf at v2, it clones and the doctor exits 0: it does not cry
    wolf."""
    v2 = tmp_path / "v2" / "ceph.conf"  # librados names the cluster after the file
    v2.parent.mkdir()
    v2.write_text(Path(stack.ceph_conf()).read_text()
                  + "\n[client]\nrbd default clone format = 2\n")
    warmer_v2 = Daemon(stack, overrides=f"[central]\nceph_conf = {v2}\n")
    image_id = register_unprotected(stack, glance, os.urandom(MiB))
    rc, report, text, central = at_central(
        warmer_v2, image_id, "--cinder-conf", str(cinder_conf(stack, tmp_path / "cinder.conf")))
    assert rc == 1, text
    assert "clone_v1" in codes(report["deployment"]["central"])
    assert central["clones"] is False
    assert "snapshot_unprotected" in codes(central["diagnoses"], blocking=True)
    # Cinder's rbd_ceph_conf at clone v2.
    conf = cinder_conf(stack, tmp_path / "cinder-v2.conf", ceph_confs={"central": v2})
    rc, report, text, central = at_central(Daemon(stack), image_id, "--cinder-conf", str(conf))
    assert rc == 0, text
    assert "clone_v2" in codes(report["deployment"]["central"]), text
    [note] = [d for d in report["deployment"]["central"] if d["code"] == "clone_v2"]
    assert f"read as it, with {v2} from cinder.conf" in note["message"], text
    assert central["clones"] is True
    assert {"snapshot_unprotected_v2", "cloneable"} <= codes(central["diagnoses"])
    assert not codes(central["diagnoses"], blocking=True)


@pytest.fixture
def pinned(glance: Glance) -> Iterator[Callable[[str], str]]:
    """``pinned(name)``: a new image tagged warmer-pin, deleted afterwards
    however the test ends (left behind, it would stay wanted in every
    target for the rest of the session)."""
    made: list[str] = []

    def make(name: str) -> str:
        made.append(glance.create(name, tags=["warmer-pin"])["id"])
        return made[-1]

    yield make
    for image_id in made:
        glance.delete_eventually(image_id)


GLANCE_OSD = "profile rbd pool=images"  # Ceph's OpenStack guide


@contextlib.contextmanager
def glance_osd_caps(stack: Stack, cluster: str, osd: str) -> Iterator[None]:
    """client.glance of ``cluster`` with ``osd`` caps instead of the guide's,
    changed live as an operator would (the stack's Glance connects afresh
    for each request); the guide's are put back whatever happens."""
    [entry] = json.loads(admin(stack, cluster, "auth", "get", "client.glance",
                               "--format", "json"))
    caps = [arg for kind, cap in sorted(entry["caps"].items()) for arg in (kind, cap)]
    assert caps == ["mon", "profile rbd", "osd", GLANCE_OSD], caps
    admin(stack, cluster, "auth", "caps", "client.glance", "mon", "profile rbd", "osd", osd)
    try:
        yield
    finally:
        admin(stack, cluster, "auth", "caps", "client.glance", *caps)


def test_a_copy_glance_refuses_to_publish_is_named_with_glances_caps(
        stack: Stack, daemon: Daemon, glance: Glance, pinned: Callable[[str], str]) -> None:
    """Glance opens a location it is given as its store's user: with that
    user's caps narrowed on edge (live, as an operator might), warmer's
    copy is complete but refused, and the doctor says both. The caps it
    had are put back whatever happens, before its image is deleted."""
    with glance_osd_caps(stack, "edge", "profile rbd pool=volumes"):
        image_id = pinned("doctor-refused")
        glance.upload(image_id, os.urandom(MiB))
        daemon.wait_until(lambda: daemon.target_state(image_id, "edge")
                          == ("cold", "publish_refused"), 60, "publish refused on edge")
        rc, report, text = doctor(daemon, image_id, "--target", "edge",
                                  "--glance-conf", stack["GLANCE_CONF"])
    assert rc == 1, text
    edge = verdict(report, "edge")
    assert edge["clones"] is False
    fix = named(edge["diagnoses"], text, "copy_not_published", blocking=True)
    assert f"warmer show {image_id}" in fix and "publish_refused" in fix
    fix = named(edge["diagnoses"], text, "glance_user_cannot_read_copy_pool", blocking=True)
    assert "client.glance" in fix and "profile rbd pool=images" in fix


def test_cinder_with_service_credentials_reads_the_locations_api(
        stack: Stack, daemon: Daemon, glance: Glance, tmp_path: Path) -> None:
    image_id = glance.create("doctor-locations-api")["id"]
    glance.upload(image_id, os.urandom(MiB))
    conf = cinder_conf(stack, tmp_path / "cinder.conf",
                       extra="[glance]\nauth_type = password\n")
    rc, report, text = doctor(daemon, image_id, "--target", "central", "--cinder-conf",
                              str(conf))
    assert rc == 0, text
    assert "cinder_glance_auth" in codes(report["deployment"]["cinder"])
    assert "locations_api" in codes(report["image"]["diagnoses"])
    assert verdict(report, "central")["clones"] is True


# -- a Glance configured otherwise, and things broken behind Glance's back ------------


def through(stack: Stack, glance_url: str, overrides: str = "") -> Daemon:
    """A warmer config of the stack (for the CLI only) whose Glance is
    ``glance_url``."""
    return Daemon(stack, overrides=f"[glance]\nendpoint = {glance_url}\n{overrides}")


def test_a_glance_at_its_defaults_shows_cinder_no_location_until_it_reads_the_api(
        stack: Stack, glance: Glance, glance_variant: Callable[..., str],
        tmp_path: Path) -> None:
    """Glance's defaults (show_image_direct_url and show_multiple_locations
    off) hide every location from GET /v2/images/{id}: Cinder without
    service credentials sees none and downloads, in every target."""
    image_id = glance.create("doctor-locations-hidden")["id"]
    glance.upload(image_id, os.urandom(MiB))
    hiding = through(stack, glance_variant("defaults", "DEFAULT.show_image_direct_url=False",
                                           "DEFAULT.show_multiple_locations=False"))
    plain = cinder_conf(stack, tmp_path / "cinder.conf")
    rc, report, text = doctor(hiding, image_id, "--cinder-conf", str(plain))
    assert rc == 1, text
    assert "cinder_no_glance_auth" in codes(report["deployment"]["cinder"])
    fix = named(report["image"]["diagnoses"], text, "locations_hidden", blocking=True)
    assert "cinder.conf [glance]" in fix and "show_image_direct_url = True" in fix
    for target in ("central", "edge"):
        v = verdict(report, target)
        assert v["clones"] is False and v["location"] is None, text
        assert codes(v["diagnoses"]) == {"no_location_in_cluster"}, text
        assert "image's own diagnoses" in remedy(v["diagnoses"], "no_location_in_cluster")
    # The same image through the stack's Glance (both on): Cinder clones at central.
    rc, report, text = doctor(Daemon(stack), image_id, "--target", "central",
                              "--cinder-conf", str(plain))
    assert rc == 0 and "locations_hidden" not in text, text
    # The remedy: Cinder with service credentials reads the locations API,
    # which this Glance answers whatever its show_* options say.
    api = cinder_conf(stack, tmp_path / "service.conf", extra="[glance]\nauth_type = password\n")
    rc, report, text = doctor(hiding, image_id, "--target", "central", "--cinder-conf", str(api))
    assert rc == 0, text
    assert "locations_api" in codes(report["image"]["diagnoses"])
    assert "locations_hidden" not in text
    assert verdict(report, "central")["location"] == (
        f"rbd://{stack.fsid()}/images/{image_id}/snap")


def test_a_glance_that_shows_direct_url_only_hides_the_location_in_another_cluster(
        stack: Stack, glance: Glance, glance_variant: Callable[..., str]) -> None:
    """Glance as Ceph's OpenStack guide sets it up (one RBD store,
    show_image_direct_url only): Cinder sees the first location alone, so a
    second one in edge, as warmer publishes it, is never cloned."""
    data = os.urandom(MiB)
    image_id = glance.create("doctor-direct-url-only")["id"]
    glance.upload(image_id, data)
    with ceph.connect(stack.ceph_conf("edge"), "glance", stack.keyring("glance", "edge")) as c:
        ceph.write_image(c, "images", image_id, data, protect=True)
    edge_url = f"rbd://{stack.fsid('edge')}/images/{image_id}/snap"
    glance.add_location(image_id, edge_url, "edge")
    rc, report, text = doctor(Daemon(stack), image_id)
    assert rc == 0 and verdict(report, "edge")["location"] == edge_url, text
    classic = through(stack, glance_variant("classic", "DEFAULT.show_multiple_locations=False",
                                            single_store="central"))
    rc, report, text = doctor(classic, image_id)
    assert rc == 1, text
    fix = named(report["image"]["diagnoses"], text, "only_direct_url", blocking=False)
    assert "show_multiple_locations = True" in fix and "cinder.conf [glance]" in fix
    assert verdict(report, "central")["clones"] is True
    edge = verdict(report, "edge")
    assert edge["clones"] is False and codes(edge["diagnoses"]) == {"no_location_in_cluster"}
    assert "edge: DOES NOT CLONE" in text
    # Not sent to pinning: warmer's copy would be one more location, unseen.
    fix = remedy(edge["diagnoses"], "no_location_in_cluster")
    assert "only_direct_url" in fix and "pin" not in fix


def test_warmers_published_copy_behind_direct_url_alone_is_sent_to_only_direct_url(
        stack: Stack, daemon: Daemon, glance: Glance, pinned: Callable[[str], str],
        glance_variant: Callable[..., str]) -> None:
    """The common case: warmer's daemon copied the image into edge and
    published it, and Glance shows direct_url alone (show_multiple_locations
    off, its stores as the stack's): Cinder only ever tries central's
    location. The doctor names that as the cause, never publishing
    (copy_not_published, `warmer evaluate`), which cannot help; nor Glance's
    caps, narrowed on edge since (live, put back whatever happens), which
    did not keep this copy from being a location."""
    image_id = pinned("doctor-copy-behind-direct-url")
    glance.upload(image_id, os.urandom(MiB))
    daemon.wait_until(lambda: daemon.target_state(image_id, "edge") == WARM, 60, "warm on edge")
    ours = f"rbd://{stack.fsid('edge')}/images/{image_id}/snap"
    assert ours in [loc["url"] for loc in glance.get(image_id)["locations"]]
    direct = through(stack, glance_variant("direct-url-only",
                                           "DEFAULT.show_multiple_locations=False"))
    with glance_osd_caps(stack, "edge", "profile rbd pool=volumes"):
        rc, report, text = doctor(direct, image_id, "--target", "edge",
                                  "--glance-conf", stack["GLANCE_CONF"])
    assert rc == 1, text
    named(report["image"]["diagnoses"], text, "only_direct_url", blocking=False)
    edge = verdict(report, "edge")
    assert edge["clones"] is False, text
    assert codes(edge["diagnoses"]) == {"no_location_in_cluster", "copy_unseen_by_cinder",
                                        "glance_user_cannot_read_copy_pool"}, text
    fix = named(edge["diagnoses"], text, "copy_unseen_by_cinder", blocking=True)
    assert fix.startswith("fix only_direct_url first") and "evaluate" not in fix, fix
    assert (f"warmer's copy images/{image_id}@snap is there (protected) and a location of "
            "the image, but Cinder sees direct_url alone" in text), text
    fix = named(edge["diagnoses"], text, "glance_user_cannot_read_copy_pool", blocking=False)
    assert fix.startswith("fix only_direct_url first") and "profile rbd pool=images" in fix
    assert "only_direct_url" in remedy(edge["diagnoses"], "no_location_in_cluster")


def test_a_location_in_glances_one_part_rbd_form_is_named_malformed(
        stack: Stack, daemon: Daemon, glance: Glance) -> None:
    """Glance's RBD store accepts ``rbd://<image>`` (the form it writes when
    it cannot read the cluster's fsid); Cinder's _is_cloneable wants four
    parts and skips it. An image whose only location has that form does not
    clone."""
    image_id = str(uuid.uuid4())
    with ceph.connect(stack.ceph_conf(), "glance", stack.keyring("glance")) as cluster:
        ceph.write_image(cluster, "images", image_id, os.urandom(MiB), protect=True)
    glance.create("doctor-one-part-location", id=image_id)
    glance.add_location(image_id, f"rbd://{image_id}", "central")
    rc, report, text, central = at_central(daemon, image_id)
    assert rc == 1, text
    assert central["clones"] is False
    fix = named(central["diagnoses"], text, "location_malformed", blocking=False)
    assert "add a well-formed location" in fix
    assert f"rbd://{image_id} is not rbd://fsid/pool/image/snapshot" in text
    assert "no_location_in_cluster" in codes(central["diagnoses"], blocking=True)


def in_scratch_pool(stack: Stack, glance: Glance, pool: str, name: str) -> tuple[str, str]:
    """An image registered by location in ``pool`` of central, which
    Glance's user could open when it was added (its caps widened for the
    while, as for an old pool of the deployment's): its id and location."""
    image_id = str(uuid.uuid4())
    with ceph.connect(stack.ceph_conf(), "admin", stack.keyring("admin")) as cluster:
        ceph.write_image(cluster, pool, image_id, os.urandom(MiB), protect=True)
    glance.create(name, id=image_id)
    url = f"rbd://{stack.fsid()}/{pool}/{image_id}/snap"
    with glance_osd_caps(stack, "central", f"{GLANCE_OSD}, profile rbd pool={pool}"):
        glance.add_location(image_id, url, "central")
    return image_id, url


def reading_cinder(stack: Stack, make_user: Any, pool: str, overrides: str = "") -> Daemon:
    """A warmer config (for the CLI) whose central Cinder user may also read
    ``pool``, as Cinder's would where that pool holds images."""
    user = make_user("central", "profile rbd pool=volumes, profile rbd-read-only "
                                f"pool=images, profile rbd-read-only pool={pool}")
    return Daemon(stack, overrides=f"[central]\ncinder_user = {user}\n"
                                   f"cinder_keyring = {user_keyring(stack, 'central', user)}\n"
                                   + overrides)


def test_a_location_whose_pool_was_deleted_is_named(
        stack: Stack, glance: Glance, make_user: Any,
        scratch_pool: Callable[[str], str]) -> None:
    """A location Glance accepted in a pool its user could open then, and
    the pool deleted since (an old pool cleaned up): Cinder cannot open it."""
    pool = scratch_pool("central")
    image_id, url = in_scratch_pool(stack, glance, pool, "doctor-pool-deleted")
    d = reading_cinder(stack, make_user, pool)
    rc, report, text, central = at_central(d, image_id)
    assert rc == 0 and central["location"] == url, text  # it clones while the pool is there
    admin(stack, "central", "osd", "pool", "delete", pool, pool, "--yes-i-really-really-mean-it")
    rc, report, text, central = at_central(d, image_id)
    assert rc == 1, text
    assert central["clones"] is False and codes(central["diagnoses"]) == {"pool_missing"}
    assert "fix the location's pool" == named(central["diagnoses"], text, "pool_missing",
                                              blocking=True)
    assert f"names pool {pool}, which this cluster does not have" in text


@contextlib.contextmanager
def header_damaged(stack: Stack, image: str) -> Iterator[None]:
    """central's ``images/<image>`` with a header librbd cannot read (its
    size no longer decodes: opening the image fails with EIO), put back
    whatever happens."""
    with ceph.connect(stack.ceph_conf(), "admin", stack.keyring("admin")) as cluster, \
            cluster.open_ioctx("images") as ioctx:
        with rbd.Image(ioctx, image, read_only=True) as img:
            header = f"rbd_header.{img.id()}"
        size = omap_value(ioctx, header, "size")
        set_omap(ioctx, header, "size", size[:3])
        try:
            yield
        finally:
            set_omap(ioctx, header, "size", size)


def test_an_image_whose_header_librbd_cannot_read_is_named_with_librbds_error(
        stack: Stack, daemon: Daemon, glance: Glance) -> None:
    """Neither missing nor refused: librbd fails to open the image itself
    (EIO, its header is damaged), so the doctor's first open, at the image's
    head before the snapshot, fails, as Cinder's open at the snapshot would.
    Put back afterwards."""
    image_id = register_by_location(stack, glance, os.urandom(MiB), protect=True)
    with header_damaged(stack, image_id):
        rc, report, text, central = at_central(daemon, image_id)
    assert rc == 1, text
    assert central["clones"] is False and codes(central["diagnoses"]) == {"open_failed"}
    fix = named(central["diagnoses"], text, "open_failed", blocking=True)
    assert "cluster's health" in fix
    assert (f"opening images/{image_id}@snap as client.cinder failed: [errno 5] RBD I/O error"
            in text)
    rc, _, text, _ = at_central(daemon, image_id)  # put back: it clones again
    assert rc == 0, text


def test_a_snapshot_that_fails_only_at_its_own_open_is_named_with_librbds_error(
        stack: Stack, daemon: Daemon, glance: Glance) -> None:
    """The image opens and lists its snapshot, but opening the snapshot
    fails: the image is a flattened clone, so its head has no parent, while
    its snapshot, taken before the flatten, still has one, whose header is
    damaged (EIO). Only setting the snapshot opens that parent, as Cinder's
    open at the snapshot does: open_failed, with librbd's error at the
    snapshot. Put back afterwards."""
    parent, image_id = str(uuid.uuid4()), str(uuid.uuid4())
    with ceph.connect(stack.ceph_conf(), "admin", stack.keyring("admin")) as cluster, \
            cluster.open_ioctx("images") as ioctx:
        ceph.write_image(cluster, "images", parent, os.urandom(MiB), protect=True)
        rbd.RBD().clone(ioctx, parent, "snap", ioctx, image_id,
                        features=rbd.RBD_FEATURE_LAYERING)
        with rbd.Image(ioctx, image_id) as img:
            img.create_snap("snap")
            img.protect_snap("snap")
            img.flatten()
    glance.create("doctor-snapshot-open-fails", id=image_id)
    glance.add_location(image_id, f"rbd://{stack.fsid()}/images/{image_id}/snap", "central")
    with header_damaged(stack, parent):
        with ceph.connect(stack.ceph_conf(), "cinder", stack.keyring("cinder")) as cluster, \
                cluster.open_ioctx("images") as ioctx, \
                rbd.Image(ioctx, image_id, read_only=True) as img:
            assert [s["name"] for s in img.list_snaps()] == ["snap"]  # the head opens
        rc, report, text, central = at_central(daemon, image_id)
    assert rc == 1, text
    assert central["clones"] is False and codes(central["diagnoses"]) == {"open_failed"}
    assert "cluster's health" in named(central["diagnoses"], text, "open_failed",
                                       blocking=True)
    assert (f"opening images/{image_id}@snap as client.cinder failed: [errno 5] RBD I/O error "
            f"(error setting image b'{image_id}' to snapshot" in text), text
    rc, _, text, _ = at_central(daemon, image_id)  # put back: it clones again
    assert rc == 0, text


def test_an_image_in_a_pool_no_osd_serves_is_named_not_the_whole_cluster(
        stack: Stack, glance: Glance, make_user: Any,
        scratch_pool: ScratchPools) -> None:
    """The location's pool has no OSD to serve it (its CRUSH rule maps to
    an empty root: its OSDs are down or gone), the rest of the cluster is
    fine: opening the image (at its head, before the snapshot) times out
    (rados_osd_op_timeout), and that location is named, not the target as
    unreachable."""
    pool = scratch_pool("central")
    image_id, _ = in_scratch_pool(stack, glance, pool, "doctor-pool-unserved")
    d = reading_cinder(stack, make_user, pool, "rados_osd_op_timeout = 3\n")
    rc, _, text, central = at_central(d, image_id)
    assert rc == 0 and central["clones"] is True, text
    scratch_pool.unserved("central", pool)  # removed by scratch_pool, after the pool
    rc, report, text, central = at_central(d, image_id)
    assert rc == 1, text
    assert central["checked"] is True and central["clones"] is False, text
    assert codes(central["diagnoses"]) == {"open_failed"}, text
    assert "ceph_unavailable" not in codes(report["deployment"]["central"]), text
    fix = named(central["diagnoses"], text, "open_failed", blocking=True)
    assert fix == "look at the cluster's health and the user's caps", fix
    assert "failed: [errno 110] RBD operation timeout" in text


def omap_value(ioctx: Any, obj: str, key: str) -> bytes:
    with rados.ReadOpCtx() as op:
        values, _ = ioctx.get_omap_vals_by_keys(op, (key,))
        ioctx.operate_read_op(op, obj)
        found = dict(values)
    value: bytes = found[key]
    return value


def set_omap(ioctx: Any, obj: str, key: str, value: bytes) -> None:
    with rados.WriteOpCtx() as op:
        ioctx.set_omap(op, (key,), (value,))
        ioctx.operate_write_op(op, obj)
