"""The local stack itself: real Glance on real Ceph, on loopback only."""

from __future__ import annotations

import os
import re
import subprocess
import threading
import uuid
from typing import Any

import oslo_messaging
from oslo_config import cfg
from stackclient import Stack, ceph
from stackclient.glance import Glance


def test_everything_listens_on_loopback_only(stack: Stack) -> None:
    pids = {line.split()[1] for line in (stack.dir / "pids").read_text().splitlines()}
    out = subprocess.run(["ss", "-ltnpH"], capture_output=True, text=True, check=True).stdout
    ours = [line for line in out.splitlines()
            if any(f"pid={pid}," in line for pid in pids)]
    assert ours, "no listening socket found for the recorded PIDs"
    for line in ours:
        local = line.split()[3]
        assert re.match(r"^(127\.\d+\.\d+\.\d+|\[::1\]):\d+$", local), line
    ports = {int(line.split()[3].rsplit(":", 1)[1]) for line in ours}
    assert not ports & {5672, 4369, 25672, 6789, 3300, 9292}, "a default port is in use"


def test_glance_upload_lands_as_protected_snapshot_and_is_announced(
        stack: Stack, glance: Glance) -> None:
    received: list[tuple[str, Any]] = []
    activated = threading.Event()

    class Endpoint:
        def info(self, ctxt: Any, publisher_id: str, event_type: str, payload: Any,
                 metadata: Any) -> None:
            received.append((event_type, payload))
            if event_type == "image.activate":
                activated.set()

    conf = cfg.ConfigOpts()
    conf([])
    transport = oslo_messaging.get_notification_transport(conf, url=stack["TRANSPORT_URL"])
    listener = oslo_messaging.get_notification_listener(
        transport, [oslo_messaging.Target(exchange="glance", topic="notifications")],
        [Endpoint()], executor="threading", pool=f"observer-{uuid.uuid4().hex[:6]}")
    listener.start()
    try:
        image_id = glance.create("stack-check")["id"]
        glance.upload(image_id, os.urandom(1 << 20))
        assert activated.wait(30), f"no image.activate on the bus; saw {received}"
    finally:
        listener.stop()
        listener.wait()
        transport.cleanup()
    seen = {event_type for event_type, payload in received
            if isinstance(payload, dict) and payload.get("id") == image_id}
    assert {"image.create", "image.upload", "image.activate"} <= seen
    image = glance.get(image_id)
    assert image["status"] == "active"
    assert image["locations"][0]["url"] == f"rbd://{stack.fsid()}/images/{image_id}/snap"
    assert image["locations"][0]["metadata"]["store"] == "central"
    with ceph.connect(stack.ceph_conf(), "admin", stack.keyring("admin")) as cluster:
        assert ceph.snapshot_state(cluster, "images", image_id) == "protected"
