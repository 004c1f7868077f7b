"""The operator's commands on the real stack, through the ``warmer`` CLI run
as a subprocess with the daemon's own config files: warm, pin and unpin
(across a fleet of two daemons, and a restart), evict (and its refusal when
a Cinder clone exists), status with progress bars, and one-line errors."""

from __future__ import annotations

import contextlib
import io
import os
import re
import subprocess
import sys
import time
import uuid
from collections.abc import Iterator
from pathlib import Path

import pytest
from stackclient import Stack, ceph
from stackclient.cinder import CinderNotifier
from stackclient.daemon import Daemon, free_port
from stackclient.glance import Glance

from tests.functional.conftest import record_timing
from tests.functional.test_copies import edge_images, edge_url, locations
from tests.functional.test_daemon import WARM, demand
from warmer.cmd import cli

MiB = 1 << 20
FAST = "[state]\nflush_interval = 0.5\nrefresh_interval = 0.5\n"
BAR = re.compile(r"edge=copying \[[#.]{24}\] +\d+%  [\d.]+/[\d.]+ MiB")


@pytest.fixture(scope="module")
def ops(stack: Stack) -> Iterator[Daemon]:
    """A daemon that copies into edge only, one chunk at a time (slow
    enough to watch a copy of a big image)."""
    d = Daemon(stack, name="ops", overrides=(
        "[central]\ncopy_images = false\n[edge]\ncopy_window = 1\n"
        "[warming]\nretry_delay = 1\n")).start()
    yield d
    d.kill()


def one_line(result: subprocess.CompletedProcess[str]) -> str:
    lines = result.stderr.strip().splitlines()
    assert len(lines) == 1, result.stderr
    return lines[0]


def upload(glance: Glance, name: str, size: int) -> str:
    image_id: str = glance.create(name)["id"]
    glance.upload(image_id, os.urandom(size))
    return image_id


def test_warm_makes_a_cold_image_warm_on_edge_and_waits_for_it(
        stack: Stack, ops: Daemon, glance: Glance) -> None:
    image_id = upload(glance, "ops-warm", 8 * MiB)
    ops.wait_until(lambda: ops.target_state(image_id), 30, "the upload seen")
    assert ops.image(image_id)["score"] == 0  # type: ignore[index]  # no demand at all
    started = time.monotonic()
    result = ops.cli("warm", image_id, "--target", "edge", "--wait")
    record_timing("warmer warm --wait (8 MiB, cold -> warm on edge)",
                  time.monotonic() - started)
    assert result.returncode == 0, result.stderr
    assert result.stdout.strip().endswith(f"{image_id} is warm in edge")
    assert ops.target_state(image_id, "edge") == WARM
    assert locations(glance, image_id)[edge_url(stack, image_id)] == "edge"


def test_status_shows_a_slow_copy_as_a_progress_bar(
        stack: Stack, ops: Daemon, glance: Glance) -> None:
    # Big enough (dense, copy_window = 1) for a copy of a few seconds: the
    # CLI subprocesses must catch it under way, on a loaded CI machine too.
    image_id = upload(glance, "ops-big", 512 * MiB)
    exe = Path(sys.executable).parent / "warmer"
    waiting = subprocess.Popen([str(exe), *ops.config_args, "warm", image_id, "--target",
                                "edge", "--wait"], stdout=subprocess.PIPE,
                               stderr=subprocess.PIPE, text=True)
    try:
        def bar() -> str | None:
            # In this process: a subprocess would spend most of the copy
            # starting Python.
            out = io.StringIO()
            with contextlib.redirect_stdout(out):
                code = cli.main([*ops.config_args, "status"])
            assert code == 0, out.getvalue()
            line = next((x for x in out.getvalue().splitlines() if x.startswith(image_id)), "")
            return out.getvalue() if BAR.search(line) else None
        table = ops.wait_until(bar, 60, "a progress bar in warmer status", interval=0.02)
        assert re.search(r"^-- \d+ warm, [1-9]\d* copying, \d+ failing, leader$", table,
                         re.MULTILINE), table
        out, err = waiting.communicate(timeout=300)
    finally:
        waiting.kill()
    assert waiting.returncode == 0, err
    bars = [x for x in out.splitlines() if x.startswith("edge: copying [")]
    assert bars, out  # --wait showed the copy's progress too
    assert out.strip().endswith(f"{image_id} is warm in edge")


