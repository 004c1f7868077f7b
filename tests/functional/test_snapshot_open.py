"""warmer's read-only open of a snapshot survives what librbd 16.2's own
does not (``docs/ceph-bugs.md``): thousands of readability checks
(``CephClient.check_snapshot_readable``, the daemon's code, two at a time
on one client as the daemon runs them) in one process, as Cinder's user,
on the real stack.

Opened the way librbd offers (``rbd.Image(..., snapshot=S,
read_only=True)``), the same number of opens killed the process in most
runs here (not all: it is memory corruption, docs/ceph-bugs.md), so this
test catches a return of that open with a good chance, not for certain;
the unit tests' fake librbd refuses it outright. The control is left out
of the suite (it tests librbd, and a fixed librbd would fail it):
``tools/snapshot_open_soak.py --librbd-open``."""

from __future__ import annotations

import os
import subprocess
import sys

from stackclient import Stack
from stackclient.glance import Glance

from tests.functional.conftest import ROOT

CYCLES = 4000


def test_thousands_of_readability_checks_do_not_crash(stack: Stack, glance: Glance) -> None:
    image_id = glance.create("snapshot-open-soak")["id"]
    try:
        glance.upload(image_id, os.urandom(4096))  # central: images/<id>@snap, protected
        soak = subprocess.run(
            [sys.executable, str(ROOT / "tools" / "snapshot_open_soak.py"),
             "--conf", stack["CEPH_CENTRAL_CONF"], "--user", "cinder",
             "--keyring", stack["CEPH_CENTRAL_KEYRING_CINDER"],
             "--pool", "images", "--image", image_id, "--cycles", str(CYCLES)],
            capture_output=True, text=True, timeout=600)
        assert soak.returncode == 0, (soak.returncode, soak.stdout, soak.stderr[-2000:])
        assert soak.stdout.strip() == f"{CYCLES} cycles"  # and every check: cloneable
    finally:
        glance.delete(image_id)
