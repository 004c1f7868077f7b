"""Session fixtures for the real stack (tools/stack) and warmer daemons.

The stack is started once per session, in a short private directory (Ceph's
admin sockets must fit a unix socket path), and stopped by the PIDs it
recorded; the teardown checks that none of them survived.
"""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
import tempfile
import uuid
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

ROOT = Path(__file__).resolve().parents[2]
sys.path.insert(0, str(ROOT / "tools"))

from stackclient import Stack  # noqa: E402
from stackclient.cinder import CinderNotifier, GlanceNotifier  # noqa: E402
from stackclient.daemon import Daemon  # noqa: E402
from stackclient.glance import Glance  # noqa: E402

TIMINGS: dict[str, float] = {}


def record_timing(name: str, seconds: float) -> None:
    TIMINGS[name] = seconds


def pytest_collection_modifyitems(items: list[pytest.Item]) -> None:
    for item in items:
        if "functional" in str(item.fspath):
            item.add_marker(pytest.mark.functional)


def pytest_terminal_summary(terminalreporter: pytest.TerminalReporter) -> None:
    if not TIMINGS:
        return
    terminalreporter.section("measured on the real stack")
    for name, seconds in TIMINGS.items():
        terminalreporter.write_line(f"{name:48} {seconds:9.3f} s")
    out = os.environ.get("WARMER_TIMINGS_FILE")
    if out:
        Path(out).write_text(json.dumps(TIMINGS, indent=2) + "\n")


@pytest.fixture(scope="session")
def stack() -> Iterator[Stack]:
    base = Path(tempfile.mkdtemp(prefix="ws-", dir="/tmp"))
    up = subprocess.run([str(ROOT / "tools" / "stack"), "up", str(base)],
                        capture_output=True, text=True)
    if up.returncode != 0:
        pytest.fail(f"tools/stack up failed:\n{up.stdout}\n{up.stderr}")
    st = Stack.load(base)
    record_timing("stack boot (tools/stack up)", float(st["STACK_BOOT_SECONDS"]))
    pids = [int(line.split()[1]) for line in (base / "pids").read_text().splitlines()]
    yield st
    # Fault tests restart processes: their new PIDs must be stopped too.
    pids += [int(line.split()[1]) for line in (base / "pids").read_text().splitlines()]
    subprocess.run([str(ROOT / "tools" / "stack"), "down", str(base)], check=True,
                   capture_output=True)
    survivors = [p for p in pids if _running(p)]
    assert not survivors, f"tools/stack down left {survivors} running"
    if not os.environ.get("WARMER_KEEP_STACK"):
        shutil.rmtree(base, ignore_errors=True)


def _running(pid: int) -> bool:
    try:
        state = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()[0]
    except OSError:
        return False
    return state != "Z"


@pytest.fixture(scope="session")
def glance(stack: Stack) -> Glance:
    return Glance(stack["GLANCE_URL"])


@pytest.fixture(scope="session")
def cinder(stack: Stack) -> Iterator[CinderNotifier]:
    notifier = CinderNotifier(stack["TRANSPORT_URL"])
    yield notifier
    notifier.close()


@pytest.fixture(scope="session")
def glance_bus(stack: Stack) -> Iterator[GlanceNotifier]:
    notifier = GlanceNotifier(stack["TRANSPORT_URL"])
    yield notifier
    notifier.close()


@pytest.fixture(scope="session")
def cinder_python() -> Path:
    """Python of a virtualenv with cinder from PyPI, for its real RBD driver."""
    out = subprocess.run([str(ROOT / "tools" / "stack"), "cinder-venv", "."],
                         capture_output=True, text=True, check=True).stdout
    return Path(out.strip().splitlines()[-1]) / "bin" / "python"


@pytest.fixture(scope="module")
def daemon(stack: Stack) -> Iterator[Daemon]:
    """One warmer-daemon for a test module, on its own pool queue."""
    d = Daemon(stack).start()
    yield d
    d.kill()


def admin(stack: Stack, cluster: str, *args: str) -> str:
    """``ceph ARGS`` on ``cluster`` as client.admin; its stdout."""
    return subprocess.run(["ceph", "--conf", stack.ceph_conf(cluster), "--name", "client.admin",
                           "--keyring", stack.keyring("admin", cluster), *args],
                          check=True, capture_output=True, text=True).stdout


@pytest.fixture
def make_user(stack: Stack) -> Iterator[Any]:
    """``make_user(cluster, osd_caps, mon_caps="profile rbd")``: a cephx user
    with those caps, whose keyring is where the stack's ceph.conf looks for
    it ($cluster.$name.keyring, :func:`user_keyring`): a Cinder or Glance user
    that connects with its ceph.conf alone. Deleted afterwards."""
    made: list[tuple[str, str, Path]] = []

    def make(cluster: str, osd_caps: str, mon_caps: str = "profile rbd") -> str:
        name = f"doctor-{uuid.uuid4().hex[:8]}"
        keyring = user_keyring(stack, cluster, name)
        keyring.write_text(admin(stack, cluster, "auth", "get-or-create", f"client.{name}",
                                 "mon", mon_caps, "osd", osd_caps))
        made.append((cluster, name, keyring))
        return name

    yield make
    for cluster, name, keyring in made:
        admin(stack, cluster, "auth", "del", f"client.{name}")
        keyring.unlink()


def user_keyring(stack: Stack, cluster: str, name: str) -> Path:
    return Path(stack.ceph_conf(cluster)).parent / f"ceph.client.{name}.keyring"
