"""The listener's consumer thread: sessions on the rabbit driver's
connection, the pipelined hand-off, and how messages are settled (acks
only for folded batches, in order; requeues before the ack that follows;
nothing on a channel the connection no longer uses)."""

from __future__ import annotations

import asyncio
import json
import socket
import threading
import time
from collections.abc import Callable
from typing import Any

import amqp
import amqp.exceptions
import amqp.transport
import kombu
import kombu.compression
import pytest
from oslo_config import cfg

from tests.unit.test_bridge import IMAGE, count, envelope_body, make, ok
from warmer.bus import listener as listener_mod
from warmer.bus.listener import REQUEUE, Bridge, BusListener
from warmer.conf import bus as bus_conf
from warmer.events import Event, ImageChanged
from warmer.metrics import Metrics

Log = list[tuple[str, int, bool]]


class _Channel:
    """A channel as the listener settles on it."""

    def __init__(self, log: Log, fail: bool = False) -> None:
        self.log, self.fail = log, fail

    def basic_ack(self, delivery_tag: int, multiple: bool = False) -> None:
        self.log.append(("ack", delivery_tag, multiple))

    def basic_reject(self, delivery_tag: int, requeue: bool) -> None:
        if self.fail:
            raise OSError("channel gone")
        self.log.append(("requeue", delivery_tag, False))


class _Raw:
    """A message as py-amqp delivers it: undecoded. Its image's name is its
    delivery tag, so that a sink can tell which one it folds."""

    content_type = "application/json"
    headers: dict[str, Any] | None = None
    warmer_generation = 0  # the listener's first; _received stamps its own

    def __init__(self, channel: object, tag: int, body: Any = None) -> None:
        self.channel, self.delivery_tag = channel, tag
        self.body = body if body is not None else envelope_body(_notification(tag))


def _notification(tag: int) -> dict[str, Any]:
    return {"priority": "INFO", "event_type": "image.activate", "publisher_id": "image.h",
            "payload": {**IMAGE, "name": str(tag)}, "message_id": f"m{tag}",
            "timestamp": "2026-11-25 10:00:00"}


class _KombuConn:
    connected = False  # nothing for a keepalive to do

    def __init__(self, log: Log) -> None:
        self.log = log

    def collect(self) -> None:
        self.log.append(("collect", 0, False))


class _Driver:
    def __init__(self, kombu_conn: _KombuConn) -> None:
        self.connection = kombu_conn


class _Conn:
    """What the listener uses of the rabbit driver's connection."""

    def __init__(self, channel: object, log: Log) -> None:
        self.channel = channel
        self.connection = _Driver(_KombuConn(log))  # the pool's context wraps it


def _listener(loop: asyncio.AbstractEventLoop, sink: Any = ok,
              timeout: float = 2.0) -> tuple[BusListener, Metrics]:
    conf = cfg.ConfigOpts()
    bus_conf.register_opts(conf)
    conf([])
    bridge, metrics, _ = make(loop, sink, timeout)
    return BusListener(conf, bridge), metrics


def _wired(loop: asyncio.AbstractEventLoop, sink: Any = ok, timeout: float = 2.0,
           fail: bool = False) -> tuple[BusListener, Metrics, Log, _Channel]:
    """A listener on a fake connection whose channel logs what is settled."""
    listener, metrics = _listener(loop, sink, timeout)
    log: Log = []
    channel = _Channel(log, fail)
    listener._conn = _Conn(channel, log)
    return listener, metrics, log, channel


def _memory_conf(tmp_path: Any, extra: str = "") -> cfg.ConfigOpts:
    conf_file = tmp_path / "warmer.conf"
    conf_file.write_text(f"[DEFAULT]\ntransport_url = kombu+memory:////\n{extra}")
    conf = cfg.ConfigOpts()
    bus_conf.register_opts(conf)
    conf(["--config-file", str(conf_file)])
    return conf


