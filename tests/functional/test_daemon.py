"""warmer-daemon on the real stack: warming, repair, idempotency, bad input.

Each test uses its own images, so they share one daemon (module fixture)
on its own pool queue.
"""

from __future__ import annotations

import json
import os
import re
import signal
import socket
import stat
import subprocess
import time
import urllib.error
import uuid
from typing import Any

import kombu
import pytest
import rbd
from stackclient import Stack, ceph
from stackclient.cinder import CinderNotifier, GlanceNotifier
from stackclient.daemon import Daemon
from stackclient.glance import Glance

from tests.functional.conftest import record_timing

WARM = ("warm", "cloneable")


def register_unprotected(stack: Stack, glance: Glance, data: bytes) -> str:
    """An image registered by location whose RBD snapshot was never protected."""
    return register_by_location(stack, glance, data, protect=False)


def register_by_location(stack: Stack, glance: Glance, data: bytes, *, protect: bool) -> str:
    """An image whose RBD image and snapshot Glance's user wrote in central's
    ``images`` pool, registered in Glance by its location."""
    image_id = str(uuid.uuid4())
    with ceph.connect(stack.ceph_conf(), "glance", stack.keyring("glance")) as cluster:
        ceph.write_image(cluster, "images", image_id, data, protect=protect)
    glance.create(f"registered-{image_id[:8]}", id=image_id)
    glance.add_location(image_id, f"rbd://{stack.fsid()}/images/{image_id}/snap", "central")
    return image_id


def demand(cinder: CinderNotifier, glance: Glance, image_id: str, n: int = 3) -> None:
    image = glance.get(image_id)
    for _ in range(n):
        cinder.volume_created(image)


def test_uploaded_image_is_reported_warm_within_seconds(daemon: Daemon, glance: Glance) -> None:
    image_id = glance.create("pinned-upload", tags=["warmer-pin"])["id"]
    glance.upload(image_id, os.urandom(4 << 20))  # returns once Glance activated it
    activated = time.monotonic()
    daemon.wait_until(lambda: daemon.target_state(image_id) == WARM, 10, "reported warm")
    record_timing("image.activate -> reported warm", time.monotonic() - activated)
    view = daemon.image(image_id)
    assert view is not None and view["pinned"] and view["why"] == "pinned"
    assert view["targets"][0]["actions"] == []  # Glance's own snapshot needed nothing


def test_unprotected_snapshot_is_protected_and_cinder_can_then_clone(
        stack: Stack, daemon: Daemon, glance: Glance, cinder: CinderNotifier) -> None:
    data = os.urandom(2 << 20)
    image_id = register_unprotected(stack, glance, data)
    clone = f"volume-{uuid.uuid4()}"
    with ceph.connect(stack.ceph_conf(), "cinder", stack.keyring("cinder")) as as_cinder:
        # Before warmer: a v1 clone of the unprotected snapshot fails, which
        # is what puts Cinder's volume in error.
        with pytest.raises(rbd.InvalidArgument):
            ceph.clone_v1(as_cinder, "images", image_id, "snap", "volumes", clone)

        demand(cinder, glance, image_id)
        daemon.wait_until(lambda: daemon.target_state(image_id) == WARM, 15, "warm")
        view = daemon.image(image_id)
        assert view is not None and view["targets"][0]["actions"] == ["protected_snapshot"]
        assert ceph.snapshot_state(as_cinder, "images", image_id) == "protected"

        started = time.monotonic()
        ceph.clone_v1(as_cinder, "images", image_id, "snap", "volumes", clone)
        record_timing("v1 clone as client.cinder (first in the pool)",
                      time.monotonic() - started)
        started = time.monotonic()
        ceph.clone_v1(as_cinder, "images", image_id, "snap", "volumes", clone + "-2")
        record_timing("v1 clone as client.cinder (next one)", time.monotonic() - started)
        ceph.remove(as_cinder, "volumes", clone + "-2")
        try:
            assert ceph.read_all(as_cinder, "volumes", clone) == data
            # Invariant 2: warmer changed no data on Glance's image.
            assert ceph.read_all(as_cinder, "images", image_id) == data
        finally:
            ceph.remove(as_cinder, "volumes", clone)
    assert daemon.metric("warmer_changes_total", action="protected_snapshot") >= 1


