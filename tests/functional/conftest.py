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
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import pytest

ROOT = Path(__file__).resolve().parents[2]
sys.path.insert(0, str(ROOT / "tools"))

from stackclient import Stack, faults  # noqa: E402
from stackclient.cinder import CinderNotifier, GlanceNotifier  # noqa: E402
from stackclient.daemon import Daemon  # noqa: E402
from stackclient.glance import Glance  # noqa: E402
from stacklib import proc  # noqa: E402

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


@pytest.fixture
def glance_variant(stack: Stack) -> Iterator[Callable[..., str]]:
    """``glance_variant(name, *settings, single_store=None)``: the URL of a
    second glance-api on the stack, configured otherwise (``tools/stack
    start-glance``: ``SECTION.OPTION=VALUE`` settings over the stack's
    glance-api.conf, or ``single_store`` as its only store), beside the
    stack's own. However the test ends, and whether or not its start
    succeeded, each one is stopped (``tools/stack stop-glance``, by its
    recorded PID), every variant even when stopping one fails, and none of
    its process group (uwsgi's master and workers) may survive."""
    started: list[str] = []

    def start(name: str, *settings: str, single_store: str | None = None) -> str:
        argv = [str(ROOT / "tools" / "stack"), "start-glance", str(stack.dir), name,
                *(a for s in settings for a in ("--set", s))]
        if single_store:
            argv += ["--single-store", single_store]
        started.append(name)  # before it runs: a start that fails may have launched it
        out = subprocess.run(argv, capture_output=True, text=True)
        if out.returncode != 0:
            pytest.fail(f"tools/stack start-glance failed:\n{out.stdout}\n{out.stderr}")
        return out.stdout.strip().splitlines()[-1]

    yield start
    failures = []
    for name in started:
        try:
            _stop_glance_variant(stack, name)
        except Exception as exc:  # the next variants are stopped all the same
            failures.append(f"glance-api-{name}: {exc}")
    assert not failures, failures


def _stop_glance_variant(stack: Stack, name: str) -> None:
    """``tools/stack stop-glance``, then a check that nothing of the process
    group of its recorded uwsgi master runs: neither what ran before the
    stop (by PID and start time) nor anything still in that group."""
    try:
        pid, _ = faults.recorded(stack, f"glance-api-{name}")
    except KeyError:
        pid = None  # not recorded: never launched, or stopped already
    before = proc.group_members(pid) if pid is not None else []
    out = subprocess.run([str(ROOT / "tools" / "stack"), "stop-glance", str(stack.dir), name],
                         capture_output=True, text=True)
    assert out.returncode == 0, f"stop-glance failed:\n{out.stdout}\n{out.stderr}"
    survivors = {p for p, _ in proc.survivors(before)}
    if pid is not None:
        survivors |= {p for p, _ in proc.group_members(pid)}
    assert not survivors, f"glance-api-{name}: {survivors} of its process group still run"


class ScratchPools:
    """RBD pools of one test's own, and what it maps them to (CRUSH),
    removed afterwards if the test did not: each pool, then its CRUSH rule
    (a rule in use cannot be removed), then its CRUSH root, every step run
    whatever the one before it did (a pool delete that fails must not keep
    the next pool's rule and root from being tried)."""

    def __init__(self, stack: Stack) -> None:
        self.stack = stack
        # cluster, pool, and the ceph commands that remove what it was given
        self.made: list[tuple[str, str, list[list[str]]]] = []

    def __call__(self, cluster: str) -> str:
        """A new RBD pool in ``cluster``."""
        pool = f"doctor-{uuid.uuid4().hex[:8]}"
        admin(self.stack, cluster, "osd", "pool", "create", pool, "8")
        self.made.append((cluster, pool, []))
        admin(self.stack, cluster, "osd", "pool", "application", "enable", pool, "rbd")
        return pool

    def unserved(self, cluster: str, pool: str) -> None:
        """Map ``pool`` (one of these) to a CRUSH root of its own, which
        holds no OSD: no OSD serves the pool any more, the rest of the
        cluster is untouched. Each is removed afterwards, after the pool."""
        [undo] = [u for c, p, u in self.made if (c, p) == (cluster, pool)]
        root, rule = f"{pool}-root", f"{pool}-rule"
        admin(self.stack, cluster, "osd", "crush", "add-bucket", root, "root")
        undo.append(["osd", "crush", "rm", root])
        admin(self.stack, cluster, "osd", "crush", "rule", "create-replicated", rule, root,
              "osd")
        undo.insert(0, ["osd", "crush", "rule", "rm", rule])  # before the root it names
        admin(self.stack, cluster, "osd", "pool", "set", pool, "crush_rule", rule)

    def remove(self) -> None:
        failures = []
        for cluster, pool, undo in self.made:
            steps = [["osd", "pool", "delete", pool, pool, "--yes-i-really-really-mean-it"],
                     *undo]
            for step in steps:
                try:
                    if step[:3] != ["osd", "pool", "delete"] or pool in json.loads(admin(
                            self.stack, cluster, "osd", "pool", "ls", "--format", "json")):
                        admin(self.stack, cluster, *step)
                except subprocess.CalledProcessError as exc:
                    failures.append(f"{cluster}: ceph {' '.join(step)}: {exc.stderr}")
        assert not failures, failures


@pytest.fixture
def scratch_pool(stack: Stack) -> Iterator[ScratchPools]:
    """``scratch_pool(cluster)``: a new RBD pool of the test's own in that
    cluster (:class:`ScratchPools`), removed afterwards, with what it holds
    and what it was mapped to, if the test did not."""
    pools = ScratchPools(stack)
    yield pools
    pools.remove()
