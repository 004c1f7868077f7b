"""Processes the stack starts: free ports, spawning, waiting, stopping.

Every process is recorded in ``DIR/pids`` with its start time as the kernel
reports it, so that ``down`` stops exactly what ``up`` started and never a
process that merely reused a PID. Its command (argv, the environment it was
given, log, working directory) goes to ``DIR/cmds/<name>.json``, so that one
process can be stopped and started again exactly as it was (fault tests):
its line in ``DIR/pids`` then names the new PID and start time.
"""

from __future__ import annotations

import json
import os
import signal
import socket
import subprocess
import threading
import time
from collections.abc import Callable, Mapping, Sequence
from pathlib import Path
from typing import Any

PIDS_FILE = "pids"
CMDS_DIR = "cmds"
_RECORD_LOCK = threading.Lock()


class StackError(RuntimeError):
    """A step of bringing the stack up or down failed."""


def free_port() -> int:
    """Return a TCP port on 127.0.0.1 that nothing listens on right now."""
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


def _start_time(pid: int) -> str | None:
    try:
        stat = Path(f"/proc/{pid}/stat").read_text()
    except OSError:
        return None
    # Field 22 (starttime) counts from after the parenthesised command name.
    return stat.rsplit(")", 1)[1].split()[19]


def record(base: Path, name: str, pid: int) -> None:
    start = _start_time(pid)
    if start is None:
        raise StackError(f"{name} (pid {pid}) exited right after starting")
    with _RECORD_LOCK, open(base / PIDS_FILE, "a") as f:  # clusters boot in parallel
        f.write(f"{name} {pid} {start}\n")


def spawn(base: Path, name: str, argv: Sequence[str], *,
          env: Mapping[str, str] | None = None,
          log: Path | None = None, cwd: Path | None = None) -> int:
    """Start ``argv`` in its own session, detached from us, and record it
    (PID and start time in ``DIR/pids``, the command in ``DIR/cmds``)."""
    command: dict[str, Any] = {"argv": list(argv), "env": dict(env or {}),
                               "log": str(log or base / "log" / f"{name}.out"),
                               "cwd": str(cwd) if cwd else None}
    (base / CMDS_DIR).mkdir(exist_ok=True)
    (base / CMDS_DIR / f"{name}.json").write_text(json.dumps(command, indent=2) + "\n")
    pid = _popen(command)
    record(base, name, pid)
    return pid


def _popen(command: dict[str, Any]) -> int:
    full_env = dict(os.environ)
    full_env.update(command["env"])
    with open(command["log"], "ab") as logfile:
        proc = subprocess.Popen(
            command["argv"], env=full_env, stdin=subprocess.DEVNULL, stdout=logfile,
            stderr=subprocess.STDOUT, start_new_session=True, cwd=command["cwd"])
    return proc.pid


def run(argv: Sequence[str], *, env: Mapping[str, str] | None = None,
        input: str | None = None, timeout: float = 120) -> str:
    """Run a short command to completion; raise with its output on failure."""
    full_env = dict(os.environ)
    full_env.update(env or {})
    res = subprocess.run(list(argv), env=full_env, input=input, text=True,
                         capture_output=True, timeout=timeout)
    if res.returncode != 0:
        raise StackError(f"{' '.join(argv)} failed ({res.returncode}):\n"
                         f"{res.stdout}{res.stderr}")
    return res.stdout


