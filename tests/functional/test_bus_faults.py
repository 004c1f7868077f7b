"""The bus under faults, on the real broker: queue options pass through, and
a RabbitMQ restart in the middle of a stream of notifications loses no
notification the daemon took, flips /readyz and does not crash the daemon.

Everything here runs in a vhost of its own, where every exchange and queue
is durable (``amqp_durable_queues = true`` on both sides, as a deployment
that sets it does everywhere): a durable declare of a name that a
non-durable service declared first would be refused by the broker.

The broker is stopped and started by its recorded PID (tools/stack
stop-rabbit / start-rabbit), on the same port and data directory; the
module makes sure it runs again whatever happens.
"""

from __future__ import annotations

import json
import logging
import os
import signal
import threading
import time
import urllib.error
from collections.abc import Iterator

import pytest
from stackclient import Stack, rabbit
from stackclient.cinder import CinderNotifier
from stackclient.daemon import Daemon
from stackclient.glance import Glance

from tests.functional.conftest import record_timing

VHOST = "warmer-faults"
EVENT = "volume.create.end"


@pytest.fixture(scope="module")
def vhost_url(stack: Stack) -> Iterator[str]:
    yield rabbit.add_vhost(stack, VHOST)
    if not rabbit.running(stack):  # a failed test left it down: later modules need it
        rabbit.start(stack)


def durable_overrides(url: str, extra: str = "") -> str:
    return (f"[DEFAULT]\ntransport_url = {url}\n"
            f"[oslo_messaging_rabbit]\namqp_durable_queues = true\n{extra}")


@pytest.fixture(scope="module")
def durable_daemon(stack: Stack, vhost_url: str) -> Iterator[Daemon]:
    d = Daemon(stack, name="faults", overrides=durable_overrides(vhost_url)).start()
    yield d
    d.kill()


def ready(daemon: Daemon) -> bool | None:
    """/readyz as a load balancer sees it: None when the daemon does not answer."""
    try:
        return bool(daemon.get("/readyz")["ready"])
    except urllib.error.HTTPError as exc:
        return bool(json.loads(exc.read())["ready"])
    except (OSError, ValueError):
        return None


def count(daemon: Daemon, outcome: str) -> int:
    return int(daemon.metric("warmer_notifications_total", event_type=EVENT, outcome=outcome))


def test_listener_queues_follow_the_oslo_messaging_rabbit_options(
        stack: Stack, vhost_url: str, durable_daemon: Daemon) -> None:
    queues = rabbit.queues(stack, VHOST)
    queue = queues[durable_daemon.pool]
    assert (queue["durable"], queue["type"]) == ("true", "classic")

    quorum = Daemon(stack, name="quorum", overrides=durable_overrides(
        vhost_url, "rabbit_quorum_queue = true\n")).start()
    try:
        queue = rabbit.queues(stack, VHOST)[quorum.pool]
        assert (queue["durable"], queue["type"]) == ("true", "quorum")
    finally:
        quorum.kill()


class _FailedPublishes(logging.Handler):
    """oslo.messaging's Notifier logs, and swallows, a publish it gave up on."""

    def __init__(self) -> None:
        super().__init__(logging.ERROR)
        self.failures: list[str] = []

    def emit(self, record: logging.LogRecord) -> None:
        self.failures.append(record.getMessage()[:300])


@pytest.mark.parametrize("kill,backlog", [(False, False), (True, True)],
                         ids=["sigterm", "sigkill-with-backlog"])