def test_snapshot_missing_entirely_is_created_then_protected(
        stack: Stack, daemon: Daemon, glance: Glance, cinder: CinderNotifier) -> None:
    image_id = str(uuid.uuid4())
    data = os.urandom(1 << 20)
    with ceph.connect(stack.ceph_conf(), "glance", stack.keyring("glance")) as cluster:
        ceph.write_image(cluster, "images", image_id, data, protect=True)
        glance.create("snapless", id=image_id)
        glance.add_location(image_id, f"rbd://{stack.fsid()}/images/{image_id}/snap", "central")
        # Someone removed the snapshot behind Glance's back.
        with cluster.open_ioctx("images") as ioctx, rbd.Image(ioctx, image_id) as img:
            img.unprotect_snap("snap")
            img.remove_snap("snap")
        demand(cinder, glance, image_id)
        daemon.wait_until(lambda: daemon.target_state(image_id) == WARM, 15, "warm")
        assert ceph.snapshot_state(cluster, "images", image_id) == "protected"
        assert ceph.read_all(cluster, "images", image_id, "snap") == data
    view = daemon.image(image_id)
    assert view is not None
    assert view["targets"][0]["actions"] == ["created_snapshot", "protected_snapshot"]


def test_qcow2_image_is_not_eligible_and_left_alone(
        stack: Stack, daemon: Daemon, glance: Glance, cinder: CinderNotifier,
        tmp_path: Any) -> None:
    path = tmp_path / "disk.qcow2"
    subprocess.run(["qemu-img", "create", "-q", "-f", "qcow2", str(path), "64M"], check=True)
    image_id = glance.create("qcow2-image", disk_format="qcow2")["id"]
    glance.upload(image_id, path.read_bytes())
    ops_before = daemon.metric("warmer_ceph_operations_total",
                               operation="ensure_protected_snapshot")
    demand(cinder, glance, image_id, n=5)
    view = daemon.wait_until(lambda: (v := daemon.image(image_id)) and v["score"] >= 4.9 and v,
                             10, "all demand counted")
    assert not view["wanted"] and view["why"] == "disk_format_not_raw"
    assert daemon.target_state(image_id) == ("not_wanted", "disk_format_not_raw")
    assert daemon.metric("warmer_ceph_operations_total",
                         operation="ensure_protected_snapshot") == ops_before


def test_duplicated_and_reordered_notifications_are_idempotent(
        stack: Stack, daemon: Daemon, glance: Glance, cinder: CinderNotifier,
        glance_bus: GlanceNotifier) -> None:
    image_id = register_unprotected(stack, glance, os.urandom(1 << 20))
    image = glance.get(image_id)
    volume_id = str(uuid.uuid4())
    for _ in range(5):  # the same volume.create.end, redelivered
        cinder.volume_created(image, volume_id=volume_id)
    daemon.wait_until(lambda: daemon.metric("warmer_notifications_total",
                                            event_type="volume.create.end",
                                            outcome="duplicate") >= 4, 10, "duplicates seen")
    view = daemon.image(image_id)
    assert view is not None and view["score"] == pytest.approx(1.0, abs=0.01)
    assert not view["wanted"]

    # Reordered Glance updates: the pin (newer) is replayed before the view
    # from before it (older), and both are duplicated.
    before_pin = glance.get(image_id)
    time.sleep(1.1)  # Glance's updated_at has one-second resolution
    glance.add_tag(image_id, "warmer-pin")
    after_pin = glance.get(image_id)
    assert after_pin["updated_at"] > before_pin["updated_at"]
    daemon.wait_until(lambda: (daemon.image(image_id) or {}).get("pinned"), 10, "pinned")
    for payload in (after_pin, before_pin, after_pin, before_pin):
        glance_bus.send("image.update", payload)
    daemon.wait_until(lambda: daemon.metric("warmer_notifications_total",
                                            event_type="image.update",
                                            outcome="stale") >= 2, 10, "older views seen")
    view = daemon.image(image_id)
    assert view is not None and view["pinned"] and view["score"] == pytest.approx(1.0, abs=0.01)
    daemon.wait_until(lambda: daemon.target_state(image_id) == WARM, 15, "warm")


