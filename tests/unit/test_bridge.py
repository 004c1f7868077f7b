"""Invariant 6 at the bus boundary: ack and requeue rules of the bridge."""

from __future__ import annotations

import asyncio
import json
import logging
import time
from typing import Any

import pytest
from oslo_config import cfg

from warmer.bus import listener as listener_mod
from warmer.bus.listener import HANDLED, REQUEUE, Bridge, BusListener, dispatch, dispatch_batch
from warmer.conf import bus as bus_conf
from warmer.events import Event
from warmer.metrics import Metrics
from warmer.warming.engine import Draining

IMAGE_ID = "0b7e5c3a-2f41-4d8e-9c6b-1a2b3c4d5e6f"
IMAGE = {"id": IMAGE_ID, "status": "active", "disk_format": "raw", "size": 1}


def count(metrics: Metrics, event_type: str, outcome: str) -> float:
    value = metrics.registry.get_sample_value(
        "warmer_notifications_total", {"event_type": event_type, "outcome": outcome})
    return value or 0.0


def make(loop: asyncio.AbstractEventLoop, sink: Any,
         timeout: float = 2.0) -> tuple[Bridge, Metrics, list[Event]]:
    seen: list[Event] = []
    metrics = Metrics()

    def record(ev: Event) -> str:
        seen.append(ev)
        result: str = sink(ev)
        return result
    return Bridge(loop, record, metrics, max_payload_bytes=4096, handoff_timeout=timeout,
                  transient=(Draining,)), metrics, seen


def ok(ev: Event) -> str:
    return "handled"


def test_valid_event_is_handed_off_then_acked(loop: asyncio.AbstractEventLoop) -> None:
    bridge, metrics, seen = make(loop, ok)
    assert bridge.deliver("image.h", "image.activate", IMAGE, {}) == HANDLED
    assert len(seen) == 1 and count(metrics, "image.activate", "handled") == 1


@pytest.mark.parametrize("payload", ["garbage", {"id": 5}, {"id": "x" * 5000}, None])
def test_malformed_is_acked_counted_and_never_reaches_the_sink(
        loop: asyncio.AbstractEventLoop, payload: Any) -> None:
    bridge, metrics, seen = make(loop, ok)
    assert bridge.deliver("image.h", "image.update", payload, {}) == HANDLED
    assert seen == [] and count(metrics, "image.update", "malformed") == 1


def test_unknown_events_are_acked_as_ignored(loop: asyncio.AbstractEventLoop) -> None:
    bridge, metrics, seen = make(loop, ok)
    assert bridge.deliver("compute.h", "compute.instance.exists", {}, {}) == HANDLED
    assert seen == [] and count(metrics, "other", "ignored") == 1


def test_draining_requeues(loop: asyncio.AbstractEventLoop) -> None:
    def draining(ev: Event) -> str:
        raise Draining()
    bridge, metrics, _ = make(loop, draining)
    assert bridge.deliver("image.h", "image.activate", IMAGE, {}) == REQUEUE
    assert count(metrics, "image.activate", "requeued") == 1


def test_a_loop_that_does_not_take_the_event_in_time_requeues_and_never_folds_it(
        loop: asyncio.AbstractEventLoop) -> None:
    """The review's triple fold: the loop was stalled past handoff_timeout,
    the batch was requeued, and the loop folded it anyway once free."""
    bridge, metrics, seen = make(loop, ok, timeout=0.2)
    loop.call_soon_threadsafe(time.sleep, 0.6)  # the loop is stuck
    assert bridge.deliver("image.h", "image.activate", IMAGE, {}) == REQUEUE
    time.sleep(0.8)  # the loop is free again, and runs what was queued on it
    assert seen == []
    assert count(metrics, "image.activate", "requeued") == 1
    assert count(metrics, "image.activate", "handled") == 0


