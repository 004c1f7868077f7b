"""Faults on the local stack, for tests: stop and start one recorded process
(a Ceph mon or OSD of one cluster) and set pool quotas.

The same functions as ``tools/stack stop|start|pool-quota DIR ...``, called
in-process (a stop lands within milliseconds, which a test that stops an
OSD mid-copy needs). A process is stopped by its recorded PID and start
time only, and started again with its recorded command, its new PID
recorded in its line of ``DIR/pids``: ``tools/stack down`` still stops
exactly what runs.
"""

from __future__ import annotations

import contextlib
import time
from collections.abc import Iterator

from stacklib import ceph as stack_ceph
from stacklib import proc

from stackclient import Stack


def recorded(stack: Stack, name: str) -> tuple[int, str]:
    """(PID, start time) that ``DIR/pids`` records for ``name`` now."""
    for rec_name, pid, start in proc.recorded(stack.dir):
        if rec_name == name:
            return pid, start
    raise KeyError(name)


def running(stack: Stack, name: str) -> bool:
    return proc.running_one(stack.dir, name) is not None


def prepare_stop(stack: Stack, name: str) -> None:
    """Whatever a clean stop of ``name`` needs beforehand (a memstore OSD
    must write its store out), done ahead so that :func:`stop` is quick."""
    pid = proc.running_one(stack.dir, name)
    if pid is not None:
        stack_ceph.before_stop(stack.dir, name, pid)


def stop(stack: Stack, name: str, *, prepared: bool = False) -> float:
    """Stop one recorded process (e.g. ``ceph-edge-osd``) by its recorded
    PID; returns the seconds until it exited."""
    started = time.monotonic()
    if not prepared:
        prepare_stop(stack, name)
    proc.stop_one(stack.dir, name)
    return time.monotonic() - started


def start(stack: Stack, name: str) -> float:
    """Start it again with its recorded command and wait until it serves
    (a mon answers; an OSD is up and every pool takes a write); returns the
    seconds it took."""
    started = time.monotonic()
    pid = proc.start_one(stack.dir, name)
    stack_ceph.wait_started(stack.dir, name, pid)
    return time.monotonic() - started


@contextlib.contextmanager
def restored(stack: Stack, *names: str) -> Iterator[None]:
    """Whatever happens in the block, ``names`` run after it: a failing test
    never leaves the shared stack broken for the next ones."""
    try:
        yield
    finally:
        for name in names:
            if not running(stack, name):
                start(stack, name)


def set_pool_quota(stack: Stack, cluster: str, pool: str, max_bytes: int) -> None:
    """``ceph osd pool set-quota POOL max_bytes N`` as client.admin; 0 clears.

    The stack runs no ceph-mgr, and the mon enforces quotas from the pool
    statistics a mgr reports: the quota is recorded in the OSD map, but
    writes past it still succeed here."""
    stack_ceph.set_pool_quota(stack.dir, cluster, pool, max_bytes)
