"""Acks on the real broker: each notification is settled exactly once, and
a message is acked only after the loop folded it.

kombu's in-memory transport ignores ``multiple`` and never redelivers an
unacked message, so only RabbitMQ can tell right acks from wrong ones.
Each test starts warmer-daemon with a fault injected by
tests/functional/faulthook/sitecustomize.py (a stalled loop, a hand-off that
raises, a hand-off that blocks) and checks, from the daemon's metrics or
the broker's queue, that no message was lost and none folded twice. Each
of them fails against a listener that acks a batch before handing it off.

Every daemon has a pool queue of its own; the notifications are
``volume.create.end`` of queued QCOW2 images (demand is counted, nothing is
warmed).
"""

from __future__ import annotations

import json
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
from stackclient import Stack, rabbit
from stackclient.cinder import CinderNotifier
from stackclient.daemon import Daemon
from stackclient.glance import Glance

HOOK = Path(__file__).resolve().parent / "faulthook"
EVENT = "volume.create.end"
N = 40


def faulty(stack: Stack, faults: dict[str, Any], bus: str = "", *,
           pool: str | None = None) -> Daemon:
    env = {"PYTHONPATH": str(HOOK), "WARMER_TEST_FAULTS": json.dumps(faults)}
    return Daemon(stack, name="acks", pool=pool, env=env,
                  overrides=f"[bus]\n{bus}\n" if bus else "").start()


def count(daemon: Daemon, outcome: str) -> int:
    return int(daemon.metric("warmer_notifications_total", event_type=EVENT, outcome=outcome))


@pytest.fixture(scope="module")
def image(glance: Glance) -> Iterator[dict[str, Any]]:
    yield glance.create("bus-acks", disk_format="qcow2")


def publish(cinder: CinderNotifier, image: dict[str, Any], n: int = N) -> list[str]:
    return [cinder.volume_created(image) for _ in range(n)]


def queued(stack: Stack, pool: str) -> int:
    return int(rabbit.queues(stack, "/")[pool]["messages"])


def test_a_loop_stalled_past_handoff_timeout_gets_each_message_folded_once(
        stack: Stack, cinder: CinderNotifier, image: dict[str, Any]) -> None:
    """Batches abandoned while the loop is stalled are requeued and never
    folded: in the end each notification is handled once, none is a
    duplicate (a batch folded and requeued would come back as one)."""
    marker = stack.dir / "acks-stall.marker"
    marker.unlink(missing_ok=True)
    d = faulty(stack, {"stall_loop": 3.0, "marker": str(marker)}, "handoff_timeout = 1\n")
    try:
        publish(cinder, image, 1)  # folded, then the loop stalls
        d.wait_until(marker.exists, 10, "the loop stalled")  # not a scrape: on the loop
        publish(cinder, image, N - 1)
        d.wait_until(lambda: count(d, "handled") >= N, 30, "every notification handled")
        requeued = count(d, "requeued")
        d.wait_until(lambda: queued(stack, d.pool) == 0, 10, "the queue empty")
        assert count(d, "handled") == N
        assert count(d, "duplicate") == 0
        assert requeued > 0  # the stall did make hand-offs time out
    finally:
        d.kill()


def test_a_hand_off_that_raises_loses_no_message(
        stack: Stack, cinder: CinderNotifier, image: dict[str, Any]) -> None:
    """The batches whose hand-off raised are requeued and come back; none is
    acked by a later batch's multiple ack."""
    d = faulty(stack, {"fail_dispatch": 3})
    try:
        publish(cinder, image)
        d.wait_until(lambda: count(d, "handled") >= N, 30, "every notification handled")
        d.wait_until(lambda: queued(stack, d.pool) == 0, 10, "the queue empty")
        assert count(d, "handled") == N
        assert count(d, "duplicate") == 0
    finally:
        d.kill()


def test_sigkill_during_a_blocked_hand_off_leaves_every_message_to_the_pool(
        stack: Stack, cinder: CinderNotifier, image: dict[str, Any]) -> None:
    """A daemon killed while its loop holds a batch has acked nothing of it:
    a second daemon of the same pool gets every notification."""
    marker = stack.dir / "acks-sigkill.marker"
    marker.unlink(missing_ok=True)
    first = faulty(stack, {"block_handoff": 60, "marker": str(marker)},
                   "handoff_timeout = 120\n")
    second: Daemon | None = None
    try:
        publish(cinder, image, 1)
        first.wait_until(marker.exists, 10, "a hand-off blocked")
        publish(cinder, image, N - 1)
        first.kill()
        second = Daemon(stack, name="acks-second", pool=first.pool).start()
        second.wait_until(lambda: count(second, "handled") >= N, 30,
                          "every notification handled by the second daemon")
        assert count(second, "handled") == N
    finally:
        first.kill()
        if second is not None:
            second.kill()


def test_sigterm_while_a_hand_off_is_blocked_puts_the_rest_back_in_the_queue(
        stack: Stack, cinder: CinderNotifier, image: dict[str, Any]) -> None:
    """The blocked batch is folded and acked once the loop is free (and maybe
    a batch or two more before the loop sees the signal); what the daemon
    took meanwhile is requeued by the draining engine, and what the broker
    had pushed to it comes back when it closes: all of it is in the queue
    after the daemon exited."""
    marker = stack.dir / "acks-sigterm.marker"
    folded = stack.dir / "acks-sigterm.folded"
    marker.unlink(missing_ok=True)
    folded.unlink(missing_ok=True)
    d = faulty(stack, {"block_handoff": 4, "marker": str(marker), "folded": str(folded)},
               "handoff_timeout = 30\n")
    try:
        publish(cinder, image, 1)
        d.wait_until(marker.exists, 10, "a hand-off blocked")
        publish(cinder, image, N - 1)
        time.sleep(0.5)  # some of them reach the daemon's socket
        assert d.terminate(30) == 0
        assert int(marker.read_text()) == 1  # the blocked batch
        # The loop may fold another batch or two before it sees the signal.
        acked = sum(int(n) for n in folded.read_text().split())
        # (On a fast machine it may fold all of them: then none is queued.)
        assert 1 <= acked <= N
        assert queued(stack, d.pool) == N - acked
    finally:
        d.kill()
