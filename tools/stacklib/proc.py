"""Processes the stack starts: free ports, spawning, waiting, stopping.

Every process is recorded in ``DIR/pids`` with its start time as the kernel
reports it, so that ``down`` stops exactly what ``up`` started and never a
process that merely reused a PID.
"""

from __future__ import annotations

import os
import signal
import socket
import subprocess
import threading
import time
from collections.abc import Callable, Mapping, Sequence
from pathlib import Path

PIDS_FILE = "pids"
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
    """Start ``argv`` in its own session, detached from us, and record it."""
    logfile = open(log or base / "log" / f"{name}.out", "ab")
    full_env = dict(os.environ)
    full_env.update(env or {})
    proc = subprocess.Popen(
        list(argv), env=full_env, stdin=subprocess.DEVNULL, stdout=logfile,
        stderr=subprocess.STDOUT, start_new_session=True, cwd=cwd)
    logfile.close()
    record(base, name, proc.pid)
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
