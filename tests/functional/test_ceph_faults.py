"""Ceph faults on the real stack: one daemon of the edge cluster stops and
comes back while a real warmer-daemon works.

Every failure must be bounded and isolated: no call waits past its op
timeout, /readyz says which cluster is down, the admin API keeps
answering, the other target keeps working, nothing half-done is ever
published, and warmer recovers by itself once the cluster is back. Each
test runs its own daemon with short op timeouts, and puts the stack back
as it found it (the stack is shared with the other modules).
"""

from __future__ import annotations

import hashlib
import json
import os
import subprocess
import threading
import time
import urllib.error
import urllib.request
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
import rbd
from stackclient import Stack, ceph, faults
from stackclient.cinder import CinderNotifier
from stackclient.daemon import Daemon
from stackclient.glance import Glance

from tests.functional.conftest import record_timing
from tests.functional.test_daemon import WARM, demand

# The pool warmer copies into, in every cluster. One constant, so that moving
# copies into the Glance store pool ("images") is a one-line change here.
COPY_POOL = "images"  # the Glance store's pool, where warmer keeps copies
MiB = 1 << 20
ROOT = Path(__file__).resolve().parents[2]
PROBE_INTERVAL = 1


def overrides(op_timeout: int, **edge: Any) -> str:
    """Short op timeouts for both targets, fast probes and retries."""
    timeouts = (f"connect_timeout = {op_timeout}\n"
                f"rados_osd_op_timeout = {op_timeout}\n"
                f"rados_mon_op_timeout = {op_timeout}\n")
    extra = "".join(f"{k} = {v}\n" for k, v in edge.items())
    return (f"[warming]\nceph_probe_interval = {PROBE_INTERVAL}\nretry_delay = 1\n"
            f"[central]\n{timeouts}[edge]\n{timeouts}{extra}")


class Watch:
    """Polls the daemon's admin API and /readyz from a thread, the way a
    load balancer and an operator would, and keeps what it saw."""

    def __init__(self, daemon: Daemon) -> None:
        self.daemon = daemon
        self.slowest = 0.0
        self.failures: list[str] = []
        self.ready: list[tuple[float, dict[str, bool]]] = []
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, daemon=True)

    def __enter__(self) -> Watch:
        self._thread.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self._stop.set()
        self._thread.join(10)

    def _get(self, path: str) -> Any:
        started = time.monotonic()
        try:
            req = urllib.request.Request(self.daemon.url + path)
            if path.startswith("/v1/") and self.daemon.token:
                req.add_header("Authorization", f"Bearer {self.daemon.token}")
            with urllib.request.urlopen(req, timeout=5) as resp:
                body = json.loads(resp.read())
        except urllib.error.HTTPError as exc:  # /readyz answers 503 when not ready
            body = json.loads(exc.read())
        except OSError as exc:
            self.failures.append(f"{path}: {exc!r}")
            body = None
        self.slowest = max(self.slowest, time.monotonic() - started)
        return body

    def _run(self) -> None:
        while not self._stop.is_set():
            self._get("/v1/images")
            ready = self._get("/readyz")
            if ready is not None:
                self.ready.append((time.monotonic(), ready["checks"]))
            self._stop.wait(0.1)

    def first(self, since: float, check: str, value: bool) -> float | None:
        """Seconds from ``since`` until /readyz first showed ``check`` as ``value``."""
        for at, checks in self.ready:
            if at >= since and checks.get(check) is value:
                return at - since
        return None


@pytest.fixture
def edge_back(stack: Stack) -> Iterator[None]:
    """Edge's mon and OSD run again after the test, whatever happened."""
    with faults.restored(stack, "ceph-edge-mon", "ceph-edge-osd"):
        yield


def alive(pid: int) -> bool:
    """Runs (a zombie waiting for its reaper does not)."""
    try:
        return Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()[0] != "Z"
    except OSError:
        return False


def edge_url(stack: Stack, image_id: str) -> str:
    return f"rbd://{stack.fsid('edge')}/{COPY_POOL}/{image_id}/snap"