def acked_only_after_folded(log: Log) -> None:
    """Every ``multiple`` ack covers only tags that were folded, or requeued,
    before it: nothing the loop has not folded is ever acked."""
    settled: set[int] = set()
    for what, tag, multiple in log:
        if what in ("fold", "requeue"):
            settled.add(tag)
        elif what == "ack":
            assert multiple
            unsettled = [t for t in range(1, tag + 1) if t not in settled]
            assert unsettled == [], f"ack of {tag} covers {unsettled}, not folded yet"
            settled.update(range(1, tag + 1))


def test_a_batch_is_settled_by_requeues_then_one_multiple_ack_on_the_current_channel(
        loop: asyncio.AbstractEventLoop) -> None:
    """Requeues first (a multiple ack would otherwise ack them too); messages
    of a channel the connection replaced are left for the broker to
    redeliver (their delivery tags mean nothing on the new channel)."""
    listener, _ = _listener(loop)
    log: Log = []
    old, new = _Channel(log), _Channel(log)
    listener._conn = _Conn(new, log)
    batch = [_Raw(old, 7)] + [_Raw(new, tag) for tag in (1, 2, 3, 4)]
    listener._settle(batch, ["handled", "handled", REQUEUE, "handled", REQUEUE])
    assert log == [("requeue", 2, False), ("requeue", 4, False), ("ack", 3, True)]


def test_the_next_batch_is_parsed_while_the_loop_folds_and_acks_follow_the_folds(
        loop: asyncio.AbstractEventLoop, monkeypatch: pytest.MonkeyPatch) -> None:
    """The pipelined hand-off: while the loop folds batch 1, the consumer
    thread parses batch 2; batch 1 is acked only once folded, and batch 2
    is submitted only after that ack, so acks go in order and each covers
    folded messages only."""
    log: Log = []
    release = threading.Event()

    def sink(event: Event) -> str:
        assert isinstance(event, ImageChanged) and event.image.name is not None
        if event.image.name == "1":
            release.wait(5)  # the loop is busy with batch 1
        log.append(("fold", int(event.image.name), False))
        return "handled"
    listener, metrics = _listener(loop, sink)
    channel = _Channel(log)
    listener._conn = _Conn(channel, log)
    prepared: list[int] = []
    real_prepare = listener_mod.prepare_batch

    def prepare(bridge: Bridge, messages: list[Any], sizes: list[Any]) -> Any:
        prepared.append(len(messages))
        return real_prepare(bridge, messages, sizes)
    monkeypatch.setattr(listener_mod, "prepare_batch", prepare)
    for tag in (1, 2):
        listener._received(_Raw(channel, tag))
    listener._hand_off()  # batch 1 goes to the loop, which is stuck on it
    for tag in (3, 4, 5):
        listener._received(_Raw(channel, tag))
    second = threading.Thread(target=listener._hand_off)
    second.start()
    deadline = time.monotonic() + 5
    while len(prepared) < 2 and time.monotonic() < deadline:
        time.sleep(0.01)
    assert prepared == [2, 3]  # batch 2 parsed while batch 1 is on the loop
    time.sleep(0.1)
    assert second.is_alive() and log == []  # nothing acked, nothing folded yet
    release.set()
    second.join(5)
    listener._flush()
    assert [e for e in log if e[0] == "ack"] == [("ack", 2, True), ("ack", 5, True)]
    assert log.index(("ack", 2, True)) < log.index(("fold", 3, False))
    acked_only_after_folded(log)
    assert count(metrics, "image.activate", "handled") == 5


def test_a_batch_the_loop_did_not_take_in_time_is_requeued_before_the_next_ack(
        loop: asyncio.AbstractEventLoop) -> None:
    """The loop stalls past handoff_timeout with batch 1: the consumer thread
    takes it back (requeued, never folded, even once the loop is free), and
    the next batch's multiple ack comes after those requeues."""
    log: Log = []

    def sink(event: Event) -> str:
        assert isinstance(event, ImageChanged) and event.image.name is not None
        log.append(("fold", int(event.image.name), False))
        return "handled"
    listener, metrics = _listener(loop, sink, timeout=1.0)
    channel = _Channel(log)
    listener._conn = _Conn(channel, log)
    loop.call_soon_threadsafe(time.sleep, 1.4)  # the loop is stuck
    for tag in (1, 2):
        listener._received(_Raw(channel, tag))
    listener._hand_off()
    listener._received(_Raw(channel, 3))
    listener._hand_off()  # waits for batch 1: taken back after 1 s
    assert log == [("requeue", 1, False), ("requeue", 2, False)]
    listener._flush()  # batch 3: the loop is free before its own 1 s
    assert log == [("requeue", 1, False), ("requeue", 2, False), ("fold", 3, False),
                   ("ack", 3, True)]
    assert count(metrics, "image.activate", "requeued") == 2


