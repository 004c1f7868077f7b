"""warmer installed by tools/install and supervised by a real systemd.

A systemd (PID 1 of a private PID and mount namespace) runs the shipped
systemd/warmer.service with every hardening option, against the local
stack, the way a controller would:

- ``tools/install --root ROOT`` installs into a private tree (ROOT/opt/warmer,
  ROOT/etc/warmer, ROOT/etc/systemd/system, the ``warmer`` user in
  ROOT/etc/passwd, a copy of the host's); inside the namespace, overlays
  show ROOT/etc over /etc and ROOT/opt over /opt, so the unit, its paths and
  the user are exactly those of an install on /;
- /etc/ceph holds each cluster's ceph.conf and warmer's and Cinder's
  keyrings, root:warmer 0640, as an operator would set them up;
- a drop-in in /run changes only what the test needs: a short WatchdogSec,
  and DefaultDependencies=no, so that starting warmer does not pull in
  sysinit.target (udev, sysctl, tmpfiles, remounts: a boot of the real
  machine). As a safety net those targets are masked at runtime, so anything
  that still pulled them in would fail instead of booting the host.

Safety: private tmpfs on /tmp, /run and /var/log, an overlay on /var/lib
and systemd started with ``--unit`` of a target that wants only journald
(never the machine's default target). The namespace's systemd is SIGKILLed
by its recorded PID at the end, which ends every process in the namespace,
and the empty cgroups it made are removed.
"""

from __future__ import annotations

import json
import os
import re
import shutil
import signal
import subprocess
import tempfile
import time
import urllib.error
import urllib.request
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import kombu
import pytest
from stackclient import Stack
from stackclient.cinder import CinderNotifier
from stackclient.daemon import free_port
from stackclient.glance import Glance

from tests.functional.conftest import record_timing

ROOT_DIR = Path(__file__).resolve().parents[2]
SYSTEMD = Path("/lib/systemd/systemd")
WATCHDOG_SEC = 3
UNIT_RESTART_SEC = 5  # RestartSec= of systemd/warmer.service, unchanged here
# Units that would boot the machine if something pulled them in.
MASKED = ["sysinit.target", "basic.target", "network.target", "network-online.target",
          "timers.target", "paths.target", "sockets.target", "multi-user.target",
          "graphical.target", "rescue.target", "emergency.target", "local-fs.target",
          "remote-fs.target"]


def _why_not() -> str | None:
    if os.geteuid() != 0:
        return "needs root (unshare, mounts, a systemd as PID 1 of a namespace)"
    for tool in ("unshare", "nsenter", "systemd-sysusers"):
        if not shutil.which(tool):
            return f"{tool} is missing"
    if not SYSTEMD.exists():
        return f"{SYSTEMD} is missing (apt-get install systemd)"
    if "overlay" not in Path("/proc/filesystems").read_text():
        return "the kernel has no overlayfs"
    probe = subprocess.run(["unshare", "--fork", "--pid", "--mount", "--mount-proc", "true"],
                           capture_output=True, text=True)
    if probe.returncode != 0:
        return f"unshare --pid --mount is not allowed here: {probe.stderr.strip()}"
    return None


WHY_NOT = _why_not()
pytestmark = pytest.mark.skipif(WHY_NOT is not None, reason=str(WHY_NOT))


NS_SCRIPT = """#!/bin/sh
# PID 1 of the test's namespace, then systemd. Never exec systemd without
# the private mounts and --unit: it would boot the machine.
set -eu
mount -t tmpfs -o mode=1777 tmpfs /tmp
mount -t tmpfs -o mode=0755 tmpfs /run
mount -t tmpfs -o mode=0755 tmpfs /var/log
mount -t overlay overlay -o lowerdir=/etc,upperdir={root}/etc,workdir={p}/work/etc /etc
mount -t overlay overlay -o lowerdir=/opt,upperdir={root}/opt,workdir={p}/work/opt /opt
mount -t overlay overlay -o lowerdir=/var/lib,upperdir={p}/var-lib,workdir={p}/work/var-lib \\
    /var/lib
mkdir -p /run/systemd/system
cp -r {p}/units/. /run/systemd/system/
for unit in {masked}; do ln -s /dev/null /run/systemd/system/$unit; done
exec {systemd} --system --unit=warmer-test.target
"""

TARGET = """[Unit]
Description=warmer's functional test: journald only
DefaultDependencies=no
Wants=systemd-journald.service
"""