def locations(glance: Glance, image_id: str) -> list[str]:
    return [loc["url"] for loc in glance.get(image_id)["locations"]]


def edge_images(stack: Stack) -> list[str]:
    with ceph.connect(stack.ceph_conf("edge"), "admin", stack.keyring("admin", "edge")) as c, \
            c.open_ioctx(COPY_POOL) as ioctx:
        return list(rbd.RBD().list(ioctx))


def assert_cloneable_copy_on_edge(stack: Stack, glance: Glance, image_id: str) -> None:
    """What warmer published on edge is complete: protected, and its data
    hashes to what Glance recorded (read as Cinder's user)."""
    image = glance.get(image_id)
    assert edge_url(stack, image_id) in locations(glance, image_id)
    with ceph.connect(stack.ceph_conf("edge"), "cinder", stack.keyring("cinder", "edge")) as c:
        assert ceph.snapshot_state(c, COPY_POOL, image_id) == "protected"
        data = ceph.read_all(c, COPY_POOL, image_id, "snap")
    assert hashlib.new(image["os_hash_algo"], data).hexdigest() == image["os_hash_value"]
    leftovers = [n for n in edge_images(stack) if n.startswith("warmer-tmp.")]
    assert not leftovers, f"temporary images left on edge: {leftovers}"


def test_stack_stops_and_starts_one_ceph_daemon_by_its_recorded_pid(
        stack: Stack, edge_back: None) -> None:
    """``tools/stack stop|start DIR NAME``: the process stops by its recorded
    PID, comes back with the very same command line and its data, and its
    new PID and start time are what DIR/pids records."""
    name = "ceph-edge-osd"
    old_pid, old_start = faults.recorded(stack, name)
    argv = json.loads((stack.dir / "cmds" / f"{name}.json").read_text())["argv"]
    assert Path(f"/proc/{old_pid}/cmdline").read_bytes().split(b"\0")[:-1] == \
        [a.encode() for a in argv]
    marker = f"fault-marker-{os.getpid()}"
    with ceph.connect(stack.ceph_conf("edge"), "admin", stack.keyring("admin", "edge")) as c, \
            c.open_ioctx(COPY_POOL) as ioctx:
        ioctx.write_full(marker, b"kept")

    cli = [str(ROOT / "tools" / "stack")]
    started = time.monotonic()
    subprocess.run([*cli, "stop", str(stack.dir), name], check=True, capture_output=True)
    record_timing("tools/stack stop ceph-edge-osd", time.monotonic() - started)
    assert not faults.running(stack, name)
    assert not alive(old_pid)
    assert faults.recorded(stack, name) == (old_pid, old_start)  # recorded, as stopped
    status = subprocess.run([*cli, "status", str(stack.dir)], capture_output=True,
                            text=True).stdout
    assert f"{name} " in status and "gone" in status.split(name, 1)[1].splitlines()[0]

    started = time.monotonic()
    subprocess.run([*cli, "start", str(stack.dir), name], check=True, capture_output=True)
    record_timing("tools/stack start ceph-edge-osd (serving)", time.monotonic() - started)
    new_pid, new_start = faults.recorded(stack, name)
    assert new_pid != old_pid and faults.running(stack, name)
    stat = Path(f"/proc/{new_pid}/stat").read_text().rsplit(")", 1)[1].split()
    assert stat[19] == new_start
    assert Path(f"/proc/{new_pid}/cmdline").read_bytes().split(b"\0")[:-1] == \
        [a.encode() for a in argv]
    with ceph.connect(stack.ceph_conf("edge"), "admin", stack.keyring("admin", "edge")) as c, \
            c.open_ioctx(COPY_POOL) as ioctx:
        assert ioctx.read(marker) == b"kept"  # the memstore OSD kept its data
        ioctx.remove_object(marker)
    names = [line.split()[0] for line in (stack.dir / "pids").read_text().splitlines()]
    assert names.count(name) == 1