def test_a_batch_whose_hand_off_raised_is_requeued_before_the_next_multiple_ack(
        loop: asyncio.AbstractEventLoop, monkeypatch: pytest.MonkeyPatch) -> None:
    """The review's message loss: a batch left unsettled was acked, unseen,
    by the next batch's ``multiple`` ack."""
    listener, _, log, channel = _wired(loop)
    real = listener_mod.prepare_batch
    calls: list[int] = []

    def fails_once(*args: Any) -> Any:
        calls.append(1)
        if len(calls) == 1:
            raise RuntimeError("bug")
        return real(*args)
    monkeypatch.setattr(listener_mod, "prepare_batch", fails_once)
    for tag in (1, 2):
        listener._received(_Raw(channel, tag))
    listener._hand_off()
    listener._received(_Raw(channel, 3))
    listener._hand_off()
    listener._flush()
    assert log == [("requeue", 1, False), ("requeue", 2, False), ("ack", 3, True)]


def test_an_undecodable_message_is_acked_with_its_batch_and_counted_malformed(
        loop: asyncio.AbstractEventLoop) -> None:
    listener, metrics, log, channel = _wired(loop)
    listener._received(_Raw(channel, 1))
    listener._received(_Raw(channel, 2, body=b"\x80 not json"))
    listener._flush()
    assert log == [("ack", 2, True)]
    assert count(metrics, "other", "malformed") == 1
    assert count(metrics, "image.activate", "handled") == 1


def test_a_compressed_notification_is_decompressed_as_kombu_does(
        loop: asyncio.AbstractEventLoop) -> None:
    """A publisher with ``[oslo_messaging_rabbit] kombu_compression = gzip``:
    kombu compresses the body and names the compression in a header, which
    the driver's consumer would decompress by."""
    listener, metrics, log, channel = _wired(loop)
    body, compression = kombu.compression.compress(
        envelope_body(_notification(1)).encode(), "gzip")
    message = _Raw(channel, 1, body=body)
    message.headers = {"compression": compression}
    listener._received(message)
    listener._flush()
    assert log == [("ack", 1, True)]
    assert count(metrics, "image.activate", "handled") == 1
    assert count(metrics, "other", "malformed") == 0


def test_raw_bodies_are_dropped_once_decoded(loop: asyncio.AbstractEventLoop) -> None:
    """Two batches of up to batch_size bodies (1 MiB each) would otherwise be
    held until acked."""
    listener, metrics, log, channel = _wired(loop)
    messages = [_Raw(channel, tag) for tag in (1, 2)]
    for message in messages:
        listener._received(message)
    listener._hand_off()
    assert [message.body for message in messages] == [None, None]
    listener._flush()
    assert log == [("ack", 2, True)]
    assert count(metrics, "image.activate", "handled") == 2


def test_a_bug_while_settling_gives_the_channel_up_and_acks_nothing(
        loop: asyncio.AbstractEventLoop, monkeypatch: pytest.MonkeyPatch) -> None:
    """The consumer thread survives a bug between sessions; what it held is
    left to the broker, and nothing is acked on that channel again."""
    listener, _, log, channel = _wired(loop)
    sessions: list[float] = []

    def drain(wait: float) -> None:
        sessions.append(wait)
        if len(sessions) <= 2:
            listener._received(_Raw(channel, len(sessions)))
        else:
            listener._stopping.set()

    def broken(batch: Any) -> None:
        raise RuntimeError("bug")
    monkeypatch.setattr(listener, "_drain", drain)
    monkeypatch.setattr(listener._bridge, "poll", broken)
    listener._consume()
    assert log == [("collect", 0, False)]
    assert listener._pending == [] and listener._inflight is None