DROP_IN = f"""# Only what the test needs; the hardening and everything else is the unit's.
[Unit]
DefaultDependencies=no
[Service]
WatchdogSec={WATCHDOG_SEC}
# How the main process ended, for the test (systemd forgets a stopped unit).
ExecStopPost=/bin/sh -c 'echo "warmer-test: $$EXIT_CODE $$EXIT_STATUS $$SERVICE_RESULT"'
"""


class Namespace:
    """The namespace's systemd, and commands run inside it."""

    def __init__(self, base: Path, root: Path) -> None:
        self.base, self.root = base, root
        self.unshare: subprocess.Popen[bytes] | None = None
        self.pid = 0  # systemd's PID on the host

    def start(self) -> None:
        for d in ("work/etc", "work/opt", "work/var-lib", "var-lib", "units/warmer.service.d"):
            (self.base / d).mkdir(parents=True, exist_ok=True)
        (self.base / "units" / "warmer-test.target").write_text(TARGET)
        (self.base / "units" / "warmer.service.d" / "test.conf").write_text(DROP_IN)
        script = self.base / "ns.sh"
        script.write_text(NS_SCRIPT.format(root=self.root, p=self.base, masked=" ".join(MASKED),
                                           systemd=SYSTEMD))
        script.chmod(0o755)
        with open(self.base / "ns.log", "wb") as log:
            self.unshare = subprocess.Popen(
                ["unshare", "--fork", "--pid", "--mount", "--mount-proc", str(script)],
                stdout=log, stderr=subprocess.STDOUT, stdin=subprocess.DEVNULL)
        deadline = time.monotonic() + 30
        while time.monotonic() < deadline:
            children = Path(f"/proc/{self.unshare.pid}/task/{self.unshare.pid}/children")
            try:
                kids = children.read_text().split()
            except OSError:
                kids = []
            if kids:
                self.pid = int(kids[0])
                if (Path(f"/proc/{self.pid}/comm").read_text().strip() == "systemd"
                        and self.run("systemctl", "is-active", "warmer-test.target",
                                     check=False).stdout.strip() == "active"):
                    return
            if self.unshare.poll() is not None:
                break
            time.sleep(0.1)
        raise RuntimeError(f"the namespace's systemd did not start: "
                           f"{(self.base / 'ns.log').read_text()[-3000:]}")

    def run(self, *args: str, check: bool = True,
            input: str | None = None) -> subprocess.CompletedProcess[str]:
        res = subprocess.run(["nsenter", "-t", str(self.pid), "-p", "-m", *args],
                             capture_output=True, text=True, timeout=60, input=input)
        if check and res.returncode != 0:
            raise AssertionError(f"{' '.join(args)}: exit {res.returncode}\n{res.stdout}"
                                 f"\n{res.stderr}\n{self.journal_tail()}")
        return res

    def show(self, *props: str) -> dict[str, str]:
        out = self.run("systemctl", "show", "warmer.service",
                       *(f"--property={p}" for p in props)).stdout
        return dict(line.split("=", 1) for line in out.splitlines() if "=" in line)

    def journal(self, unit: str = "warmer.service") -> list[dict[str, Any]]:
        out = self.run("journalctl", "--no-pager", "-o", "json", "-u", unit,
                       check=False).stdout
        return [json.loads(line) for line in out.splitlines() if line.startswith("{")]

    def journal_tail(self, lines: int = 40) -> str:
        if not self.pid:
            return ""
        return subprocess.run(["nsenter", "-t", str(self.pid), "-p", "-m", "journalctl",
                               "--no-pager", "-n", str(lines), "-u", "warmer.service"],
                              capture_output=True, text=True, timeout=30).stdout

    def write(self, path: str, text: str) -> None:
        """Write a file as seen inside the namespace (through the overlays)."""
        Path(f"/proc/{self.pid}/root{path}").write_text(text)

    def kill(self) -> None:
        if self.unshare is None:
            return
        if self.pid and _alive(self.pid):
            os.kill(self.pid, signal.SIGKILL)  # ends every process of the namespace
        self.unshare.wait(30)


def _alive(pid: int) -> bool:
    try:
        state = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()[0]
    except OSError:
        return False
    return state != "Z"


def _cgroups() -> set[Path]:
    found: set[Path] = set()
    for hierarchy in Path("/sys/fs/cgroup").iterdir():
        for name in ("system.slice", "init.scope"):
            top = hierarchy / name
            if top.is_dir():
                found.add(top)
                found.update(p for p in top.rglob("*") if p.is_dir())
    return found