def test_a_fold_that_started_before_the_timeout_is_waited_for_and_acked(
        loop: asyncio.AbstractEventLoop) -> None:
    def slow(ev: Event) -> str:
        time.sleep(0.5)  # a long synchronous fold, started in time
        return "handled"
    bridge, metrics, seen = make(loop, slow, timeout=0.2)
    assert bridge.deliver("image.h", "image.activate", IMAGE, {}) == HANDLED
    assert len(seen) == 1
    assert count(metrics, "image.activate", "handled") == 1
    assert count(metrics, "image.activate", "requeued") == 0


def test_a_bug_in_handling_is_acked_not_requeued_forever(
        loop: asyncio.AbstractEventLoop) -> None:
    def buggy(ev: Event) -> str:
        raise KeyError("bug")
    bridge, metrics, _ = make(loop, buggy)
    assert bridge.deliver("image.h", "image.activate", IMAGE, {}) == HANDLED
    assert count(metrics, "image.activate", "error") == 1


@pytest.mark.parametrize("message", [["not", "a", "dict"], "text", 42, {"priority": 5},
                                     {"priority": "LOUD", "event_type": "image.activate"}])
def test_envelope_that_breaks_dispatch_is_acked_as_malformed(
        loop: asyncio.AbstractEventLoop, message: Any) -> None:
    bridge, metrics, seen = make(loop, ok)
    assert dispatch(bridge, message) == HANDLED and seen == []
    assert count(metrics, "other", "malformed") == 1


def test_well_formed_envelope_goes_through_dispatch(loop: asyncio.AbstractEventLoop) -> None:
    bridge, _, seen = make(loop, ok)
    message = {"priority": "INFO", "event_type": "image.activate", "publisher_id": "image.h",
               "payload": IMAGE, "message_id": "m", "timestamp": "2026-11-25 10:00:00"}
    assert dispatch(bridge, message) == HANDLED
    assert len(seen) == 1


def _message(event_type: str = "image.activate", priority: str = "INFO",
             payload: Any = None) -> dict[str, Any]:
    return {"priority": priority, "event_type": event_type, "publisher_id": "image.h",
            "payload": IMAGE if payload is None else payload, "message_id": "m",
            "timestamp": "2026-11-25 10:00:00"}


def test_a_batch_is_handed_off_in_one_call_and_answered_in_order(
        loop: asyncio.AbstractEventLoop, monkeypatch: pytest.MonkeyPatch) -> None:
    bridge, metrics, seen = make(loop, ok)
    calls = []
    real = loop.call_soon_threadsafe

    def counting(*args: Any) -> Any:
        calls.append(1)
        return real(*args)
    monkeypatch.setattr(loop, "call_soon_threadsafe", counting)
    batch = [_message(), "garbage", _message(payload={"id": 5}),
             _message("compute.instance.exists"), _message(priority="AUDIT"), _message()]
    assert dispatch_batch(bridge, batch) == [HANDLED] * 6
    assert len(calls) == 1 and len(seen) == 2
    assert count(metrics, "image.activate", "handled") == 2
    assert count(metrics, "image.activate", "malformed") == 1
    assert count(metrics, "other", "malformed") == 1
    assert count(metrics, "other", "ignored") == 1
    assert count(metrics, "image.activate", "ignored") == 1  # a priority not consumed


def test_draining_requeues_only_what_reached_the_loop(loop: asyncio.AbstractEventLoop) -> None:
    def draining(ev: Event) -> str:
        raise Draining()
    bridge, metrics, _ = make(loop, draining)
    assert dispatch_batch(bridge, [_message(), "garbage", _message()]) == \
        [REQUEUE, HANDLED, REQUEUE]
    assert count(metrics, "image.activate", "requeued") == 2


def test_one_bug_in_a_batch_drops_only_its_own_event(loop: asyncio.AbstractEventLoop) -> None:
    calls = []

    def sometimes(ev: Event) -> str:
        calls.append(ev)
        if len(calls) == 2:
            raise KeyError("bug")
        return "handled"
    bridge, metrics, _ = make(loop, sometimes)
    assert dispatch_batch(bridge, [_message()] * 3) == [HANDLED] * 3
    assert count(metrics, "image.activate", "handled") == 2
    assert count(metrics, "image.activate", "error") == 1


