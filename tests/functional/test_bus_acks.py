"""Acks on the real broker: each notification is settled exactly once, and
a message is acked only after the loop folded it.

kombu's in-memory transport ignores ``multiple`` and never redelivers an
unacked message, so only RabbitMQ can tell right acks from wrong ones.
Each test starts warmer-daemon with a fault injected by
tests/functional/faulthook/sitecustomize.py (a stalled loop, a hand-off that
raises, a hand-off that blocks, an ack that makes the broker close the
channel) and checks, from the daemon's metrics or the broker's queue, that
no message was lost and none folded twice. Each of them fails against a
listener that acks a batch before handing it off; the last one also
against a listener that settles a batch of a channel the broker closed on
the channel py-amqp reopened in its place.

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


#: Notifications before the broker closes the channel, while the batch it
#: was closed under is held on the loop, and afterwards.
BEFORE, DURING, AFTER = 30, 20, 20
#: Seconds the loop holds that batch (a scrape of the daemon waits as long).
HOLD = 5.0
#: What RabbitMQ logs of the fault's ack (BAD_TAG in faulthook/sitecustomize.py).
BAD_ACK = ("operation basic.ack caused a channel exception precondition_failed: "
           "unknown delivery tag 999999999")


def test_a_channel_the_broker_closes_mid_flow_is_revived_and_nothing_is_settled_twice(
        stack: Stack, cinder: CinderNotifier, image: dict[str, Any]) -> None:
    """The broker closes warmer's consumer channel (406 PRECONDITION_FAILED,
    an ack of a delivery tag it never issued) while a batch is on the loop;
    py-amqp reopens the channel in place, on the same connection, and the
    broker redelivers that batch and what followed on tags that start again
    at 1. The held batch, once folded, must not be acked on the reopened
    channel: its tag (BEFORE + 1) was never issued there, so RabbitMQ would
    close the channel a second time, and a tag that was issued would ack a
    message not folded yet. Each notification is counted once, the one
    folded before the close comes back as a duplicate, the queue drains,
    the reopened channel keeps the prefetch, and the daemon goes on
    consuming on the same connection."""
    marker = stack.dir / "acks-channel.marker"
    marker.unlink(missing_ok=True)
    since = rabbit.log(stack).stat().st_size
    d = faulty(stack, {"bad_ack_at": BEFORE + 1, "hold_fold": HOLD, "marker": str(marker)},
               "batch_size = 4\nhandoff_timeout = 60\n")
    try:
        publish(cinder, image, BEFORE)
        d.wait_until(lambda: count(d, "handled") >= BEFORE, 30, "the first ones handled")
        [first] = rabbit.consumers(stack, d.pool)
        connection = first["name"].rsplit(" (", 1)[0]  # "CLIENT:PORT -> SERVER:PORT"
        publish(cinder, image, 1)  # a batch of its own: the channel is closed under it
        # No scrape of the daemon while its loop holds the batch (it would
        # wait as long); the broker's log says when it closed the channel.
        d.wait_until(lambda: rabbit.channel_errors(stack, connection, since), HOLD,
                     "the broker closing the channel")
        publish(cinder, image, DURING)
        held = marker.read_text()
        total = BEFORE + 1 + DURING
        d.wait_until(lambda: count(d, "handled") >= total, 30, "every notification handled")
        d.wait_until(lambda: queued(stack, d.pool) == 0, 10, "the queue empty")
        time.sleep(1.0)  # a second close would redeliver, and show up below
        publish(cinder, image, AFTER)
        total += AFTER
        d.wait_until(lambda: count(d, "handled") >= total, 30, "consuming afterwards")
        d.wait_until(lambda: queued(stack, d.pool) == 0, 10, "the queue empty again")
        outcomes = {o: count(d, o) for o in ("handled", "duplicate", "requeued", "malformed",
                                             "error")}
        [after] = rabbit.consumers(stack, d.pool)
        queue = rabbit.queues(stack, "/")[d.pool]
        errors = rabbit.channel_errors(stack, connection, since)
        closes = [line.split(" [-] ", 1)[-1]
                  for line in d.log.read_text(errors="replace").splitlines()
                  if "closed the bus channel" in line]
        print(f"\nchannel before {first}\nafter {after}\nbroker: {errors}\n"
              f"daemon: {closes}\n"
              f"outcomes {outcomes}; the held batch's tag: {marker.read_text()}")
        assert held.split() == [str(BEFORE + 1)]  # the stale tag; still held after DURING
        # The broker closed the channel once, for the bad ack, and the
        # consumer goes on on a channel of the same number and connection:
        # reopened in place, not a reconnection.
        assert errors == [BAD_ACK]
        assert len(closes) == 1 and closes[0].startswith(
            "the broker closed the bus channel (PreconditionFailed: Basic.ack: (406) "
            "PRECONDITION_FAILED - unknown delivery tag 999999999); it is reopened")
        assert after["channel_pid"] != first["channel_pid"]
        assert (after["connection"], after["number"]) == (first["connection"], first["number"])
        # Twice batch_size, on the reopened channel too (the rabbit driver
        # does not set it again on a channel py-amqp reopened in place).
        assert (first["prefetch_count"], after["prefetch_count"]) == ("8", "8")
        assert outcomes == {"handled": total, "duplicate": 1, "requeued": 0, "malformed": 0,
                            "error": 0}
        assert (queue["messages"], queue["messages_unacknowledged"]) == ("0", "0")
        assert (d.image(image["id"]) or {}).get("score", 0.0) == pytest.approx(total,
                                                                               rel=0.01)
        assert d.proc is not None and d.proc.poll() is None
        assert d.get("/readyz")["ready"]
    finally:
        d.kill()