def _ceph_files(stack: Stack, etc: Path, gid: int) -> None:
    """A controller's /etc/ceph: each cluster's ceph.conf with what a client
    needs, warmer's admin socket in its RuntimeDirectory, and keyrings
    root:warmer 0640."""
    (etc / "ceph").mkdir(exist_ok=True)
    for cluster in ("central", "edge"):
        src = stack.dir / f"ceph-{cluster}"
        conf = dict(line.split(" = ", 1) for line in (src / "ceph.conf").read_text().splitlines()
                    if " = " in line)
        (etc / "ceph" / f"{cluster}.conf").write_text(
            f"[global]\nfsid = {conf['fsid']}\nmon host = {conf['mon host']}\n"
            "auth client required = cephx\nms bind ipv6 = false\n"
            # What systemd/warmer.service recommends for an admin socket.
            "[client.warmer]\n"
            "admin socket = /run/warmer/$cluster-$name.$pid.$cctid.asok\n")
        for user in ("warmer", "cinder"):
            keyring = etc / "ceph" / f"{cluster}.client.{user}.keyring"
            shutil.copyfile(src / f"ceph.client.{user}.keyring", keyring)
            os.chown(keyring, 0, gid)
            keyring.chmod(0o640)


def _config(stack: Stack, port: int, metrics_port: int, pool: str, threshold: float) -> str:
    stack_conf = {k.strip(): v.strip() for k, _, v in
                  (line.partition("=") for line in
                   Path(stack["WARMER_STACK_CONF"]).read_text().splitlines())
                  if k.strip() in ("transport_url", "endpoint")}
    targets = "".join(
        f"[{c}]\nceph_conf = /etc/ceph/{c}.conf\nkeyring = /etc/ceph/{c}.client.warmer.keyring\n"
        f"cinder_user = cinder\ncinder_keyring = /etc/ceph/{c}.client.cinder.keyring\n"
        f"glance_store = {c}\npool = volumes\n" for c in ("central", "edge"))
    return (f"[DEFAULT]\ntransport_url = {stack_conf['transport_url']}\n"
            "enabled_targets = central,edge\nuse_journal = true\nuse_stderr = false\n"
            f"[bus]\npool = {pool}\n[glance]\nendpoint = {stack_conf['endpoint']}\n"
            f"[http]\nport = {port}\nmetrics_port = {metrics_port}\n"
            f"[popularity]\nthreshold = {threshold}\ntop_k = 0\n"
            "ignored_download_users = stack-admin\n"
            f"[warming]\nretry_delay = 2\n{targets}")


def _gid(etc: Path, name: str) -> int:
    for line in (etc / "group").read_text().splitlines():
        fields = line.split(":")
        if fields[0] == name:
            return int(fields[2])
    raise KeyError(name)


class Warmer:
    """The installed daemon's HTTP surface, from the host (shared network)."""

    def __init__(self, port: int, metrics_port: int) -> None:
        self.url = f"http://127.0.0.1:{port}"
        self.metrics_url = f"http://127.0.0.1:{metrics_port}"

    def get(self, path: str, base: str | None = None) -> Any:
        with urllib.request.urlopen((base or self.url) + path, timeout=10) as resp:
            body = resp.read()
        return body.decode() if path == "/metrics" else json.loads(body)

    def ready(self) -> bool:
        try:
            return bool(self.get("/readyz", self.metrics_url)["ready"])
        except (OSError, ValueError):
            return False

    def image(self, image_id: str) -> dict[str, Any] | None:
        try:
            view: dict[str, Any] = self.get(f"/v1/images/{image_id}")
            return view
        except urllib.error.HTTPError as exc:
            if exc.code == 404:
                return None
            raise
        except OSError:
            return None

    def states(self, image_id: str) -> dict[str, tuple[str, str]]:
        view = self.image(image_id) or {}
        return {r["target"]: (r["state"], r["reason"]) for r in view.get("targets", [])}


def wait_until(check: Any, timeout: float, what: str, ns: Namespace) -> Any:
    deadline = time.monotonic() + timeout
    while True:
        result = check()
        if result:
            return result
        if time.monotonic() > deadline:
            raise TimeoutError(f"{what}: not after {timeout}s; warmer's journal:\n"
                               f"{ns.journal_tail()}")
        time.sleep(0.05)