def test_a_payload_over_the_limit_is_malformed_given_its_body_size(
        loop: asyncio.AbstractEventLoop) -> None:
    bridge, metrics, seen = make(loop, ok)  # 4096 bytes at most
    big = {**IMAGE, "properties": {"k": "x" * 5000}}
    body = len(json.dumps(big, separators=(",", ":")).encode())
    assert bridge.deliver_batch([("image.h", "image.update", big, {})], [body]) == [HANDLED]
    assert seen == [] and count(metrics, "image.update", "malformed") == 1


@pytest.mark.parametrize("error", [KeyError("bug"), ValueError("x" * 100_000), RecursionError(),
                                   TypeError("unhashable"), OverflowError()])
def test_any_exception_while_parsing_is_acked_as_malformed_in_one_line(
        loop: asyncio.AbstractEventLoop, monkeypatch: pytest.MonkeyPatch,
        caplog: pytest.LogCaptureFixture, error: Exception) -> None:
    def broken(*args: Any, **kwargs: Any) -> None:
        raise error
    monkeypatch.setattr("warmer.bus.listener.events.parse", broken)
    bridge, metrics, seen = make(loop, ok)
    with caplog.at_level(logging.DEBUG, logger="warmer.bus.listener"):
        assert bridge.deliver("image.h", "image.activate", IMAGE, {}) == HANDLED
    assert seen == [] and count(metrics, "image.activate", "malformed") == 1
    assert len(caplog.records) == 1
    record = caplog.records[0]
    assert record.levelno == logging.WARNING and record.exc_info is None
    assert len(record.getMessage()) <= 400


def test_warmers_own_image_send_is_acked_counted_and_adds_no_score(
        loop: asyncio.AbstractEventLoop) -> None:
    """Invariant 9 through the bridge and the real engine and tracker."""
    from tests.unit.test_engine import build

    engine, _, _ = build()
    engine.tracker.own_users = frozenset({"warmer-user"})
    metrics = Metrics()
    bridge = Bridge(loop, engine.fold, metrics, max_payload_bytes=4096, handoff_timeout=2.0)

    def send(user: str, message_id: str) -> str:
        return bridge.deliver("image.g1", "image.send", {
            "bytes_sent": 1, "image_id": IMAGE_ID, "owner_id": "o",
            "receiver_tenant_id": "service", "receiver_user_id": user},
            {"message_id": message_id, "timestamp": None})

    assert send("warmer-user", "m-1") == HANDLED
    assert count(metrics, "image.send", "own_download") == 1
    assert engine.tracker.image_ids() == [] and engine.tracker.score(IMAGE_ID, 0) == 0
    assert send("someone-else", "m-2") == HANDLED
    assert count(metrics, "image.send", "handled") == 1
    assert engine.tracker.image_ids() == [IMAGE_ID]


def test_listener_sees_its_connection_drop_and_come_back(
        loop: asyncio.AbstractEventLoop, tmp_path: Any) -> None:
    """The private path to the rabbit driver's kombu connection exists in
    this oslo.messaging, and its state follows a drop and the driver's own
    reconnection (kombu's in-memory transport stands in for RabbitMQ)."""
    conf_file = tmp_path / "warmer.conf"
    conf_file.write_text("[DEFAULT]\ntransport_url = kombu+memory:////\n"
                         "[oslo_messaging_rabbit]\nkombu_reconnect_delay = 0.5\n")
    conf = cfg.ConfigOpts()
    bus_conf.register_opts(conf)
    conf(["--config-file", str(conf_file)])
    bridge, _, _ = make(loop, ok)
    listener = BusListener(conf, bridge)
    assert listener.connected() is False  # not started
    listener.start()
    try:
        assert listener.connected() is True
        kombu_conn = listener._conn.connection.connection
        kombu_conn.collect()  # what kombu does when a read or write fails
        assert listener.connected() is False
        deadline = time.monotonic() + 15
        while not listener.connected() and time.monotonic() < deadline:
            time.sleep(0.05)
        assert listener.connected() is True, "the driver did not reconnect"
    finally:
        listener.stop()
    assert listener.connected() is False