def _publish_raw(stack: Stack, body: bytes | str, routing_key: str = "notifications.info",
                 exchange: str = "openstack") -> None:
    with kombu.Connection(stack["TRANSPORT_URL"].replace("rabbit://", "amqp://")) as conn:
        producer = conn.Producer()
        producer.publish(body, exchange=exchange, routing_key=routing_key,
                         content_type="application/json", content_encoding="utf-8",
                         retry=True)


def _envelope(message: Any) -> str:
    return json.dumps({"oslo.version": "2.0", "oslo.message": json.dumps(message)})


def _queue_depths(stack: Stack, pool: str) -> list[tuple[str, int, int]]:
    env = {**os.environ, "HOME": stack["RABBITMQ_HOME"],
           "ERL_EPMD_PORT": stack["RABBITMQ_EPMD_PORT"]}
    out = subprocess.run(["/usr/lib/rabbitmq/bin/rabbitmqctl", "-n", stack["RABBITMQ_NODENAME"],
                          "list_queues", "-q", "name", "messages_ready",
                          "messages_unacknowledged"],
                         env=env, capture_output=True, text=True, check=True).stdout
    rows = [line.split() for line in out.splitlines() if line.strip()]
    return [(r[0], int(r[1]), int(r[2])) for r in rows if pool in r[0]]


def test_malformed_messages_are_dropped_without_ceph_calls_or_blocking(
        stack: Stack, daemon: Daemon, glance: Glance, cinder: CinderNotifier) -> None:
    def counted(outcome: str) -> float:
        return daemon.metric("warmer_notifications_total", outcome=outcome)

    def ceph_work() -> float:
        return sum(daemon.metric("warmer_ceph_operations_total", operation=op)
                   for op in ("ensure_protected_snapshot", "check_snapshot_readable"))

    daemon.wait_until(lambda: all(r == u == 0 for _, r, u in _queue_depths(stack, daemon.pool)),
                      20, "queue drained before the test")
    malformed_before, ignored_before, ceph_before = (counted("malformed"), counted("ignored"),
                                                     ceph_work())
    base = {"message_id": str(uuid.uuid4()), "publisher_id": "volume.h@b#p",
            "priority": "INFO", "timestamp": "2026-11-25 10:00:00.000000"}
    bad: list[bytes | str] = [
        _envelope(["not", "an", "object"]),                          # breaks oslo's dispatch
        _envelope({**base, "event_type": "volume.create.end",
                   "payload": {"volume_id": 5}}),                    # wrong type
        _envelope({**base, "event_type": "volume.create.end",
                   "payload": {"volume_id": "v", "glance_metadata": "img"}}),
        _envelope({**base, "event_type": "image.update", "payload": {"status": "active"}}),
        _envelope({**base, "event_type": "image_volume_cache.miss", "payload": []}),
        _envelope({**base, "event_type": "image.update",
                   "payload": {"id": "x", "status": "active",
                               "properties": {"blob": "y" * (2 << 20)}}}),  # huge
    ]
    bad += [json.dumps({"not": "an oslo envelope"}),  # no priority
            "{this is not json"]                        # rejected by oslo's driver
    for body in bad:
        _publish_raw(stack, body)
    _publish_raw(stack, _envelope({**base, "event_type": "compute.instance.create.end",
                                   "payload": {}}))

    daemon.wait_until(lambda: counted("malformed") - malformed_before == len(bad), 15,
                      "every bad message counted as malformed")
    daemon.wait_until(lambda: counted("ignored") - ignored_before == 1, 5, "unknown ignored")
    assert ceph_work() == ceph_before, "bad input reached Ceph"

    # The queue is not blocked: a good message behind the bad ones is handled.
    image_id = register_unprotected(stack, glance, os.urandom(1 << 20))
    demand(cinder, glance, image_id)
    daemon.wait_until(lambda: daemon.target_state(image_id) == WARM, 15, "warm after bad input")
    # Nothing is stuck in a requeue loop.
    daemon.wait_until(lambda: all(r == u == 0 for _, r, u in _queue_depths(stack, daemon.pool)),
                      10, "queue drained")
    assert daemon.proc is not None and daemon.proc.poll() is None


