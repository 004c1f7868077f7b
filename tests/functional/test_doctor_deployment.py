"""``warmer doctor`` without an image, on the real stack: a deployment
broken on purpose (warmer's cephx user, its target config, Cinder's and
Glance's config files) is named with its remedy, and the exit status is 1
exactly when warmer cannot warm a target.

The doctor needs no running daemon: each test writes a warmer config of
its own (:class:`Daemon`, never started) and runs the CLI on it.
"""

from __future__ import annotations

import os
from collections.abc import Callable
from pathlib import Path
from typing import Any

from stackclient import Stack
from stackclient.daemon import Daemon
from stackclient.glance import Glance

from tests.functional.conftest import user_keyring
from tests.functional.test_doctor import (
    cinder_conf,
    codes,
    doctor,
    glance_conf,
    named,
    verdict,
)

# The documented caps (docs/cephx.md).
WARMER_OSD = "profile rbd pool=images, profile rbd-read-only pool=volumes"


def offline(stack: Stack, overrides: str) -> Daemon:
    """A warmer config of the stack with ``overrides``, for the CLI only."""
    return Daemon(stack, overrides=overrides)


def as_warmer(stack: Stack, make_user: Any, osd_caps: str,
              mon_caps: str = "profile rbd") -> tuple[str, Daemon]:
    """A warmer config whose edge target connects as a new user."""
    user = make_user("edge", osd_caps, mon_caps)
    return user, offline(stack, f"[edge]\nrados_user = {user}\n"
                                f"keyring = {user_keyring(stack, 'edge', user)}\n")


def test_warmer_without_write_caps_on_the_copy_pool_cannot_warm_and_exits_1(
        stack: Stack, make_user: Any) -> None:
    user, d = as_warmer(stack, make_user, "profile rbd-read-only pool=images")
    rc, report, text = doctor(d, "--target", "edge")
    assert rc == 1, text
    edge = report["deployment"]["edge"]
    fix = named(edge, text, "warmer_cannot_write_copy_pool", blocking=True)
    # ``ceph auth caps`` replaces every cap: the remedy keeps the current ones.
    assert fix.startswith(f"ceph auth caps client.{user} with its current caps plus "
                          "'profile rbd pool=images' on osd"), fix
    assert f"osd '{WARMER_OSD}'" in fix
    # It cannot read Cinder's pool either: it could never see clones.
    fix = named(edge, text, "warmer_cannot_read_cinder_pool", blocking=False)
    assert fix == (f"ceph auth caps client.{user} with its current caps plus "
                   "'profile rbd-read-only pool=volumes' on osd")


def test_warmer_with_write_caps_on_cinders_pool_is_unsafe_and_exits_1(
        stack: Stack, make_user: Any) -> None:
    """It works, but every Cinder volume is within warmer's reach
    (invariant 7): the doctor exits 1, and says UNSAFE, not BLOCKING."""
    user, d = as_warmer(stack, make_user, "profile rbd pool=images, profile rbd pool=volumes",
                        mon_caps='profile rbd, allow command "auth get"')
    rc, report, text = doctor(d, "--target", "edge")
    assert rc == 1, text
    assert report["unsafe"] is True and report["blocked"] is True
    edge = report["deployment"]["edge"]
    assert not codes(edge, blocking=True), text  # nothing keeps warmer from warming
    fix = named(edge, text, "warmer_can_write_cinder_pool", blocking=False, unsafe=True)
    assert f"client.{user} with its current caps, but 'profile rbd-read-only pool=volumes'" in fix
    # Allowed to read its own caps, the doctor shows them.
    assert "warmer_caps" in codes(edge)
    assert f"client.{user}: mon 'profile rbd, allow command \"auth get\"'" in text


def test_warmer_that_cannot_connect_is_named_and_the_image_not_checked_there(
        stack: Stack, glance: Glance, tmp_path: Path) -> None:
    d = offline(stack, f"[edge]\nkeyring = {tmp_path / 'missing.keyring'}\n")
    rc, report, text = doctor(d, "--target", "edge")
    assert rc == 1, text
    fix = named(report["deployment"]["edge"], text, "warmer_cannot_connect", blocking=True)
    assert "[edge] ceph_conf and keyring" in fix
    # An image that clones at central: edge could not be looked at, which
    # is no "clones" (exit 1), and says so.
    image_id = glance.create("doctor-edge-unchecked")["id"]
    glance.upload(image_id, os.urandom(1 << 20))
    rc, report, text = doctor(d, image_id)
    assert rc == 1, text
    assert verdict(report, "central")["clones"] is True
    edge = verdict(report, "edge")
    assert edge["clones"] is False and edge["checked"] is False
    assert "edge: NOT CHECKED" in text
    assert "fix what the deployment says of edge" in named(
        edge["diagnoses"], text, "target_not_checked", blocking=True)