class _Raw:
    def __init__(self, channel: object, tag: int, log: list[tuple[str, int, bool]],
                 fail: bool = False) -> None:
        self.channel, self.tag, self.log, self.fail = channel, tag, log, fail
        self.body = b"{}"

    def ack(self, multiple: bool = False) -> None:
        self.log.append(("ack", self.tag, multiple))

    def requeue(self) -> None:
        if self.fail:
            raise OSError("channel gone")
        self.log.append(("requeue", self.tag, False))


class _Msg:
    def __init__(self, raw: _Raw) -> None:
        self._raw_message = raw


class _KombuConn:
    connected = False  # nothing for a keepalive to do

    def __init__(self, log: list[tuple[str, int, bool]]) -> None:
        self.log = log

    def collect(self) -> None:
        self.log.append(("collect", 0, False))


class _Driver:
    def __init__(self, kombu_conn: _KombuConn) -> None:
        self.connection = kombu_conn


class _Conn:
    """What the listener uses of the rabbit driver's connection."""

    def __init__(self, channel: object, log: list[tuple[str, int, bool]]) -> None:
        self.channel = channel
        self.connection = _Driver(_KombuConn(log))  # the pool's context wraps it


def _listener(loop: asyncio.AbstractEventLoop, sink: Any = ok) -> tuple[BusListener, Metrics]:
    conf = cfg.ConfigOpts()
    bus_conf.register_opts(conf)
    conf([])
    bridge, metrics, _ = make(loop, sink)
    return BusListener(conf, bridge), metrics


def test_a_batch_is_settled_by_requeues_then_one_multiple_ack_on_the_current_channel(
        loop: asyncio.AbstractEventLoop) -> None:
    """Requeues first (a multiple ack would otherwise ack them too); messages
    of a channel the connection replaced are left for the broker to
    redeliver (their delivery tags mean nothing on the new channel)."""
    listener, _ = _listener(loop)
    old, new = object(), object()
    log: list[tuple[str, int, bool]] = []
    listener._conn = _Conn(old, log)
    listener._received(_Msg(_Raw(old, 7, log)))
    listener._conn.channel = new
    for tag in (1, 2, 3, 4):
        listener._received(_Msg(_Raw(new, tag, log)))
    batch = listener._pending
    listener._settle(batch, [HANDLED, HANDLED, REQUEUE, HANDLED, REQUEUE])
    assert log == [("requeue", 2, False), ("requeue", 4, False), ("ack", 3, True)]


def test_a_batch_whose_hand_off_raised_is_requeued_before_the_next_multiple_ack(
        loop: asyncio.AbstractEventLoop, monkeypatch: pytest.MonkeyPatch) -> None:
    """The review's message loss: a batch left unsettled was acked, unseen,
    by the next batch's ``multiple`` ack."""
    listener, _ = _listener(loop)
    channel = object()
    log: list[tuple[str, int, bool]] = []
    listener._conn = _Conn(channel, log)
    real = listener_mod.dispatch_batch
    calls: list[int] = []

    def fails_once(*args: Any) -> list[str]:
        calls.append(1)
        if len(calls) == 1:
            raise RuntimeError("bug")
        return real(*args)
    monkeypatch.setattr(listener_mod, "dispatch_batch", fails_once)
    for tag in (1, 2):
        listener._received(_Msg(_Raw(channel, tag, log)))
    listener._hand_off()
    listener._received(_Msg(_Raw(channel, 3, log)))
    listener._hand_off()
    assert log == [("requeue", 1, False), ("requeue", 2, False), ("ack", 3, True)]