def test_a_settle_that_fails_gives_the_channel_up_and_never_acks_on_it_again(
        loop: asyncio.AbstractEventLoop) -> None:
    listener, _, log, channel = _wired(loop, fail=True)
    listener._settle([_Raw(channel, 1), _Raw(channel, 2)], [REQUEUE, "handled"])
    assert log == [("collect", 0, False)]  # the broker redelivers both
    listener._settle([_Raw(channel, 3)], ["handled"])  # still the dead channel
    assert log == [("collect", 0, False)]  # tag 3 would have acked 1 and 2
    fresh = _Channel(log)
    listener._conn.channel = fresh  # the driver reconnected
    message = _Raw(fresh, 1)
    listener._received(message)  # stamped with the new generation
    listener._settle([message], ["handled"])
    assert log[-1] == ("ack", 1, True)


class _Socket:
    def __init__(self, timeout: float | None, calls: list[float | None]) -> None:
        self.timeout, self.calls = timeout, calls

    def gettimeout(self) -> float | None:
        return self.timeout

    def settimeout(self, timeout: float | None) -> None:
        self.calls.append(timeout)
        self.timeout = timeout


class _Deliveries:
    """A kombu connection whose socket holds ``n`` messages, then nothing."""

    channel_errors = ()

    def __init__(self, received: Callable[[Any], None], n: int,
                 calls: list[float | None]) -> None:
        self.received, self.left = received, n
        self.connection = self  # amqp's connection and its transport in one
        self.transport = self
        self.sock = _Socket(60.0, calls)
        self.timeouts: list[float] = []

    def drain_events(self, timeout: float) -> None:
        self.timeouts.append(timeout)
        if not self.left:
            raise TimeoutError()
        self.left -= 1
        self.received(_Raw(None, 1))


class _Stopped:
    _consume_loop_stopped = False


class _Revives(_Deliveries):
    """A kombu connection on py-amqp whose channel the broker closes
    (``None`` in ``tags``): py-amqp revives it *in place*, the same object,
    and its delivery tags start again at 1."""

    channel_errors = (amqp.exceptions.ChannelError,)
    recoverable_channel_errors = (amqp.exceptions.RecoverableChannelError,)

    def __init__(self, received: Callable[[Any], None], channel: object,
                 tags: list[int | None]) -> None:
        super().__init__(received, 0, [])
        self.channel, self.tags = channel, tags
        self.default_channel = object()  # kombu's own channel: not the consumer's

    def drain_events(self, timeout: float) -> None:
        if not self.tags:
            raise TimeoutError()
        tag = self.tags.pop(0)
        if tag is None:  # a double ack, say: the broker closes the channel
            raise amqp.exceptions.PreconditionFailed(
                "PRECONDITION_FAILED - unknown delivery tag 9", method_sig=(60, 80),
                reply_code=406)
        self.received(_Raw(self.channel, tag))


def test_nothing_taken_before_a_channel_error_is_settled_on_the_revived_channel(
        loop: asyncio.AbstractEventLoop, caplog: pytest.LogCaptureFixture) -> None:
    """A batch on the loop (tags 1-3) and one pending (4, 5) when the broker
    closes the channel; py-amqp revives the same channel object and the
    broker redelivers from tag 1. Acking the old batches with their tags
    would ack messages of the revived channel never folded (and close it
    again); the listener leaves them to the broker, and folds only what
    came since."""
    listener, _, log, channel = _wired(loop)
    listener._batch = 3
    kombu_conn = _Revives(listener._received, channel, [1, 2, 3, 4, 5, None, 1, 2])
    listener._read(_Stopped(), kombu_conn, listener.GAP)
    listener._hand_off()  # 1-3 on the loop
    with pytest.raises(amqp.exceptions.ChannelError):
        listener._read(_Stopped(), kombu_conn, listener.GAP)  # 4, 5, then closed
    listener._read(_Stopped(), kombu_conn, listener.GAP)  # 1, 2 on the revived one
    listener._flush()
    assert [entry for entry in log if entry[0] != "collect"] == [("ack", 2, True)]
    # The broker's reason, which the driver's own log line leaves out.
    assert [r.getMessage() for r in caplog.records
            if "closed the bus channel" in r.getMessage()
            ] == ["the broker closed the bus channel (PreconditionFailed: Basic.ack: (406) "
                  "PRECONDITION_FAILED - unknown delivery tag 9); it is reopened, and what "
                  "was taken on it and not acked is redelivered"]