def test_pool_quota_is_set_and_cleared_as_admin(stack: Stack) -> None:
    def quota() -> int:
        with ceph.connect(stack.ceph_conf("edge"), "admin",
                          stack.keyring("admin", "edge")) as c:
            ret, out, err = c.mon_command(json.dumps(
                {"prefix": "osd pool ls", "detail": "detail", "format": "json"}), b"")
            assert ret == 0, err
        return next(int(p["quota_max_bytes"]) for p in json.loads(out)
                    if p["pool_name"] == COPY_POOL)
    faults.set_pool_quota(stack, "edge", COPY_POOL, 64 * MiB)
    try:
        assert quota() == 64 * MiB
    finally:
        faults.set_pool_quota(stack, "edge", COPY_POOL, 0)
    assert quota() == 0


MON_TIMEOUT = 5


def test_a_stopped_mon_is_bounded_isolated_and_recovered_without_a_restart(
        stack: Stack, glance: Glance, cinder: CinderNotifier, edge_back: None) -> None:
    daemon = Daemon(stack, overrides=overrides(MON_TIMEOUT)).start()
    try:
        data = os.urandom(8 * MiB)
        image_id = glance.create("mon-fault")["id"]
        glance.upload(image_id, data)
        with Watch(daemon) as watch:
            stopped_at = time.monotonic()
            faults.stop(stack, "ceph-edge-mon")

            # /readyz names the cluster within its op timeout and a probe.
            daemon.wait_until(lambda: watch.first(stopped_at, "ceph:edge", False) is not None,
                              MON_TIMEOUT + PROBE_INTERVAL + 10, "/readyz: ceph:edge down")
            to_down = watch.first(stopped_at, "ceph:edge", False)
            assert to_down is not None
            record_timing("edge mon stopped -> /readyz ceph:edge false", to_down)
            assert to_down <= MON_TIMEOUT + PROBE_INTERVAL + 3
            checks = watch.ready[-1][1]
            assert checks["bus"] and checks["ceph:central"], checks

            # Demand meanwhile: central warms it; edge fails it, bounded.
            demanded = time.monotonic()
            demand(cinder, glance, image_id)
            daemon.wait_until(lambda: daemon.target_state(image_id, "central") == WARM, 20,
                              "warm on central while edge's mon is down")
            record_timing("demand -> warm on central (edge mon down)",
                          time.monotonic() - demanded)
            daemon.wait_until(lambda: daemon.target_state(image_id, "edge") ==
                              ("error", "ceph_unavailable"), 3 * MON_TIMEOUT + 10,
                              "edge reported ceph_unavailable")
            record_timing("demand -> edge ceph_unavailable (mon down)",
                          time.monotonic() - demanded)
            assert edge_url(stack, image_id) not in locations(glance, image_id)

            restarted = time.monotonic()
            record_timing("edge mon restart (tools/stack start)",
                          faults.start(stack, "ceph-edge-mon"))
            daemon.wait_until(lambda: watch.first(restarted, "ceph:edge", True) is not None,
                              MON_TIMEOUT + 15, "/readyz: ceph:edge up again")
            record_timing("edge mon restarted -> /readyz true",
                          watch.first(restarted, "ceph:edge", True) or 0.0)
            daemon.wait_until(lambda: daemon.target_state(image_id, "edge") == WARM, 45,
                              "warm on edge after the mon came back")
            record_timing("edge mon restarted -> image warm on edge",
                          time.monotonic() - restarted)
        record_timing("slowest admin API answer (edge mon down)", watch.slowest)
        assert not watch.failures, watch.failures[:5]
        assert watch.slowest < 1.0
        assert daemon.proc is not None and daemon.proc.poll() is None  # never restarted
        assert daemon.get("/readyz")["ready"] is True
        assert_cloneable_copy_on_edge(stack, glance, image_id)
    finally:
        daemon.kill()


OSD_TIMEOUT = 3