def wait_for(what: str, check: Callable[[], bool], timeout: float,
             alive: Callable[[], bool] | None = None) -> None:
    """Poll ``check`` until it holds, the deadline passes or ``alive`` fails."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if check():
            return
        if alive is not None and not alive():
            raise StackError(f"{what}: the process died; see its log")
        time.sleep(0.2)
    raise StackError(f"{what}: not ready after {timeout:.0f}s")


def pid_alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    # A zombie still answers kill(0); it is gone for our purposes.
    try:
        state = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()[0]
    except OSError:
        return False
    return state != "Z"


def recorded(base: Path) -> list[tuple[str, int, str]]:
    path = base / PIDS_FILE
    if not path.exists():
        return []
    rows = []
    for line in path.read_text().splitlines():
        name, pid, start = line.split()
        rows.append((name, int(pid), start))
    return rows


def recorded_pid(base: Path, name: str) -> int | None:
    """The PID recorded for ``name`` if that very process still runs (same
    start time), else None."""
    for row_name, pid, start in recorded(base):
        if row_name == name and _start_time(pid) == start and pid_alive(pid):
            return pid
    return None


def forget(base: Path, name: str, pid: int) -> None:
    """Drop the record of ``name`` with ``pid`` (a process we stopped on
    purpose and may start again, which records itself anew)."""
    with _RECORD_LOCK:
        path = base / PIDS_FILE
        lines = path.read_text().splitlines(True) if path.exists() else []
        kept = [line for line in lines if line.split()[:2] != [name, str(pid)]]
        path.write_text("".join(kept))


def stop_recorded(base: Path, timeout: float = 20) -> list[str]:
    """SIGTERM every recorded process still running (newest first), then
    SIGKILL what has not exited by ``timeout``. Returns what was stopped."""
    stopped = []
    for name, pid, start in reversed(recorded(base)):
        if _start_time(pid) != start or not pid_alive(pid):
            continue  # already gone, or the PID now belongs to someone else
        os.kill(pid, signal.SIGTERM)
        deadline = time.monotonic() + timeout
        while pid_alive(pid) and time.monotonic() < deadline:
            time.sleep(0.1)
        if pid_alive(pid) and _start_time(pid) == start:
            os.kill(pid, signal.SIGKILL)
        stopped.append(f"{name} ({pid})")
    (base / PIDS_FILE).unlink(missing_ok=True)
    return stopped


# -- one recorded process at a time (fault tests) ------------------------------

def _recorded_one(base: Path, name: str) -> tuple[int, str]:
    for rec_name, pid, start in recorded(base):
        if rec_name == name:
            return pid, start
    known = ", ".join(n for n, _, _ in recorded(base)) or "none"
    raise StackError(f"no process named {name!r} is recorded in {base / PIDS_FILE} "
                     f"(recorded: {known})")


def running_one(base: Path, name: str) -> int | None:
    """The PID of the recorded process ``name`` if that very process runs."""
    pid, start = _recorded_one(base, name)
    return pid if pid_alive(pid) and _start_time(pid) == start else None


def stop_one(base: Path, name: str, timeout: float = 20) -> int | None:
    """Stop the recorded process ``name`` (SIGTERM, SIGKILL after
    ``timeout``), by its recorded PID and start time only. It stays in
    ``DIR/pids`` (stopped), so that :func:`start_one` can start it again.
    Returns the PID stopped, or ``None`` when it was not running."""
    pid = running_one(base, name)
    if pid is None:
        return None
    _, start = _recorded_one(base, name)
    os.kill(pid, signal.SIGTERM)
    deadline = time.monotonic() + timeout
    while pid_alive(pid) and time.monotonic() < deadline:
        time.sleep(0.05)
    if pid_alive(pid) and _start_time(pid) == start:
        os.kill(pid, signal.SIGKILL)
        while pid_alive(pid):
            time.sleep(0.05)
    return pid


def group_members(pgid: int) -> list[tuple[int, str]]:
    """(PID, start time) of every live process in the process group
    ``pgid``, its leader included. :func:`spawn` starts each process in a
    session of its own, so its group is what it forked (uwsgi's workers),
    which may outlive it."""
    members = []
    for entry in Path("/proc").iterdir():
        if not entry.name.isdigit():
            continue
        try:
            fields = (entry / "stat").read_text().rsplit(")", 1)[1].split()
        except OSError:
            continue  # exited meanwhile
        if int(fields[2]) == pgid and fields[0] != "Z":
            members.append((int(entry.name), fields[19]))
    return members


def _signal(pid: int, start: str, sig: int) -> None:
    """``sig`` to ``pid`` if it is still the process started at ``start``."""
    if _start_time(pid) == start:
        try:
            os.kill(pid, sig)
        except ProcessLookupError:
            pass


def survivors(members: list[tuple[int, str]]) -> list[tuple[int, str]]:
    """Those of ``members`` (PID, start time) that still run."""
    return [(m, s) for m, s in members if pid_alive(m) and _start_time(m) == s]


def _wait_gone(members: list[tuple[int, str]], timeout: float) -> None:
    deadline = time.monotonic() + timeout
    while survivors(members) and time.monotonic() < deadline:
        time.sleep(0.05)


def stop_group(base: Path, name: str, timeout: float = 20) -> list[int]:
    """Stop the recorded process ``name`` as :func:`stop_one` does, then
    what is left of its process group (workers the leader did not stop, or
    orphaned when it was SIGKILLed): SIGTERM, then SIGKILL after
    ``timeout``, each by the PID and start time it had when listed, never
    by name. The group's id is the leader's recorded PID; while any member
    lives the kernel gives that number to no new process, so the group is
    listed while the leader runs, and again only while a member listed
    then lives. Returns the PIDs stopped, leader first; raises when one
    survives."""
    pid, start = _recorded_one(base, name)
    now = _start_time(pid)
    if now is not None and now != start:
        return []  # the PID, and a group of that id, are someone else's now
    # Listed while the leader still runs (the group is surely its own),
    # and again after it stopped only while one of those lives: a member
    # keeps the group's id from any new process, so the list is still
    # that group's and finds what its workers forked meanwhile.
    listed = [m for m in group_members(pid) if m[0] != pid]
    stopped = [pid] if stop_one(base, name, timeout) is not None else []
    rest = [m for m in group_members(pid) if m[0] != pid] if survivors(listed) else listed
    for member, member_start in rest:
        _signal(member, member_start, signal.SIGTERM)
    _wait_gone(rest, timeout)
    for member, member_start in survivors(rest):
        _signal(member, member_start, signal.SIGKILL)
    _wait_gone(rest, 5)
    left = [m for m, _ in survivors(rest)]
    if left:
        raise StackError(f"{name}: {left} of its process group {pid} survived SIGKILL")
    return stopped + [m for m, _ in rest]


def start_one(base: Path, name: str) -> int:
    """Start the recorded process ``name`` again with exactly the command it
    was spawned with, and record its new PID and start time in its line of
    ``DIR/pids`` (so ``down`` stops exactly what runs)."""
    if running_one(base, name) is not None:
        raise StackError(f"{name} is still running; stop it first")
    path = base / CMDS_DIR / f"{name}.json"
    if not path.exists():
        raise StackError(f"{name}: its command was not recorded ({path} is missing)")
    pid = _popen(json.loads(path.read_text()))
    start = _start_time(pid)
    if start is None:
        raise StackError(f"{name} (pid {pid}) exited right after starting")
    with _RECORD_LOCK:
        lines = (base / PIDS_FILE).read_text().splitlines()
        out = [f"{name} {pid} {start}" if line.split()[0] == name else line
               for line in lines]
        tmp = base / f"{PIDS_FILE}.tmp"
        tmp.write_text("".join(f"{line}\n" for line in out))
        tmp.replace(base / PIDS_FILE)
    return pid