def test_a_session_sets_the_socket_timeout_once_not_per_frame_and_restores_it(
        loop: asyncio.AbstractEventLoop) -> None:
    """py-amqp changes the socket's timeout twice per frame unless it already
    is the one asked for; the session sets it when its wait changes (idle,
    then GAP once something is pending) and puts the driver's back."""
    listener, _ = _listener(loop)
    calls: list[float | None] = []
    kombu_conn = _Deliveries(listener._received, 5, calls)
    listener._read(_Stopped(), kombu_conn, listener.IDLE_POLL)
    assert len(listener._pending) == 5
    assert calls == [listener.IDLE_POLL, listener.GAP, 60.0]
    assert kombu_conn.timeouts == [listener.IDLE_POLL] + [listener.GAP] * 5


def test_a_session_returns_once_the_batch_is_full(loop: asyncio.AbstractEventLoop) -> None:
    listener, _ = _listener(loop)
    listener._batch = 3
    kombu_conn = _Deliveries(listener._received, 10, [])
    listener._read(_Stopped(), kombu_conn, listener.IDLE_POLL)
    assert len(listener._pending) == 3 and kombu_conn.left == 7


def test_read_ahead_makes_one_recv_serve_several_frames_of_py_amqp() -> None:
    """On py-amqp's own transport: frames come out whole and in order, and
    what one ``recv`` returned beyond a frame serves the next ones."""
    ours, broker = socket.socketpair()
    try:
        transport = amqp.transport.TCPTransport("localhost:5672")
        transport.sock = ours
        transport._setup_transport()
        recvs: list[int] = []
        real = transport._quick_recv

        def counting(n: int) -> bytes:
            recvs.append(n)
            return real(n)
        transport._quick_recv = counting
        connection = type("C", (), {"transport": transport})()
        kombu_conn = type("K", (), {"connection": connection})()
        listener_mod._read_ahead(kombu_conn)
        listener_mod._read_ahead(kombu_conn)  # once only
        frames = [(1, 1, b"x" * 50), (2, 1, b"y" * 120), (3, 1, b"z" * 3000)] * 3
        broker.sendall(b"".join(bytes([kind]) + channel.to_bytes(2, "big")
                                + len(payload).to_bytes(4, "big") + payload + b"\xce"
                                for kind, channel, payload in frames))
        assert [transport.read_frame() for _ in frames] == frames
        assert len(recvs) <= 2 and min(recvs) >= listener_mod.READ_AHEAD
    finally:
        ours.close()
        broker.close()


def test_an_oslo_messaging_without_the_consumer_callback_is_refused() -> None:
    class Consumer:
        def consume(self) -> None: ...
    driver = type("D", (), {"_consumers": {Consumer(): 1}})()
    with pytest.raises(RuntimeError, match="Consumer._callback"):
        listener_mod._check_driver(driver)
    with pytest.raises(RuntimeError, match="none declared"):
        listener_mod._check_driver(type("D", (), {"_consumers": {}})())