def test_an_osd_stopped_mid_copy_publishes_nothing_half_done_and_recovers(
        stack: Stack, glance: Glance, cinder: CinderNotifier, edge_back: None) -> None:
    # One chunk in flight at a time: the copy lasts long enough to stop the
    # OSD in its middle.
    # The copy lease taken by the connection the OSD's stop killed is never
    # broken (another live process may hold it under this name): the copy
    # resumes once it ran out, so keep it short here.
    daemon = Daemon(stack, overrides=overrides(OSD_TIMEOUT, copy_window=1,
                                               copy_lock_seconds=15)).start()
    try:
        size = 192 * MiB
        image_id = glance.create("osd-fault")["id"]
        glance.upload(image_id, os.urandom(size))
        other_id = glance.create("osd-fault-central")["id"]
        glance.upload(other_id, os.urandom(2 * MiB))
        faults.prepare_stop(stack, "ceph-edge-osd")

        demand(cinder, glance, image_id)
        progress = daemon.wait_until(lambda: ((daemon.image(image_id) or {}).get(
            "copying", {}).get("edge") or {}).get("done_bytes"), 30, "copy to edge started",
            interval=0.01)
        with Watch(daemon) as watch:
            stopped_at = time.monotonic()
            faults.stop(stack, "ceph-edge-osd", prepared=True)
            copying = (daemon.image(image_id) or {}).get("copying", {}).get("edge")
            assert progress < size and copying is not None, "the copy ended before the stop"
            daemon.wait_until(lambda: watch.first(stopped_at, "ceph:edge", False) is not None,
                              OSD_TIMEOUT + PROBE_INTERVAL + 10, "/readyz: ceph:edge down")
            to_down = watch.first(stopped_at, "ceph:edge", False) or 0.0
            record_timing("edge OSD stopped -> /readyz ceph:edge false", to_down)
            assert to_down <= OSD_TIMEOUT + PROBE_INTERVAL + 3

            # Central is not affected: another image warms there meanwhile.
            demanded = time.monotonic()
            demand(cinder, glance, other_id)
            daemon.wait_until(lambda: daemon.target_state(other_id, "central") == WARM, 20,
                              "warm on central while edge's OSD is down")
            record_timing("demand -> warm on central (edge OSD down)",
                          time.monotonic() - demanded)

            # The copy fails cleanly: an error for edge (Ceph unavailable),
            # nothing published. Bounded: a write, the image's close (about
            # three op timeouts) and the temporary image's removal.
            daemon.wait_until(lambda: daemon.target_state(image_id, "edge") ==
                              ("error", "ceph_unavailable"), 10 * OSD_TIMEOUT + 10,
                              "the copy failed")
            record_timing("edge OSD stopped mid-copy -> copy failed",
                          time.monotonic() - stopped_at)
            assert not (daemon.image(image_id) or {}).get("copying")
            assert edge_url(stack, image_id) not in locations(glance, image_id)
            assert daemon.target_state(image_id, "central") == WARM

            restarted = time.monotonic()
            record_timing("edge OSD restart (tools/stack start, serving)",
                          faults.start(stack, "ceph-edge-osd"))
            daemon.wait_until(lambda: daemon.target_state(image_id, "edge") == WARM, 90,
                              "warm on edge after the OSD came back")
            record_timing("edge OSD restarted -> 192 MiB warm on edge",
                          time.monotonic() - restarted)
            daemon.wait_until(lambda: watch.first(restarted, "ceph:edge", True) is not None,
                              OSD_TIMEOUT + 15, "/readyz: ceph:edge up again")
        record_timing("slowest admin API answer (edge OSD down)", watch.slowest)
        assert not watch.failures, watch.failures[:5]
        assert watch.slowest < 1.0
        assert daemon.proc is not None and daemon.proc.poll() is None
        assert_cloneable_copy_on_edge(stack, glance, image_id)
        # Only this copy's last attempt ever published: one edge location.
        assert locations(glance, image_id).count(edge_url(stack, image_id)) == 1
    finally:
        daemon.kill()