def test_a_user_whose_calls_time_out_is_named_not_a_traceback(
        stack: Stack, make_user: Any) -> None:
    """Without mon caps a user connects, but cannot read the OSD map: every
    pool open waits for the op timeouts. The doctor says so, in seconds."""
    user = make_user("edge", WARMER_OSD, mon_caps='allow command "version"')
    d = offline(stack, f"[edge]\nrados_user = {user}\n"
                       f"keyring = {user_keyring(stack, 'edge', user)}\n"
                       "rados_mon_op_timeout = 2\nrados_osd_op_timeout = 2\n")
    rc, report, text = doctor(d, "--target", "edge")
    assert rc == 1, text
    fix = named(report["deployment"]["edge"], text, "ceph_unavailable", blocking=True)
    assert "mon 'profile rbd'" in fix and f"client.{user}" in text


def test_a_target_on_the_wrong_or_no_glance_store_cannot_copy_and_exits_1(
        stack: Stack) -> None:
    rc, report, text = doctor(offline(stack, "[edge]\nglance_store = central\n"),
                              "--target", "edge")
    assert rc == 1, text
    fix = named(report["deployment"]["edge"], text, "glance_store_wrong_cluster",
                blocking=True)
    assert f"the store whose fsid is {stack.fsid('edge')}" in fix
    rc, report, text = doctor(offline(stack, "[edge]\nglance_store = nowhere\n"),
                              "--target", "edge")
    assert rc == 1, text
    assert "set [edge] glance_store" in named(report["deployment"]["edge"], text,
                                              "glance_store_missing", blocking=True)


def test_copies_in_cinders_pool_are_named_and_write_caps_there_never_advised(
        stack: Stack, tmp_path: Path) -> None:
    """Neither warmer's nor Glance's user is ever told to take write caps on
    Cinder's pool: the fix is to leave copy_pool unset."""
    rc, report, text = doctor(offline(stack, "[edge]\ncopy_pool = volumes\n"),
                              "--target", "edge", "--glance-conf",
                              str(glance_conf(stack, tmp_path / "glance.conf")))
    assert rc == 1, text
    edge = report["deployment"]["edge"]
    assert "leave copy_pool unset" in named(edge, text, "copies_in_cinder_pool",
                                            blocking=False)
    fix = named(edge, text, "warmer_cannot_write_copy_pool", blocking=True)
    assert "leave [edge] copy_pool unset" in fix
    assert "profile rbd pool=volumes" not in fix and f"'{WARMER_OSD}'" in fix
    # Glance's client.glance (profile rbd pool=images) cannot open copies there.
    fix = named(edge, text, "glance_user_cannot_read_copy_pool", blocking=True)
    assert fix.startswith("leave [edge] copy_pool unset") and "pool=volumes" not in fix
    assert "pool=volumes" not in "".join(d["remedy"] or "" for d in edge).replace(
        "rbd-read-only pool=volumes", "")


def test_a_cinder_pool_that_does_not_exist_is_named(stack: Stack) -> None:
    rc, report, text = doctor(offline(stack, "[edge]\npool = no-such-pool\n"),
                              "--target", "edge")
    assert rc == 0, text  # warmer still warms; it cannot see clones
    assert "set [edge] pool to Cinder's rbd_pool" == named(
        report["deployment"]["edge"], text, "cinder_pool_missing", blocking=False)


def test_a_glance_store_and_a_cinder_backend_no_target_serves_are_named(
        stack: Stack, tmp_path: Path) -> None:
    d = offline(stack, "[DEFAULT]\nenabled_targets = central\n")
    rc, report, text = doctor(d, "--cinder-conf",
                              str(cinder_conf(stack, tmp_path / "cinder.conf")))
    assert rc == 0, text  # nothing warmer does is broken; edge is just not served
    fix = named(report["deployment"]["glance"], text, "glance_store_not_a_target",
                blocking=False)
    assert "add a target with glance_store = edge" in fix
    fix = named(report["deployment"]["cinder"], text, "cinder_backend_not_a_target",
                blocking=False)
    assert f"add a target for cluster {stack.fsid('edge')}" in fix