def test_listener_sees_its_connection_drop_and_come_back_and_consumes_again(
        loop: asyncio.AbstractEventLoop, tmp_path: Any) -> None:
    """The private path to the rabbit driver's kombu connection exists in
    this oslo.messaging, its state follows a drop and the driver's own
    reconnection (kombu's in-memory transport stands in for RabbitMQ), and
    the session re-registers the consumers after it."""
    import oslo_messaging

    conf = _memory_conf(tmp_path, "[oslo_messaging_rabbit]\nkombu_reconnect_delay = 0.5\n")
    bridge, metrics, _ = make(loop, ok)
    listener = BusListener(conf, bridge)
    assert listener.connected() is False  # not started
    listener.start()
    transport = oslo_messaging.get_notification_transport(conf)
    try:
        assert listener.connected() is True
        kombu_conn = listener._conn.connection.connection
        kombu_conn.collect()  # what kombu does when a read or write fails
        assert listener.connected() is False
        deadline = time.monotonic() + 15
        while not listener.connected() and time.monotonic() < deadline:
            time.sleep(0.05)
        assert listener.connected() is True, "the driver did not reconnect"
        notifier = oslo_messaging.Notifier(transport, publisher_id="image.h",
                                           driver="messagingv2", topics=["notifications"])
        notifier.info({}, "image.activate", IMAGE)
        deadline = time.monotonic() + 10
        while count(metrics, "image.activate", "handled") < 1 and time.monotonic() < deadline:
            time.sleep(0.02)
        assert count(metrics, "image.activate", "handled") == 1
    finally:
        listener.stop()
        transport.cleanup()
    assert listener.connected() is False


def test_listener_consumes_acks_and_counts_on_a_real_driver(
        loop: asyncio.AbstractEventLoop, tmp_path: Any) -> None:
    """oslo.messaging's own Notifier and rabbit driver on kombu's in-memory
    transport: the queue is declared by the driver, messages are handed off
    in batches and acked (a restarted listener gets nothing again), and a
    body that is not JSON is acked as malformed, not rejected by the
    driver."""
    import oslo_messaging

    conf = _memory_conf(tmp_path)
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
        with kombu.Connection("memory://") as conn:
            conn.Producer().publish(b"{not json", exchange="glance",
                                    routing_key="notifications.info",
                                    content_type="application/json",
                                    content_encoding="binary")
        deadline = time.monotonic() + 10
        while (count(metrics, "image.activate", "handled") < 50
               or count(metrics, "other", "malformed") < 1) and time.monotonic() < deadline:
            time.sleep(0.02)
    finally:
        listener.stop()
    assert count(metrics, "image.activate", "handled") == 50 and len(seen) == 50
    assert count(metrics, "other", "malformed") == 1
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

    def __init__(self, channel: object, log: Log) -> None:
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


class _Consumer:
    def __init__(self, log: Log) -> None:
        self.log = log

    def consume(self, driver: Any, tag: int) -> None:
        self.log.append(("consumed", tag, False))


class _Ensuring(_Heartbeats):
    """The rabbit driver's connection around a session: ``ensure()`` runs it
    and, on an error, calls the recoverable callback (where the driver
    re-registers consumers) and runs it again. Its first heartbeat check
    finds the broker silent."""

    _consume_loop_stopped = False

    def __init__(self, kombu_conn: Any, log: Log) -> None:
        super().__init__(None, log)
        self.connection = kombu_conn
        self._connection_lock = threading.Lock()
        self._consumers = {_Consumer(log): 1}
        self._new_tags: set[int] = set()
        self.fail = True
        self.qos_on: list[object] = []  # the channels the prefetch was set on

    def _heartbeat_check(self) -> None:
        super()._heartbeat_check()
        if self.fail:
            self.fail = False
            raise amqp.exceptions.ConnectionForced("Too many heartbeats missed")

    def _set_qos(self, channel: object) -> None:
        self.log.append(("qos", 0, False))
        self.qos_on.append(channel)

    def ensure(self, method: Callable[[], None], recoverable_error_callback: Any,
               error_callback: Any) -> None:
        try:
            method()
        except (amqp.exceptions.ConnectionForced,
                amqp.exceptions.RecoverableChannelError) as exc:
            self.log.append(("recover", 0, False))
            recoverable_error_callback(exc)
            method()