def test_image_delete_is_forgotten_and_glance_removes_its_own_data(
        stack: Stack, daemon: Daemon, glance: Glance) -> None:
    image_id = glance.create("to-delete", tags=["warmer-pin"])["id"]
    glance.upload(image_id, os.urandom(1 << 20))
    # Both targets done (edge holds a copy), so the delete does not race the
    # copy's publication (test_copies covers that race).
    for target in ("central", "edge"):
        daemon.wait_until(lambda t=target: daemon.target_state(image_id, t) == WARM, 30, "warm")
    glance.delete(image_id)
    daemon.wait_until(lambda: daemon.image(image_id) is None, 10, "forgotten")
    with ceph.connect(stack.ceph_conf(), "admin", stack.keyring("admin")) as cluster, \
            cluster.open_ioctx("images") as ioctx:
        assert image_id not in rbd.RBD().list(ioctx)


def test_admin_writes_need_the_socket_or_the_token(daemon: Daemon, glance: Glance) -> None:
    image_id = glance.create("admin-evaluate", tags=["warmer-pin"])["id"]
    glance.upload(image_id, os.urandom(1 << 20))
    daemon.wait_until(lambda: daemon.target_state(image_id) == WARM, 15, "warm")

    def checked_at() -> float:
        view = daemon.image(image_id)
        assert view is not None
        return float(view["targets"][0]["checked_at"])

    evaluate = f"/v1/images/{image_id}/evaluate"
    assert stat.S_IMODE(os.stat(daemon.socket).st_mode) == 0o660
    before = checked_at()

    # TCP: refused without the token, or with a wrong one; reads need it too.
    status, body = daemon.request("POST", evaluate, via="tcp")
    assert status == 403 and "bearer token is required" in body
    assert daemon.request("POST", evaluate, via="tcp", token="guess")[0] == 403
    assert daemon.request("GET", "/v1/images", via="tcp")[0] == 403
    assert daemon.request("GET", "/metrics", via="tcp")[0] == 200
    assert daemon.request("POST", f"/v1/images/volume-{image_id}/evaluate")[0] == 400

    # The metrics listener: no admin API at all.
    for path in ("/v1/images", f"/v1/images/{image_id}"):
        with pytest.raises(urllib.error.HTTPError) as err:
            daemon.get(path, daemon.metrics_url)
        assert err.value.code == 404
    assert "warmer_build_info" in daemon.get("/metrics", daemon.metrics_url)

    # The admin socket: no token, and the daemon evaluates the image again.
    status, body = daemon.request("POST", evaluate, via="socket")
    assert (status, json.loads(body)) == (202, {"queued": image_id})
    daemon.wait_until(lambda: checked_at() > before, 15, "evaluated again")
    assert daemon.request("POST", evaluate, via="tcp", token=daemon.token)[0] == 202

    # The CLI finds the daemon from its config files (the admin socket) ...
    res = daemon.cli("status")
    assert res.returncode == 0 and image_id in res.stdout, res.stderr
    res = daemon.cli("evaluate", image_id)
    assert res.returncode == 0 and json.loads(res.stdout) == {"queued": image_id}, res.stderr
    # ... or TCP with --url, the token still from the config ...
    res = daemon.cli("--url", daemon.url, "show", image_id)
    assert res.returncode == 0 and json.loads(res.stdout)["id"] == image_id, res.stderr
    # ... and without a token, TCP refuses it in one line.
    res = daemon.cli("--url", daemon.url, "evaluate", image_id, config=False)
    assert res.returncode == 1 and res.stdout == ""
    assert res.stderr.startswith("warmer: 403 ") and res.stderr.count("\n") == 1, res.stderr