def test_a_settle_that_fails_gives_the_channel_up_and_never_acks_on_it_again(
        loop: asyncio.AbstractEventLoop) -> None:
    listener, _ = _listener(loop)
    channel = object()
    log: list[tuple[str, int, bool]] = []
    listener._conn = _Conn(channel, log)
    listener._received(_Msg(_Raw(channel, 1, log, fail=True)))
    listener._received(_Msg(_Raw(channel, 2, log)))
    listener._settle(listener._pending, [REQUEUE, HANDLED])
    listener._pending = []
    assert log == [("collect", 0, False)]  # the broker redelivers both
    listener._received(_Msg(_Raw(channel, 3, log)))  # still the dead channel
    listener._settle(listener._pending, [HANDLED])
    assert log == [("collect", 0, False)]  # tag 3 would have acked 1 and 2
    listener._pending = []
    fresh = object()
    listener._conn.channel = fresh  # the driver reconnected
    listener._received(_Msg(_Raw(fresh, 1, log)))
    listener._settle(listener._pending, [HANDLED])
    assert log[-1] == ("ack", 1, True)


def test_listener_consumes_acks_and_counts_on_a_real_driver(
        loop: asyncio.AbstractEventLoop, tmp_path: Any) -> None:
    """oslo.messaging's own Notifier and rabbit driver on kombu's in-memory
    transport: the queue is declared by the driver, messages are handed off
    in batches and acked (a restarted listener gets nothing again)."""
    import oslo_messaging

    conf_file = tmp_path / "warmer.conf"
    conf_file.write_text("[DEFAULT]\ntransport_url = kombu+memory:////\n")
    conf = cfg.ConfigOpts()
    bus_conf.register_opts(conf)
    conf(["--config-file", str(conf_file)])
    bridge, metrics, seen = make(loop, ok)
    listener = BusListener(conf, bridge)
    listener.start()
    transport = oslo_messaging.get_notification_transport(conf)
    try:
        notifier = oslo_messaging.Notifier(transport, publisher_id="image.h",
                                           driver="messagingv2", topics=["notifications"])
        for n in range(50):
            notifier.info({}, "image.activate", {**IMAGE, "name": f"n{n}"})
        notifier.info({}, "image.activate", {"id": "not-a-uuid", "status": "active"})
        deadline = time.monotonic() + 10
        while count(metrics, "image.activate", "handled") < 50 and time.monotonic() < deadline:
            time.sleep(0.02)
    finally:
        listener.stop()
    assert count(metrics, "image.activate", "handled") == 50 and len(seen) == 50
    deadline = time.monotonic() + 5
    while count(metrics, "image.activate", "malformed") < 1 and time.monotonic() < deadline:
        time.sleep(0.02)
    assert count(metrics, "image.activate", "malformed") == 1
    again, metrics2, seen2 = make(loop, ok)
    listener = BusListener(conf, again)
    listener.start()
    time.sleep(0.3)
    listener.stop()
    transport.cleanup()
    assert seen2 == []  # everything was acked
def test_the_hand_off_keeps_the_connection_alive_while_it_waits(
        loop: asyncio.AbstractEventLoop, monkeypatch: pytest.MonkeyPatch) -> None:
    bridge, _, _ = make(loop, ok, timeout=0.5)
    monkeypatch.setattr(bridge, "SLICE", 0.05)
    ticks: list[float] = []
    bridge.keepalive = lambda: ticks.append(time.monotonic())
    loop.call_soon_threadsafe(time.sleep, 0.8)
    assert bridge.deliver("image.h", "image.activate", IMAGE, {}) == REQUEUE
    assert len(ticks) >= 5


class _Heartbeats:
    """The rabbit driver's connection, as far as heartbeats go."""

    def __init__(self, channel: object, log: list[tuple[str, int, bool]]) -> None:
        self.channel = channel
        self.connection = self  # context, driver and kombu connection in one
        self.connected = True
        self.log = log

    def _heartbeat_supported_and_enabled(self) -> bool:
        return True

    def _heartbeat_check(self) -> None:
        self.log.append(("heartbeat", 0, False))

    def drain_events(self, timeout: float) -> None:
        raise TimeoutError()