def test_missed_heartbeats_in_a_session_go_through_the_drivers_recovery(
        loop: asyncio.AbstractEventLoop) -> None:
    """A broker gone silent makes the heartbeat check raise; it must reach
    the driver's ensure() (which reconnects and re-registers the consumers),
    not be swallowed, or the listener would wait on a dead connection."""
    listener, _ = _listener(loop)
    log: Log = []
    kombu_conn = _Deliveries(listener._received, 0, [])
    kombu_conn.connected = True  # type: ignore[attr-defined]
    driver = _Ensuring(kombu_conn, log)
    listener._conn = type("Context", (), {"connection": driver})()
    listener._drain(0.01)
    assert log == [("heartbeat", 0, False), ("recover", 0, False), ("qos", 0, False),
                   ("consumed", 1, False)]


def test_a_channel_reopened_in_place_gets_its_prefetch_before_its_consumers(
        loop: asyncio.AbstractEventLoop) -> None:
    """py-amqp reopens a channel the broker closed as the same object, so the
    driver does not set its prefetch again: without it the broker would
    push the whole queue into this daemon."""
    listener, _ = _listener(loop)
    log: Log = []
    channel = _Channel(log)
    kombu_conn = _Revives(listener._received, channel, [1, None])
    kombu_conn.connected = True  # type: ignore[attr-defined]
    driver = _Ensuring(kombu_conn, log)
    driver.fail = False
    driver.channel = channel
    listener._conn = type("Context", (), {"connection": driver, "channel": channel})()
    listener._drain(0.01)
    assert [entry for entry in log if entry[0] != "heartbeat"] == [
        ("recover", 0, False), ("qos", 0, False), ("consumed", 1, False)]
    assert driver.qos_on == [channel]  # the session's channel, not another
    assert listener._pending == []  # taken before the close: the broker redelivers it


def test_a_long_hand_off_keeps_sending_and_reading_heartbeats(
        loop: asyncio.AbstractEventLoop, monkeypatch: pytest.MonkeyPatch) -> None:
    """A listening connection has no heartbeat thread: while the consumer
    thread waits for the loop, it must keep the heartbeats going itself."""
    listener, _ = _listener(loop, timeout=0.6)
    monkeypatch.setattr(listener._bridge, "SLICE", 0.05)
    log: Log = []
    channel = _Channel(log)
    listener._conn = _Heartbeats(channel, log)
    listener._bridge.keepalive = listener._keepalive  # what start() wires
    listener._received(_Raw(channel, 1))
    loop.call_soon_threadsafe(time.sleep, 1.0)  # a stalled loop
    listener._flush()
    assert log.index(("requeue", 1, False)) >= 5  # heartbeats while it waited


def test_heartbeats_at_the_end_of_sessions_are_checked_at_most_every_slice(
        loop: asyncio.AbstractEventLoop, monkeypatch: pytest.MonkeyPatch) -> None:
    listener, _ = _listener(loop)
    monkeypatch.setattr(listener._bridge, "SLICE", 0.2)
    log: Log = []
    driver = _Heartbeats(_Channel(log), log)
    for _ in range(50):
        listener._heartbeat(driver)
    assert log == [("heartbeat", 0, False)]
    time.sleep(0.25)
    listener._heartbeat(driver)
    assert len(log) == 2


@pytest.mark.parametrize("configured,prefetch,batch", [(0, 32, 16), (10, 10, 5)])
def test_an_unlimited_prefetch_is_bounded_for_the_listening_connection(
        loop: asyncio.AbstractEventLoop, tmp_path: Any, configured: int, prefetch: int,
        batch: int) -> None:
    """oslo.messaging's default prefetch, 0, lets the broker push a whole
    backlog into one daemon of the pool."""
    conf = _memory_conf(tmp_path, "[bus]\nbatch_size = 16\n[oslo_messaging_rabbit]\n"
                                  f"rabbit_qos_prefetch_count = {configured}\n")
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
    bridge, _, _ = make(loop, ok)
    listener = BusListener(_memory_conf(tmp_path), bridge)
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
    log: Log = []
    channel = _Channel(log)
    listener._conn = _Heartbeats(channel, log)
    waits: list[float] = []

    def wait(timeout: float) -> bool:
        waits.append(timeout)
        time.sleep(timeout)
        return False
    monkeypatch.setattr(listener._stopping, "wait", wait)
    monkeypatch.setattr(listener._bridge, "SLICE", 10.0)
    for tag in (1, 2, 3):
        listener._received(_Raw(channel, tag))
        listener._hand_off()
    listener._flush()
    assert [e for e in log if e[0] == "requeue"] == [("requeue", t, False) for t in (1, 2, 3)]
    assert len(waits) == 3 and waits[0] > 0.05 and waits[2] > 3 * waits[0]