@pytest.fixture(scope="module")
def env(stack: Stack) -> Iterator[dict[str, Any]]:
    base = Path(tempfile.mkdtemp(prefix="warmer-systemd-", dir="/var/tmp"))
    root = base / "root"
    (root / "etc").mkdir(parents=True)
    (root / "opt").mkdir()
    # The namespace sees ROOT/etc/passwd as /etc/passwd: start from the host's.
    for name in ("passwd", "group"):
        shutil.copyfile(f"/etc/{name}", root / "etc" / name)
    started = time.monotonic()
    subprocess.run([str(ROOT_DIR / "tools" / "install"), "--root", str(root)], check=True,
                   capture_output=True, text=True)
    record_timing("tools/install --root (fresh virtualenv)", time.monotonic() - started)
    gid = _gid(root / "etc", "warmer")
    _ceph_files(stack, root / "etc", gid)
    port, metrics_port = free_port(), free_port()
    pool = f"warmer-systemd-{os.getpid()}"
    conf = root / "etc" / "warmer" / "warmer.conf"
    conf.write_text(_config(stack, port, metrics_port, pool, threshold=50.0))
    cgroups_before = _cgroups()
    ns = Namespace(base, root)
    try:
        ns.start()
        yield {"ns": ns, "root": root, "base": base, "stack": stack, "pool": pool,
               "port": port, "metrics_port": metrics_port,
               "warmer": Warmer(port, metrics_port), "gid": gid}
    finally:
        ns.kill()
        for cg in sorted(_cgroups() - cgroups_before, key=lambda p: len(p.parts),
                         reverse=True):
            try:
                cg.rmdir()
            except OSError:
                pass
        if not os.environ.get("WARMER_KEEP_STACK"):
            shutil.rmtree(base, ignore_errors=True)


def _uid(root: Path, name: str) -> int:
    for line in (root / "etc" / "passwd").read_text().splitlines():
        fields = line.split(":")
        if fields[0] == name:
            return int(fields[2])
    raise KeyError(name)


def test_start_is_active_only_after_ready_as_the_warmer_user(env: dict[str, Any]) -> None:
    ns: Namespace = env["ns"]
    warmer: Warmer = env["warmer"]
    started = time.monotonic()
    ns.run("systemctl", "start", "--no-block", "warmer.service")
    seen = set()
    while True:
        state = ns.show("ActiveState")["ActiveState"]
        seen.add(state)
        if state == "active":
            break
        assert state in ("inactive", "activating"), ns.journal_tail()
        assert time.monotonic() - started < 60, ns.journal_tail()
        time.sleep(0.02)
    elapsed = time.monotonic() - started
    record_timing("systemctl start -> active (READY=1)", elapsed)
    assert "activating" in seen, f"never seen activating: {seen}"
    # READY=1 comes after the bus and both clusters: /readyz says so at once.
    assert warmer.ready()
    props = ns.show("MainPID", "StatusText", "User", "Type", "NotifyAccess")
    # STATUS= says READY's "consuming notifications", then, within a few
    # seconds, the daemon's summary ("0 warm, 0 copying, 0 failing, leader").
    summary = re.compile(r"\d+ warm, \d+ copying, \d+ failing, "
                         r"(leader|follower of \S+|no leader seen)")
    assert props["StatusText"] == "consuming notifications" or \
        summary.fullmatch(props["StatusText"]), props["StatusText"]
    deadline = time.monotonic() + 15
    while not summary.fullmatch(ns.show("StatusText")["StatusText"]):
        assert time.monotonic() < deadline, ns.show("StatusText")
        time.sleep(0.2)
    # The journal: Ceph up, then consuming, then systemd's "Started".
    entries = ns.journal()

    def when(text: str) -> int:
        return min(int(e["__MONOTONIC_TIMESTAMP"]) for e in entries
                   if text in str(e.get("MESSAGE", "")))
    started_at = when("Started warmer.service")
    assert when("target central: Ceph is up") < started_at
    assert when("target edge: Ceph is up") < started_at
    assert when("consuming notifications") < started_at
    # The main process runs as the warmer user, with no capabilities.
    fields = dict(line.split(":", 1) for line in
                  ns.run("cat", f"/proc/{props['MainPID']}/status").stdout.splitlines())
    uid = _uid(env["root"], "warmer")
    assert fields["Uid"].split() == [str(uid)] * 4
    assert fields["Gid"].split()[0] == str(env["gid"])
    assert int(fields["CapEff"].strip(), 16) == 0
    assert fields["NoNewPrivs"].strip() == "1"
    assert fields["Seccomp"].strip() == "2"


