"""The README's demo, step by step, on the real local stack."""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import tempfile
import uuid
import warnings
from pathlib import Path
from typing import Any

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


def cinder_clone(cinder_python: Path, stack: Stack, image_id: str) -> dict[str, Any]:
    out = subprocess.run([str(cinder_python), str(ROOT / "tools/cinder_clone.py"),
                          "--ceph-conf", stack.ceph_conf("edge"),
                          "--glance-url", stack["GLANCE_URL"], image_id],
                         check=True, capture_output=True, text=True).stdout
    result: dict[str, Any] = json.loads(out.strip().splitlines()[-1])
    return result


def main() -> int:
    parser = argparse.ArgumentParser(description="warmer demo on the local stack")
    parser.add_argument("--dir", type=Path, default=ROOT / ".stack" / "demo")
    parser.add_argument("--keep", action="store_true",
                        help="leave the stack and the daemon running at the end")
    args = parser.parse_args()
    base = args.dir.resolve()

    if (base / proc.PIDS_FILE).exists():
        subprocess.run([str(ROOT / "tools/stack"), "down", str(base)], check=True)
    say(f"Starting the local stack in {base}: RabbitMQ, two Ceph clusters ('central' and "
        "'edge', mon+OSD with cephx), Glance with both as RBD stores plus a file store")
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
        say("1. A RAW image uploaded through Glance's API to its default store, the "
            "'central' Ceph cluster (it lands as images/<id>@snap, protected)")
        raw = glance.create("demo-ubuntu-raw")
        glance.upload(raw["id"], sparse_raw(64 * MiB))
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

        say("4. A RAW image in Glance's file store (not RBD at all)")
        filed = glance.create("demo-file-raw")
        glance.upload(filed["id"], sparse_raw(16 * MiB), store=stack["GLANCE_FILE_STORE"])
        print(f"   {filed['id']}  locations: "
              f"{[loc['url'] for loc in glance.get(filed['id'])['locations']]}")

        say("5. Before warmer: Cinder's own RBD driver on the 'edge' cluster (cinder from "
            "PyPI, RBDDriver.clone_image, as client.cinder)")
        cinder_python = Path(subprocess.run(
            [str(ROOT / "tools/stack"), "cinder-venv", "."], check=True, capture_output=True,
            text=True).stdout.strip().splitlines()[-1]) / "bin" / "python"
        before = cinder_clone(cinder_python, stack, raw["id"])
        print(f"   clone_image({raw['name']}) -> cloned={before['cloned']}: every volume on "
              "edge would be a full download")

        say("6. Demand: Cinder volume.create.end notifications (a real oslo.messaging "
            "Notifier, exchange 'openstack')")
        for image_id, n in ((raw["id"], 3), (reg_id, 3), (qcow["id"], 4), (filed["id"], 3)):
            image = glance.get(image_id)
            for _ in range(n):
                cinder.volume_created(image)
            print(f"   {n} volumes from {image['name']}")

        say("7. What warmer did")
        ids = (raw["id"], reg_id, qcow["id"], filed["id"])
        daemon.wait_until(lambda: all(
            len((v := daemon.image(i) or {}).get("targets", [])) == 2 and
            all(t["state"] in ("warm", "not_wanted", "cold") for t in v["targets"])
            for i in ids) and daemon.target_state(raw["id"], "edge") == ("warm", "cloneable"),
            60, "all evaluated")
        status = daemon.cli("status")  # over the admin socket, found from the config
        print(status.stdout, end="")
        if status.returncode:
            raise SystemExit(f"warmer status failed: {status.stderr.strip()}")
        with ceph.connect(stack.ceph_conf(), "cinder", stack.keyring("cinder")) as c:
            print(f"\n   images/{reg_id}@snap is now {ceph.snapshot_state(c, 'images', reg_id)}"
                  " (warmer protected it; it changed nothing else)")
        for image_id in (raw["id"], filed["id"]):
            image = glance.get(image_id)
            print(f"   {image['name']} locations in Glance now:")
            for loc in image["locations"]:
                print(f"     {loc['metadata'].get('store', '?'):8} {loc['url']}")
        after = cinder_clone(cinder_python, stack, raw["id"])
        print(f"   Cinder's driver on edge now: clone_image -> cloned={after['cloned']} in "
              f"{1000 * after['seconds']:.0f} ms (clone + resize to 1 GiB)")
        written = daemon.metric("warmer_copy_bytes_total", kind="written")
        skipped = (daemon.metric("warmer_copy_bytes_total", kind="hole")
                   + daemon.metric("warmer_copy_bytes_total", kind="zero"))
        print(f"   copies so far: {written / MiB:.0f} MiB written, {skipped / MiB:.0f} MiB "
              "skipped (holes and zeroes), every copy verified against Glance's sha512")

        say("8. Why an image does (not) clone: warmer doctor (Cinder's _is_cloneable, "
            "replayed; read-only)")
        for image_id in (qcow["id"], raw["id"]):
            doctor = daemon.cli("doctor", image_id)
            print(doctor.stdout, end="")
            print(f"   (exit {doctor.returncode}: "
                  f"{'blocked somewhere' if doctor.returncode == 1 else 'clones everywhere'})")

        say("9. The value: volumes created from the images now, as Cinder reports them")
        for _ in range(3):
            cinder.volume_created(glance.get(raw["id"]))
        daemon.wait_until(lambda: daemon.metric("warmer_volume_creates_total",
                                                image_state="warm") >= 3, 20, "counted")
        for line in daemon.get("/metrics").splitlines():
            if line.startswith("warmer_volume_creates_total{"):
                print("   " + line)
        print("   (warm / (warm + cold) is the hit ratio Cinder sees; 'unknown' are volumes "
              "of images warmer had not looked at yet)")

        say("Key metrics (curl http://127.0.0.1:9797/metrics)")
        for line in daemon.get("/metrics").splitlines():
            if line.startswith(("warmer_images{", "warmer_changes_total",
                                "warmer_copy_bytes_total",
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
        print(f"   warmer: .venv/bin/warmer {' '.join(daemon.config_args)} status")
        print(f"   stack env: source {base}/env")
        print(f"   stop it all: tools/stack down {base}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