def test_rabbitmq_restarted_mid_stream_loses_no_notification_the_daemon_took(
        stack: Stack, glance: Glance, vhost_url: str, durable_daemon: Daemon,
        kill: bool, backlog: bool) -> None:
    """SIGTERM is a clean broker stop (clients are told); SIGKILL a crash
    (the kernel closes the sockets).

    With a backlog, the daemon is paused (SIGSTOP to the PID the test
    started) while more is published, so that the broker holds messages in
    the daemon's durable queue when it dies, some of them already pushed to
    the daemon and not acked: those survive the crash because they were
    confirmed persistent, and the ones the daemon handles from its socket
    buffer after SIGCONT are redelivered and counted as duplicates."""
    d = durable_daemon
    total = 240
    # Queued QCOW2 images: demand is counted, nothing is ever warmed.
    images = [glance.create(f"bus-fault-{n}", disk_format="qcow2") for n in range(3)]
    assert rabbit.running(stack)
    before = {o: count(d, o) for o in ("handled", "duplicate", "malformed", "error",
                                       "requeued")}
    failed = _FailedPublishes()
    notifier_log = logging.getLogger("oslo_messaging.notify.notifier")
    notifier_log.addHandler(failed)
    notifier = CinderNotifier(vhost_url, durable=True)
    published: list[str] = []
    publish_errors: list[BaseException] = []

    def publish() -> None:
        try:
            for n in range(total):
                # Blocks while the broker is down, until it confirmed.
                published.append(notifier.volume_created(images[n % len(images)]))
                time.sleep(0.005)
        except BaseException as exc:
            publish_errors.append(exc)

    readiness: list[tuple[float, bool | None]] = []
    watching = threading.Event()

    def watch() -> None:
        while not watching.is_set():
            readiness.append((time.monotonic(), ready(d)))
            time.sleep(0.05)

    # Daemon threads: a test that fails must not hang the run on exit.
    publisher = threading.Thread(target=publish, name="publisher", daemon=True)
    watcher = threading.Thread(target=watch, name="readyz-watcher", daemon=True)
    paused, queued = False, 0
    assert d.proc is not None
    watcher.start()
    publisher.start()
    try:
        d.wait_until(lambda: len(published) >= total // 3, 60, "a third published")
        if backlog:
            os.kill(d.proc.pid, signal.SIGSTOP)
            paused = True
            mark = len(published)
            d.wait_until(lambda: len(published) >= mark + 40, 30, "a backlog published")
            queued = int(rabbit.queues(stack, VHOST)[d.pool]["messages"])
        stopping = time.monotonic()
        rabbit.stop(stack, kill=kill)  # to the recorded PID, mid-stream
        stopped = time.monotonic()
        published_at_stop = len(published)
        if paused:
            os.kill(d.proc.pid, signal.SIGCONT)
            paused = False
        resumed = time.monotonic()
        d.wait_until(lambda: ready(d) is False, 15, "/readyz false while the broker is down")
        time.sleep(2.0)  # keep it down while the publisher waits
        starting = time.monotonic()
        rabbit.start(stack)
        started = time.monotonic()
        d.wait_until(lambda: ready(d) is True, 90, "/readyz true after the broker is back")
        back = time.monotonic()
        publisher.join(120)
        assert not publisher.is_alive() and publish_errors == []
        d.wait_until(lambda: count(d, "handled") - before["handled"] >= total, 60,
                     "every published notification handled")
        time.sleep(2.0)  # late redeliveries would show up as duplicates, not as handled
    finally:
        if paused:
            os.kill(d.proc.pid, signal.SIGCONT)
        watching.set()
        watcher.join()
        if not rabbit.running(stack):
            rabbit.start(stack)  # first: the publisher may still wait for it
        publisher.join(60)
        notifier_log.removeHandler(failed)
        notifier.close()

    after = {o: count(d, o) - before[o] for o in before}
    since = resumed if backlog else stopping  # a paused daemon cannot notice anything
    first_false = next(t for t, r in readiness if t >= since and r is False)
    last_false = max(t for t, r in readiness if r is False)
    how = "SIGKILL" if kill else "SIGTERM"
    held = f", {queued} in the daemon's queue when the broker died" if backlog else ""
    print(f"\n{how}: published {len(published)} ({published_at_stop} before the stop{held}); "
          f"outcomes {after}; broker: signal to exit {stopped - stopping:.1f}s, "
          f"down {starting - stopped:.1f}s, start until booted {started - starting:.1f}s; "
          f"/readyz: false {first_false - since:.2f}s after "
          f"{'SIGCONT' if backlog else 'the signal'}, false for "
          f"{last_false - first_false:.1f}s, true {back - started:+.2f}s from the end of "
          f"the broker's boot (polled every 0.05s)")
    if not backlog:
        record_timing(f"rabbitmq {how} -> /readyz false", first_false - stopping)
        record_timing(f"/readyz false during a broker restart ({how})",
                      last_false - first_false)
    assert failed.failures == [], failed.failures  # no publish was given up
    assert len(set(published)) == total
    assert after["handled"] == total  # each volume once: nothing lost, nothing twice
    assert after["malformed"] == after["error"] == 0
    # Redeliveries of messages taken but not acked before the connection
    # broke are counted as duplicates (same volume id), never as demand.
    assert after["duplicate"] >= 0
    states = [r for _, r in readiness]
    assert True in states and False in states and states[-1] is True
    if not backlog:
        assert None not in states  # the daemon answered all along
    else:
        assert queued > 0  # the broker did hold a backlog when it died
    assert d.proc is not None and d.proc.poll() is None  # and did not crash
    scores = [(d.image(i["id"]) or {}).get("score", 0.0) for i in images]
    assert sum(scores) == pytest.approx(total, rel=0.01)  # weight 1.0 each, barely decayed