def test_sigterm_drains_and_exits_zero(stack: Stack) -> None:
    d = Daemon(stack, name="sigterm").start()
    try:
        started = time.monotonic()
        assert d.terminate(timeout=60) == 0
        record_timing("SIGTERM -> exit 0", time.monotonic() - started)
        assert "stopped" in d.log.read_text()
    finally:
        d.kill()


def test_pins_set_while_down_are_found_on_restart(stack: Stack, glance: Glance) -> None:
    d = Daemon(stack, name="restart").start()
    try:
        assert d.terminate() == 0
        image_id = register_unprotected(stack, glance, os.urandom(1 << 20))
        glance.add_tag(image_id, "warmer-pin")  # the notification goes to no one
        d.start()
        d.wait_until(lambda: d.target_state(image_id) == WARM, 20, "warm after restart")
    finally:
        d.kill()


def test_systemd_ready_watchdog_and_stopping(stack: Stack, tmp_path: Any) -> None:
    sock_path = str(tmp_path / "notify")
    with socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM) as sock:
        sock.bind(sock_path)
        sock.settimeout(30)
        d = Daemon(stack, name="notify", env={"NOTIFY_SOCKET": sock_path,
                                              "WATCHDOG_USEC": "1000000"})
        d.start(wait=False)
        try:
            first = sock.recv(4096).decode()
            assert "READY=1" in first
            assert d.get("/readyz")["ready"]  # READY only once bus and Ceph are up
            # Watchdog pings, and STATUS= lines for systemctl status whenever
            # the line changes ("N warm, N copying, N failing, leader").
            pings, statuses = 0, []
            while pings < 3 or not statuses or not statuses[-1].endswith(", leader"):
                datagram = sock.recv(4096).decode()
                if datagram == "WATCHDOG=1":
                    pings += 1
                else:
                    assert datagram.startswith("STATUS="), datagram
                    statuses.append(datagram.removeprefix("STATUS="))
            assert re.fullmatch(r"\d+ warm, \d+ copying, \d+ failing, leader", statuses[-1])
            assert d.terminate() == 0
            rest = []
            while "STOPPING=1" not in "".join(rest):
                rest.append(sock.recv(4096).decode())
        finally:
            d.kill()


def test_sighup_reloads_popularity_options(stack: Stack, glance: Glance,
                                           cinder: CinderNotifier) -> None:
    d = Daemon(stack, name="sighup", overrides="[popularity]\nthreshold = 100\n").start()
    try:
        image_id = glance.create("reload")["id"]
        glance.upload(image_id, os.urandom(1 << 20))
        demand(cinder, glance, image_id)
        d.wait_until(lambda: d.target_state(image_id) == ("not_wanted", "below_threshold"),
                     10, "below the high threshold")
        d.conf.write_text(d.conf.read_text().replace("threshold = 100", "threshold = 1"))
        assert d.proc is not None
        d.proc.send_signal(signal.SIGHUP)
        d.wait_until(lambda: d.target_state(image_id) == WARM, 10, "warm after SIGHUP")
    finally:
        d.kill()