def test_cinder_conf_mistakes_are_named(stack: Stack, tmp_path: Path) -> None:
    """A backend whose pool differs from the target's, a non-RBD backend, and
    an rbd_user the doctor cannot connect as."""
    lvm = "[lvm]\nvolume_driver = cinder.volume.drivers.lvm.LVMVolumeDriver\n"
    conf = cinder_conf(stack, tmp_path / "cinder.conf", {"central": "nobody"},
                       pools={"edge": "cinder-volumes"}, extra=lvm, more_backends=("lvm",))
    rc, report, text = doctor(offline(stack, ""), "--cinder-conf", str(conf))
    assert rc == 0, text
    fix = named(report["deployment"]["edge"], text, "cinder_pool_differs", blocking=False)
    assert fix == "set [edge] pool = cinder-volumes"
    cinder = report["deployment"]["cinder"]
    assert "cinder_backend_not_rbd" in codes(cinder)
    fix = named(cinder, text, "cinder_user_not_checked", blocking=False)
    assert "fix rbd_user / rbd_ceph_conf" in fix and "client.nobody" in text


def test_glance_store_users_that_cannot_write_or_look_elsewhere_are_named(
        stack: Stack, make_user: Any, tmp_path: Path) -> None:
    d = offline(stack, "")
    reader = make_user("edge", "profile rbd-read-only pool=images")
    conf = glance_conf(stack, tmp_path / "glance.conf", {"edge": reader})
    rc, report, text = doctor(d, "--target", "edge", "--glance-conf", str(conf))
    assert rc == 0, text  # locations are accepted; only deletes leave copies behind
    fix = named(report["deployment"]["edge"], text, "glance_user_cannot_write_copy_pool",
                blocking=False)
    assert fix == (f"ceph auth caps client.{reader} with its current caps plus "
                   "'profile rbd pool=images' on osd")
    # The edge store's ceph.conf points at central.
    conf = glance_conf(stack, tmp_path / "glance2.conf",
                       ceph_confs={"edge": stack.ceph_conf("central")})
    rc, report, text = doctor(d, "--target", "edge", "--glance-conf", str(conf))
    fix = named(report["deployment"]["edge"], text, "glance_store_conf_other_cluster",
                blocking=False)
    assert "point [edge] rbd_store_ceph_conf at this cluster's ceph.conf" == fix
    # Without glance-api.conf, it says what it could not check.
    rc, report, text = doctor(d, "--target", "edge")
    assert "--glance-conf" in named(report["deployment"]["edge"], text,
                                    "glance_user_not_checked", blocking=False)


def test_an_unreachable_glance_blocks_and_exits_1(stack: Stack) -> None:
    d = offline(stack, "[glance]\nendpoint = http://127.0.0.1:9\n")
    rc, report, text = doctor(d, "--target", "central")
    assert rc == 1, text
    assert "[glance] endpoint" in named(report["deployment"]["glance"], text,
                                        "glance_unreachable", blocking=True)


def test_a_single_store_glance_shows_no_stores_and_copies_need_copy_pool(
        stack: Stack, glance_variant: Callable[..., str]) -> None:
    """Glance with one RBD store set up the classic way (no
    enabled_backends) answers GET /v2/info/stores/detail with 404: warmer
    cannot learn where its copies go, and copies nothing, until each
    target's copy_pool says."""
    url = glance_variant("single", single_store="central")
    endpoint = f"[glance]\nendpoint = {url}\n"
    rc, report, text = doctor(offline(stack, endpoint))
    assert rc == 1, text
    fix = named(report["deployment"]["glance"], text, "glance_stores_unknown", blocking=False)
    assert "set copy_pool in each target" in fix
    for target in ("central", "edge"):
        assert f"set [{target}] glance_store" in named(
            report["deployment"][target], text, "glance_store_missing", blocking=True)
    # The remedy: nothing blocks any more; Glance's stores stay unknown.
    rc, report, text = doctor(offline(stack, endpoint + "[central]\ncopy_pool = images\n"
                                                        "[edge]\ncopy_pool = images\n"))
    assert rc == 0, text
    assert "glance_stores_unknown" in codes(report["deployment"]["glance"])
    assert "glance_store_missing" not in text


def test_trusting_a_state_that_glances_user_can_write_is_warned(stack: Stack) -> None:
    """The stack keeps the state in central's images pool, Glance store
    central's: with trust_verified_snapshots (the default) Glance's user
    could write records that make warmer skip the hash."""
    rc, report, text = doctor(offline(stack, ""))
    fix = named(report["deployment"]["state"], text, "state_pool_shared_with_glance",
                blocking=False)
    assert "trust_verified_snapshots = false" in fix
    assert rc == 0, text  # a warning: it does not keep warmer from warming
    rc, report, text = doctor(offline(stack, "[warming]\ntrust_verified_snapshots = false\n"))
    assert "state" not in report["deployment"] and "state_pool_shared" not in text