def test_evict_removes_the_copy_holds_it_out_and_refuses_while_a_clone_exists(
        stack: Stack, ops: Daemon, glance: Glance, cinder: CinderNotifier) -> None:
    image_id = upload(glance, "ops-evict", 4 * MiB)
    url = edge_url(stack, image_id)
    # Wanted by its demand (and copied for it).
    demand(cinder, glance, image_id, n=3)
    ops.wait_until(lambda: ops.target_state(image_id, "edge") == WARM, 60, "warm on edge")

    # A Cinder volume cloned from the copy: children win, one clear line.
    volume = f"volume-{uuid.uuid4()}"
    with ceph.connect(stack.ceph_conf("edge"), "cinder", stack.keyring("cinder", "edge")) as c:
        ceph.clone_v1(c, "images", image_id, "snap", "volumes", volume)
        refused = ops.cli("evict", image_id, "--target", "edge")
        assert refused.returncode == 1
        assert "has clones" in one_line(refused) and "children always win" in refused.stderr
        assert image_id in edge_images(stack) and url in locations(glance, image_id)
        ceph.remove(c, "volumes", volume)

    evicted = ops.cli("evict", image_id, "--target", "edge")
    assert evicted.returncode == 0, evicted.stderr
    assert url not in locations(glance, image_id)
    assert image_id not in edge_images(stack)
    assert ops.target_state(image_id, "edge") == ("not_wanted", "evicted_by_operator")

    # Still wanted by its score, but held out: evaluating it copies nothing.
    assert ops.cli("evaluate", image_id).returncode == 0
    time.sleep(2.0)
    assert ops.target_state(image_id, "edge") == ("not_wanted", "evicted_by_operator")
    assert image_id not in edge_images(stack)
    # New demand lifts the hold.
    demand(cinder, glance, image_id, n=1)
    ops.wait_until(lambda: ops.target_state(image_id, "edge") == WARM, 60, "copied again")


def test_errors_are_one_line_and_a_non_zero_exit(stack: Stack, ops: Daemon, glance: Glance,
                                                 tmp_path: Path) -> None:
    unknown = str(uuid.uuid4())
    for args, code, text in [
            (("warm", unknown), 1, f"404 Glance has no image {unknown}"),
            (("pin", unknown), 1, f"404 Glance has no image {unknown}"),
            (("warm", "not-an-image-id"), 1, "400 invalid image id"),
            (("evict", unknown, "--target", "nowhere"), 1, "400 unknown target 'nowhere'"),
            (("unpin", unknown), 1, "is not pinned through warmer")]:
        result = ops.cli(*args)
        assert result.returncode == code, (args, result)
        line = one_line(result)
        assert line.startswith("warmer: ") and text in line, (args, line)
        assert result.stdout == ""
    disk = tmp_path / "disk.qcow2"
    subprocess.run(["qemu-img", "create", "-q", "-f", "qcow2", str(disk), "8M"], check=True)
    qcow2 = glance.create("ops-qcow2", disk_format="qcow2")["id"]
    glance.upload(qcow2, disk.read_bytes())
    result = ops.cli("warm", qcow2, "--wait")
    assert result.returncode == 1 and "not eligible: disk_format_not_raw" in one_line(result)

    gone = stack.dir / "ops-nobody.conf"
    gone.write_text(f"[http]\nadmin_socket = {stack.dir}/nobody.sock\nport = {free_port()}\n")
    result = ops.cli("--config-file", str(gone), "warm", unknown, config=False)
    assert result.returncode == 2 and "cannot reach the daemon" in one_line(result)


def test_a_pin_reaches_every_daemon_of_the_fleet_and_survives_a_restart(
        stack: Stack, glance: Glance) -> None:
    pool = f"warmer-pins-{uuid.uuid4().hex[:6]}"
    common = "[central]\ncopy_images = false\n[warming]\nretry_delay = 1\n" + FAST
    a = Daemon(stack, pool=pool, name="pin-a", overrides=f"[DEFAULT]\nhost = pin-a\n{common}")
    b = Daemon(stack, pool=pool, name="pin-b", overrides=f"[DEFAULT]\nhost = pin-b\n{common}")
    a.start()
    b.start()
    try:
        image_id = upload(glance, "ops-pin", 4 * MiB)
        pinned = a.cli("pin", image_id, "--reason", "golden image")
        assert pinned.returncode == 0, pinned.stderr
        assert pinned.stdout.startswith(f"pinned {image_id} (fleet-wide, by uid ")
        started = time.monotonic()
        b.wait_until(lambda: (b.image(image_id) or {}).get("pinned"), 30, "b sees the pin")
        record_timing("pin on one daemon -> seen by another (refresh 0.5 s)",
                      time.monotonic() - started)
        view = b.image(image_id)
        assert view is not None and view["pin"]["reason"] == "golden image"
        # Pinned: wanted everywhere with no demand at all, and copied to edge.
        a.wait_until(lambda: WARM in (a.target_state(image_id, "edge"),
                                      b.target_state(image_id, "edge")), 60, "warm on edge")
        refused = b.cli("evict", image_id, "--target", "edge")
        assert refused.returncode == 1 and "unpin it first" in one_line(refused)

        b.kill()  # a restart reads the pins before it is ready
        b.start()
        view = b.image(image_id)
        assert view is not None and view["pinned"] and view["why"] == "pinned", view

        unpinned = b.cli("unpin", image_id)
        assert unpinned.returncode == 0, unpinned.stderr
        a.wait_until(lambda: not (a.image(image_id) or {}).get("pinned"), 30,
                     "a sees the unpin")
    finally:
        a.kill()
        b.kill()