def test_the_admin_socket_answers_the_cli_of_a_warmer_group_member(
        env: dict[str, Any]) -> None:
    ns: Namespace = env["ns"]
    # /run/warmer is the unit's RuntimeDirectory; the CLI finds the socket
    # from /etc/warmer/warmer.conf, as an operator's would.
    mode = ns.run("stat", "-c", "%U:%G %a", "/run/warmer", "/run/warmer/admin.sock").stdout
    assert mode.split("\n")[:2] == ["warmer:warmer 750", "warmer:warmer 660"], mode
    res = ns.run("runuser", "-u", "warmer", "--", "/opt/warmer/bin/warmer", "status")
    assert res.stdout.startswith("IMAGE"), res.stdout
    # librados' own admin sockets work under the hardening, where the unit
    # says to put them; one answers as the warmer user.
    socks = ns.run("sh", "-c", "ls /run/warmer/*.asok").stdout.split()
    assert any("central-client.warmer" in x for x in socks), socks
    assert any("edge-client.warmer" in x for x in socks), socks
    version = ns.run("runuser", "-u", "warmer", "--", "ceph", "--admin-daemon",
                     socks[0], "version").stdout
    assert "version" in version, version


def test_reload_rereads_popularity_and_the_image_is_warmed_in_both_clusters(
        env: dict[str, Any], glance: Glance, cinder: CinderNotifier) -> None:
    ns: Namespace = env["ns"]
    warmer: Warmer = env["warmer"]
    image_id = glance.create("systemd-reload")["id"]
    glance.upload(image_id, os.urandom(4 << 20))
    image = glance.get(image_id)
    for _ in range(3):
        cinder.volume_created(image)
    wait_until(lambda: (warmer.image(image_id) or {}).get("score", 0) >= 2.9, 15,
               "demand counted", ns)
    view = warmer.image(image_id)
    assert view is not None and not view["wanted"] and view["why"] == "below_threshold"

    pid = ns.show("MainPID")["MainPID"]
    ns.write("/etc/warmer/warmer.conf",
             _config(env["stack"], env["port"], env["metrics_port"], env["pool"],
                     threshold=2.0))
    reloaded = time.monotonic()
    ns.run("systemctl", "reload", "warmer.service")
    wait_until(lambda: any("configuration reloaded" in str(e.get("MESSAGE"))
                           for e in ns.journal()), 10, "reload logged", ns)
    assert ns.show("MainPID")["MainPID"] == pid  # reloaded, not restarted
    warm = ("warm", "cloneable")
    wait_until(lambda: warmer.states(image_id) == {"central": warm, "edge": warm}, 60,
               "warm in central (Glance's snapshot) and edge (a copy)", ns)
    record_timing("systemd reload -> warm in both clusters", time.monotonic() - reloaded)
    view = warmer.image(image_id)
    assert view is not None and view["wanted"]
    # The edge copy, written with warmer's edge keyring, is published in Glance.
    assert any(loc["url"].startswith(f"rbd://{env['stack']['CEPH_EDGE_FSID']}/")
               for loc in glance.get(image_id)["locations"])


def test_logs_reach_the_journal_with_their_priorities(env: dict[str, Any]) -> None:
    ns: Namespace = env["ns"]
    stack: Stack = env["stack"]
    marker = f"systemd-priority-{os.getpid()}"
    with kombu.Connection(stack["TRANSPORT_URL"].replace("rabbit://", "amqp://")) as conn:
        conn.Producer().publish(
            json.dumps({"oslo.version": "2.0", "oslo.message": json.dumps(
                {"message_id": marker, "publisher_id": "volume.h@b#p", "priority": "INFO",
                 "event_type": "volume.create.end", "payload": {"volume_id": 5},
                 "timestamp": "2026-11-25 10:00:00.000000"})}),
            exchange="openstack", routing_key="notifications.info",
            content_type="application/json", content_encoding="utf-8", retry=True)

    def warning() -> dict[str, Any] | None:
        return next((e for e in ns.journal() if "malformed" in str(e.get("MESSAGE"))), None)
    entry = wait_until(warning, 15, "a warning for the malformed notification", ns)
    assert entry["PRIORITY"] == "4", entry
    assert entry["SYSLOG_IDENTIFIER"] == "warmer-daemon"
    assert entry["_UID"] == str(_uid(env["root"], "warmer"))
    infos = [e for e in ns.journal() if "consuming notifications" in str(e.get("MESSAGE"))]
    assert infos and all(e["PRIORITY"] == "6" for e in infos)
    # journalctl -p warning shows the warning and none of the INFO lines.
    out = ns.run("journalctl", "--no-pager", "-u", "warmer.service", "-p", "warning").stdout
    assert "malformed" in out and "consuming notifications" not in out