def test_the_body_size_is_counted_in_bytes() -> None:
    assert listener_mod._body_size(_Raw(None, 1, body="\U0001f600")) == 4
    assert listener_mod._body_size(_Raw(None, 1, body=b"abc")) == 3
    assert json.loads(_Raw(None, 1).body)["oslo.version"] == "2.0"


@pytest.mark.parametrize("owner,name", [
    ("oslo_messaging._drivers.impl_rabbit.Connection", "_heartbeat_check"),
    ("kombu.Connection", "maybe_switch_next"),
])
def test_a_library_without_a_private_name_the_listener_uses_is_refused_at_start(
        loop: asyncio.AbstractEventLoop, tmp_path: Any, monkeypatch: pytest.MonkeyPatch,
        owner: str, name: str) -> None:
    """Not a daemon that looks ready and fails every session."""
    monkeypatch.delattr(f"{owner}.{name}")
    bridge, _, _ = make(loop, ok)
    listener = BusListener(_memory_conf(tmp_path), bridge)
    try:
        with pytest.raises(RuntimeError, match=name):
            listener.start()
    finally:
        listener.stop()
    assert listener.connected() is False


class _CheckedConsumer:
    """What _check_driver asks of an oslo.messaging Consumer."""

    def _callback(self, message: Any) -> None: ...

    def consume(self, driver: Any, tag: int) -> None: ...


def test_py_amqp_without_its_transport_names_is_refused() -> None:
    class Transport:
        sock = socket.socket()

    amqp_conn = amqp.Connection.__new__(amqp.Connection)
    amqp_conn.transport = Transport()
    kombu_conn = kombu.Connection("memory://")
    kombu_conn._connection = amqp_conn
    driver = type("D", (), {
        "_new_tags": set(), "_consumers": {_CheckedConsumer(): 1},
        "_consume_loop_stopped": False,
        "_connection_lock": threading.Lock(), "_heartbeat_check": lambda: None,
        "_heartbeat_supported_and_enabled": lambda: False, "_set_qos": lambda c: None,
        "ensure": lambda: None,
        "channel": None, "connection": kombu_conn})()
    try:
        with pytest.raises(RuntimeError, match="_quick_recv"):
            listener_mod._check_driver(driver)
        Transport._quick_recv = Transport.sock.recv  # type: ignore[attr-defined]
        listener_mod._check_driver(driver)
    finally:
        Transport.sock.close()


def test_readiness_is_false_after_sessions_fail_in_a_row_until_one_succeeds(
        loop: asyncio.AbstractEventLoop, tmp_path: Any) -> None:
    bridge, _, _ = make(loop, ok)
    listener = BusListener(_memory_conf(tmp_path), bridge)
    drain = listener._drain
    failing = threading.Event()
    failing.set()

    def session(wait: float) -> None:
        if failing.is_set():
            raise listener_mod.driver_common.Timeout()
        drain(wait)
    listener._drain = session  # type: ignore[method-assign]
    listener.start()
    try:
        deadline = time.monotonic() + 5
        while listener._failed_sessions < listener.FAILED_SESSIONS - 1:
            assert time.monotonic() < deadline
            time.sleep(0.01)
        while listener.connected() and time.monotonic() < deadline:
            time.sleep(0.01)
        assert listener.connected() is False
        failing.clear()
        deadline = time.monotonic() + 5
        while not listener.connected() and time.monotonic() < deadline:
            time.sleep(0.01)
        assert listener.connected() is True
    finally:
        listener.stop()
