"""The README's demo, step by step, on the real local stack."""

from __future__ import annotations

import argparse
import os
import subprocess
import sys
import tempfile
import time
import uuid
import warnings
from pathlib import Path

warnings.filterwarnings("ignore", message=r"(?s).*Eventlet is deprecated")

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT / "tools"))

import rbd  # noqa: E402
from stackclient import Stack, ceph  # noqa: E402
from stackclient.cinder import CinderNotifier  # noqa: E402
from stackclient.daemon import Daemon  # noqa: E402
from stackclient.glance import Glance  # noqa: E402
from stacklib import proc  # noqa: E402

MiB = 1 << 20


def say(text: str) -> None:
    print(f"\n\033[1m== {text}\033[0m", flush=True)


def sparse_raw(size: int) -> bytes:
    """A RAW disk: some data at the start, zeroes after (like a fresh OS image)."""
    return os.urandom(size // 8) + bytes(size - size // 8)


def main() -> int:
    parser = argparse.ArgumentParser(description="warmer demo on the local stack")
    parser.add_argument("--dir", type=Path, default=ROOT / ".stack" / "demo")
    parser.add_argument("--keep", action="store_true",
                        help="leave the stack and the daemon running at the end")
    args = parser.parse_args()
    base = args.dir.resolve()

    if (base / proc.PIDS_FILE).exists():
        subprocess.run([str(ROOT / "tools/stack"), "down", str(base)], check=True)
    say(f"Starting the local stack in {base} (RabbitMQ, Ceph mon+OSD with cephx, Glance)")
    subprocess.run([str(ROOT / "tools/stack"), "up", str(base)], check=True)
    stack = Stack.load(base)
    glance, cinder = Glance(stack["GLANCE_URL"]), CinderNotifier(stack["TRANSPORT_URL"])

    say("Starting warmer-daemon")
    daemon = Daemon(stack, pool="warmer", name="demo", port=9797)
    daemon.start()
    assert daemon.proc is not None
    proc.record(base, "warmer-daemon", daemon.proc.pid)
    print(f"ready: {daemon.get('/readyz')}  log: {daemon.log}")

    try:
        say("1. A RAW image uploaded through Glance's API (lands as images/<id>@snap)")
        raw = glance.create("demo-ubuntu-raw")
        glance.upload(raw["id"], sparse_raw(16 * MiB))
        print(f"   {raw['id']}  status={glance.get(raw['id'])['status']}")

        say("2. A RAW image registered by location, whose RBD snapshot was never protected")
        reg_id = str(uuid.uuid4())
        with ceph.connect(stack.ceph_conf(), "glance", stack.keyring("glance")) as c:
            ceph.write_image(c, "images", reg_id, sparse_raw(8 * MiB), protect=False)
        glance.create("demo-registered-raw", id=reg_id)
        glance.add_location(reg_id, f"rbd://{stack.fsid()}/images/{reg_id}/snap", "central")
        with ceph.connect(stack.ceph_conf(), "cinder", stack.keyring("cinder")) as c:
            try:
                ceph.clone_v1(c, "images", reg_id, "snap", "volumes", f"volume-{uuid.uuid4()}")
                print("   unexpected: clone worked before warmer")
            except rbd.InvalidArgument as exc:
                print(f"   {reg_id}: Cinder's clone fails now: {exc}")
                print("   (Cinder would put the volume in 'error', not fall back to a download)")

        say("3. A QCOW2 image (Cinder's RBD driver cannot clone it)")
        qcow = glance.create("demo-qcow2", disk_format="qcow2")
        with tempfile.TemporaryDirectory() as tmp:
            path = Path(tmp, "disk.qcow2")
            subprocess.run(["qemu-img", "create", "-q", "-f", "qcow2", str(path), "64M"],
                           check=True)
            glance.upload(qcow["id"], path.read_bytes())
        print(f"   {qcow['id']}")

        say("4. Demand: Cinder volume.create.end notifications (a real oslo.messaging "
            "Notifier, exchange 'openstack')")
        for image_id, n in ((raw["id"], 3), (reg_id, 3), (qcow["id"], 4)):
            image = glance.get(image_id)
            for _ in range(n):
                cinder.volume_created(image)
            print(f"   {n} volumes from {image['name']}")

        say("5. What warmer did")
        ids = (raw["id"], reg_id, qcow["id"])
        daemon.wait_until(lambda: all((daemon.target_state(i) or ("", ""))[0]
                                      in ("warm", "not_wanted") for i in ids), 30,
                          "all evaluated")
        subprocess.run([sys.executable, "-m", "warmer.cmd.cli", "--url", daemon.url, "status"],
                       check=True)
        for image_id in ids:
            view = daemon.image(image_id) or {}
            target = view["targets"][0]
            actions = ", ".join(target["actions"]) or "nothing to change"
            print(f"   {view['name']}: {target['state']} ({target['reason']}); "
                  f"warmer did: {actions}")
        with ceph.connect(stack.ceph_conf(), "cinder", stack.keyring("cinder")) as c:
            print(f"   images/{reg_id}@snap is now "
                  f"{ceph.snapshot_state(c, 'images', reg_id)}")
            clone = f"volume-{uuid.uuid4()}"
            ceph.clone_v1(c, "images", reg_id, "snap", "volumes", clone)  # first in the pool
            clone2 = f"volume-{uuid.uuid4()}"
            started = time.monotonic()
            ceph.clone_v1(c, "images", raw["id"], "snap", "volumes", clone2)
            print(f"   a v1 clone as client.cinder took {1000 * (time.monotonic() - started):.1f}"
                  " ms (what boot-from-volume costs when the image is warm)")

        say("Key metrics (curl http://127.0.0.1:9797/metrics)")
        for line in daemon.get("/metrics").splitlines():
            if line.startswith(("warmer_images{", "warmer_snapshot_repairs_total",
                                "warmer_notifications_total{event_type=\"volume",
                                "warmer_dependency_up", "warmer_tracked_images")):
                print("   " + line)
    finally:
        cinder.close()
        if not args.keep:
            say("Stopping everything (tools/stack down)")
            subprocess.run([str(ROOT / "tools/stack"), "down", str(base)], check=True)
    if args.keep:
        say("Left running")
        print(f"   warmer: .venv/bin/warmer --url {daemon.url} status")
        print(f"   stack env: source {base}/env")
        print(f"   stop it all: tools/stack down {base}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