def test_a_stopped_event_loop_is_killed_by_the_watchdog_and_restarted(
        env: dict[str, Any]) -> None:
    ns: Namespace = env["ns"]
    warmer: Warmer = env["warmer"]
    before = ns.show("MainPID", "NRestarts")
    stopped = time.monotonic()
    ns.run("systemctl", "kill", "--kill-who=main", "--signal=SIGSTOP", "warmer.service")

    def restarted() -> bool:
        now = ns.show("MainPID", "NRestarts", "ActiveState")
        return (now["ActiveState"] == "active" and now["MainPID"] != before["MainPID"]
                and now["MainPID"] != "0")
    budget = WATCHDOG_SEC + UNIT_RESTART_SEC + 5  # + start-up to READY
    wait_until(restarted, budget, "restarted by the watchdog", ns)
    elapsed = time.monotonic() - stopped
    record_timing("SIGSTOP -> watchdog kill -> active again", elapsed)
    assert elapsed > WATCHDOG_SEC
    after = ns.show("NRestarts")
    assert int(after["NRestarts"]) == int(before["NRestarts"]) + 1
    messages = [str(e.get("MESSAGE")) for e in ns.journal()]
    assert any("Watchdog timeout" in m for m in messages), messages[-20:]
    assert warmer.ready()


def test_stop_drains_and_exits_0(env: dict[str, Any]) -> None:
    ns: Namespace = env["ns"]
    started = time.monotonic()
    ns.run("systemctl", "stop", "warmer.service")
    record_timing("systemctl stop (drain) -> inactive", time.monotonic() - started)
    assert ns.show("ActiveState")["ActiveState"] == "inactive"
    # systemd unloads the stopped unit (ExecMainStatus is gone): the drop-in's
    # ExecStopPost logged how the main process ended. SIGTERM would count
    # as success too; this says it exited, with 0.
    messages = [str(e.get("MESSAGE")) for e in ns.journal()]
    assert messages[-5:].count("warmer-test: exited 0 success") == 1, messages[-8:]
    assert "stopping: draining" in " ".join(messages[-10:])
    assert any(m.endswith(" stopped") or m == "stopped" for m in messages[-10:]), messages[-10:]


def test_exposure_of_the_installed_unit_is_at_most_2(env: dict[str, Any]) -> None:
    ns: Namespace = env["ns"]
    out = ns.run("systemd-analyze", "security", "--no-pager", "warmer.service").stdout
    line = [x for x in out.splitlines() if "Overall exposure level" in x][0]
    score = float(line.split(":")[1].split()[0])
    print(f"systemd-analyze security warmer.service: {score}")
    assert score <= 2.0, out


def test_install_again_keeps_the_config_and_uninstall_removes_what_it_made(
        env: dict[str, Any]) -> None:
    root: Path = env["root"]
    env["ns"].kill()  # the overlays are gone: ROOT is a plain tree again
    conf = root / "etc" / "warmer" / "warmer.conf"
    before = conf.read_text()
    tool = str(ROOT_DIR / "tools" / "install")
    subprocess.run([tool, "--root", str(root)], check=True, capture_output=True, text=True)
    assert conf.read_text() == before
    passwd = (root / "etc" / "passwd").read_text()
    assert passwd.count("\nwarmer:") + passwd.startswith("warmer:") == 1

    subprocess.run([str(ROOT_DIR / "tools" / "uninstall"), "--root", str(root)], check=True,
                   capture_output=True, text=True)
    assert not (root / "opt" / "warmer").exists()
    assert not (root / "etc" / "systemd" / "system" / "warmer.service").exists()
    assert not (root / "etc" / "warmer" / "warmer.conf.sample").exists()
    assert conf.read_text() == before
    assert "\nwarmer:" in (root / "etc" / "passwd").read_text()

    subprocess.run([tool, "--uninstall", "--purge", "--root", str(root)], check=True,
                   capture_output=True, text=True)
    assert not (root / "etc" / "warmer").exists()
    # The user and group stay (files owned by them must not keep a bare gid).
    assert "\nwarmer:" in (root / "etc" / "passwd").read_text()
    assert "\nwarmer:" in (root / "etc" / "group").read_text()
