"""One leader for three daemons of one fleet (one bus pool, one [state]
namespace) on the real stack's Ceph: exactly one reconciles; kill -9 of
the leader, and another daemon runs the next reconciliation within 2x the
lease; a clean SIGTERM of the leader hands over faster, within about a
third of the lease."""

from __future__ import annotations

import signal
import time
import uuid
from collections.abc import Iterator

import pytest
from stackclient import Stack
from stackclient.daemon import Daemon

from tests.functional.conftest import record_timing

LEASE = 6  # seconds; the default is 30


def reconciled(d: Daemon) -> float:
    return d.metric("warmer_reconciliations_total", outcome="ok")


def leaders(fleet: list[Daemon]) -> list[Daemon]:
    return [d for d in fleet if d.metric("warmer_leader") == 1]


@pytest.fixture
def fleet(stack: Stack) -> Iterator[list[Daemon]]:
    pool = f"warmer-{uuid.uuid4().hex[:8]}"
    daemons = [Daemon(stack, pool=pool, name=f"lead-{n}", overrides=(
        f"[DEFAULT]\nhost = ctl-{n}\n[leader]\nlease_seconds = {LEASE}\n"
        "[warming]\nreconcile_interval = 5\n")) for n in range(3)]
    try:
        for d in daemons:
            d.start(wait=False)
        for d in daemons:
            d.wait_ready()
        yield daemons
    finally:
        for d in daemons:
            d.kill()  # by the PID it started


def test_kill_9_of_the_leader_another_daemon_reconciles_within_twice_the_lease(
        fleet: list[Daemon]) -> None:
    first = fleet[0]
    first.wait_until(lambda: len(leaders(fleet)) == 1 and reconciled(leaders(fleet)[0]) >= 1,
                     30, "one leader that reconciled")
    [leader] = leaders(fleet)
    followers = [d for d in fleet if d is not leader]
    # Exactly one leads, and only it reconciles; every daemon can tell who.
    assert all(reconciled(d) == 0 for d in followers)
    host = f"ctl-{fleet.index(leader)}"
    for d in fleet:
        d.wait_until(lambda d=d: d.get("/v1/status")["leader"]["name"] == host, 2 * LEASE,
                     "knows the leader")
    assert leader.get("/v1/status")["leader"]["self"] is True

    before = {id(d): reconciled(d) for d in followers}
    killed = time.monotonic()
    leader.kill()  # SIGKILL: its lock stays in Ceph until the lease runs out

    led: list[float] = []

    def took_over() -> Daemon | None:
        if not led and leaders(followers):
            led.append(time.monotonic() - killed)
        return next((d for d in followers if reconciled(d) > before[id(d)]), None)
    new = first.wait_until(took_over, 3 * LEASE, "another daemon reconciles", interval=0.05)
    failover = time.monotonic() - killed
    led.append(failover)  # if the new leader's gauge was never seen before its pass ended
    record_timing(f"leader kill -9 -> another leads ({LEASE} s lease)", led[0])
    record_timing(f"leader kill -9 -> next reconciliation ({LEASE} s lease)", failover)
    # The lock should run out at most a lease after the last renewal, and a
    # follower tries every lease/3: L + L/3 in theory. Seen here: up to one
    # more heartbeat in some runs (a try after the expected expiry still
    # found the lock held); the bound asked for is 2L.
    assert failover <= 2 * LEASE
    assert leaders(followers) == [new]

    # A clean stop releases the lock: the last daemon takes over within
    # lease/3 (its next try), far sooner than a lease.
    [last] = [d for d in followers if d is not new]
    before_last = reconciled(last)
    assert new.proc is not None
    # The followers started together, so their tries are nearly in step:
    # stop a little later than right after the takeover, as in real life.
    time.sleep(1.0)
    stopping = time.monotonic()
    new.proc.send_signal(signal.SIGTERM)
    last.wait_until(lambda: reconciled(last) > before_last, 3 * LEASE,
                    "the last daemon reconciles", interval=0.05)
    handover = time.monotonic() - stopping
    record_timing(f"leader SIGTERM -> next reconciliation ({LEASE} s lease)", handover)
    assert new.proc.wait(60) == 0
    assert handover < LEASE / 3 + 2
    assert last.metric("warmer_leader") == 1