def test_a_long_hand_off_keeps_sending_and_reading_heartbeats(
        loop: asyncio.AbstractEventLoop, monkeypatch: pytest.MonkeyPatch) -> None:
    """A listening connection has no heartbeat thread: while the consumer
    thread waits for the loop, it must keep the heartbeats going itself."""
    listener, _ = _listener(loop)
    monkeypatch.setattr(listener._bridge, "SLICE", 0.05)
    monkeypatch.setattr(listener._bridge, "_handoff_timeout", 0.6)
    channel = object()
    log: list[tuple[str, int, bool]] = []
    listener._conn = _Heartbeats(channel, log)
    listener._bridge.keepalive = listener._keepalive  # what start() wires
    raw = _Raw(channel, 1, log)
    message = _Delivered(_message())
    message._raw_message = raw
    listener._received(message)
    loop.call_soon_threadsafe(time.sleep, 1.0)  # a stalled loop
    listener._hand_off()
    assert log.index(("requeue", 1, False)) >= 5  # heartbeats while it waited


class _Delivered(dict[str, Any]):
    _raw_message: _Raw


@pytest.mark.parametrize("configured,prefetch,batch", [(0, 32, 16), (10, 10, 5)])
def test_an_unlimited_prefetch_is_bounded_for_the_listening_connection(
        loop: asyncio.AbstractEventLoop, tmp_path: Any, configured: int, prefetch: int,
        batch: int) -> None:
    """oslo.messaging's default prefetch, 0, lets the broker push a whole
    backlog into one daemon of the pool."""
    conf_file = tmp_path / "warmer.conf"
    conf_file.write_text("[DEFAULT]\ntransport_url = kombu+memory:////\n"
                         "[bus]\nbatch_size = 16\n"
                         f"[oslo_messaging_rabbit]\nrabbit_qos_prefetch_count = {configured}\n")
    conf = cfg.ConfigOpts()
    bus_conf.register_opts(conf)
    conf(["--config-file", str(conf_file)])
    bridge, _, _ = make(loop, ok)
    listener = BusListener(conf, bridge)
    listener.start()
    try:
        assert listener._conn.rabbit_qos_prefetch_count == prefetch
        assert listener._batch == batch
    finally:
        listener.stop()


def test_readiness_is_false_while_the_listener_stops(
        loop: asyncio.AbstractEventLoop, tmp_path: Any) -> None:
    """connected() read the driver's connection after stop() had closed it
    (AttributeError: None), and answered None, which readiness takes as up."""
    conf_file = tmp_path / "warmer.conf"
    conf_file.write_text("[DEFAULT]\ntransport_url = kombu+memory:////\n")
    conf = cfg.ConfigOpts()
    bus_conf.register_opts(conf)
    conf(["--config-file", str(conf_file)])
    bridge, _, _ = make(loop, ok)
    listener = BusListener(conf, bridge)
    listener.start()
    answers: list[bool | None] = []
    conn = listener._conn
    close = conn.close

    def closing() -> None:
        close()
        answers.append(listener.connected())  # stop() is not over yet
    conn.close = closing
    listener.stop()
    assert answers == [False]


def test_a_batch_requeued_whole_backs_off_before_consuming_again(
        loop: asyncio.AbstractEventLoop, monkeypatch: pytest.MonkeyPatch) -> None:
    """A closed loop (or a draining or stalled one) requeues every batch;
    consuming again at once would loop on the same messages."""
    closed = asyncio.new_event_loop()
    closed.close()
    listener, _ = _listener(closed)
    channel = object()
    log: list[tuple[str, int, bool]] = []
    listener._conn = _Heartbeats(channel, log)
    waits: list[float] = []

    def wait(timeout: float) -> bool:
        waits.append(timeout)
        time.sleep(timeout)
        return False
    monkeypatch.setattr(listener._stopping, "wait", wait)
    monkeypatch.setattr(listener._bridge, "SLICE", 10.0)
    for tag in (1, 2, 3):
        message = _Delivered(_message())
        message._raw_message = _Raw(channel, tag, log)
        listener._received(message)
        listener._hand_off()
    assert [e for e in log if e[0] == "requeue"] == [("requeue", t, False) for t in (1, 2, 3)]
    assert len(waits) == 3 and waits[0] > 0.05 and waits[2] > 3 * waits[0]
