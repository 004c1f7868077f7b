"""The notification listener: oslo.messaging's rabbit connection, consumed
in batches, and bridged into the asyncio loop.

oslo.messaging has no asyncio executor, and its notification servers
(threading executor, even in batch mode) take the messages one at a time
through a poller, an executor and a dispatcher: here they topped out below
half of what a bare kombu consumer of the same queue does. So the listener
keeps everything oslo.messaging decides and drives the consumption itself:

* the connection is the rabbit driver's own, made as its notification
  listener makes it (``transport_url``, every ``[oslo_messaging_rabbit]``
  option: TLS, heartbeats, failover, reconnection and back-off,
  ``rabbit_qos_prefetch_count``, which warmer sets to twice
  ``[bus] batch_size`` when it is 0), and the queue is declared by the driver
  as for ``listen_for_notifications``: one queue named after the pool,
  bound to ``<topic>.<priority>`` (info, warn, error) on the Glance and
  Cinder exchanges, with the driver's durable, auto-delete, quorum and HA
  arguments;
* one consumer thread drains the socket and hands the messages to the loop
  in batches: all that is waiting, up to ``[bus] batch_size`` (half the
  prefetch when one is set), or what came within ``batch_linger``.
  Each message is parsed in that thread, then one
  ``loop.call_soon_threadsafe`` folds the whole batch into the engine on
  the loop (synchronously), and only then is anything acked (one
  ``basic.ack`` with ``multiple`` for the batch, after the requeues).

Ack and requeue rules, per message:

* handed off (the loop folded the event into its state): ack;
* unknown event type, or a priority warmer has no use for: ack, counted as
  ``ignored``;
* malformed (bad envelope, an unknown priority, missing or mistyped
  fields, an image id that is not a canonical UUID, oversized payload),
  and *any* exception raised while parsing, even one that is a bug of the
  parser: ack, logged in one bounded line (no traceback) and counted as
  ``malformed``. Never requeued, so a poison message cannot loop, and it
  never reaches the engine, so it never touches Ceph;
* a body that is not JSON, or an envelope the driver cannot decode: the
  rabbit driver logs "Failed to process message ... skipping it" and
  rejects it without requeue before warmer sees it;
  :class:`_DriverDropCounter` counts those log records as ``malformed``;
* the loop is draining, or did not start folding the batch within
  ``handoff_timeout``: requeue, so another daemon of the pool, or this one
  after a restart, gets them. A handshake (:class:`_Job`) decides, once,
  whether the loop folds a batch or the consumer thread takes it back: a
  batch is never both folded and requeued, and a fold that started in
  time is waited for and acked;
* a bug while handling: ack, logged and counted as ``error`` (requeueing
  it would only repeat the bug forever).

When the connection breaks, messages taken and not acked yet are
redelivered by the broker (and counted as ``duplicate`` if they had been
folded in); the consumer thread never acks a message that came on a
channel the connection no longer uses (delivery tags are per channel).
"""

from __future__ import annotations

import asyncio
import collections
import logging
import threading
import time
from collections.abc import Callable, Sequence
from typing import Any

import oslo_messaging
from oslo_config import cfg
from oslo_messaging._drivers import common as driver_common
from oslo_messaging._drivers import impl_rabbit

from warmer import events
from warmer.metrics import Metrics

LOG = logging.getLogger(__name__)

HANDLED: str = oslo_messaging.NotificationResult.HANDLED
REQUEUE: str = oslo_messaging.NotificationResult.REQUEUE

#: The priorities oslo.messaging knows; warmer's queue is bound to these three.
PRIORITIES = frozenset({"audit", "debug", "info", "warn", "error", "critical", "sample"})
CONSUMED_PRIORITIES = ("info", "warn", "error")

Sink = Callable[[events.Event], str]
#: One notification as the bridge takes it: publisher_id, event_type,
#: payload, metadata (message_id, timestamp).
Notification = tuple[Any, Any, Any, Any]


class TransientHandoffError(Exception):
    """The loop could not take the event now; the message is requeued."""


class _Job:
    """One batch handed to the loop, and the handshake that decides whether
    the loop folds it or the consumer thread takes it back.

    Under ``lock``, the loop marks it ``started`` unless the consumer thread
    marked it ``abandoned`` first (after ``handoff_timeout``); exactly one of
    the two happens. A started fold is synchronous and runs to its end
    (``done``), so what the loop folded is always acked and never requeued,
    and what it did not fold is requeued and never folded."""

    def __init__(self, batch: list[events.Event]) -> None:
        self.batch = batch
        self.lock = threading.Lock()
        self.started = False
        self.abandoned = False
        self.done = threading.Event()
        self.outcomes: list[str] = []


class Bridge:
    """Hands parsed events from the consumer thread to the loop.

    ``sink`` folds one event into the engine's state, on the loop,
    synchronously (no I/O), and returns the outcome to count."""

    #: Seconds between two calls of :attr:`keepalive` while waiting.
    SLICE = 1.0

    def __init__(self, loop: asyncio.AbstractEventLoop, sink: Sink, metrics: Metrics, *,
                 max_payload_bytes: int, handoff_timeout: float,
                 transient: tuple[type[BaseException], ...] = ()) -> None:
        self._loop = loop
        self._sink = sink
        self._metrics = metrics
        self._max_payload_bytes = max_payload_bytes
        self._handoff_timeout = handoff_timeout
        self._transient: tuple[type[BaseException], ...] = (TransientHandoffError, *transient)
        #: Called in the waiting thread between slices of a wait (the
        #: listener keeps its connection's heartbeats going with it).
        self.keepalive: Callable[[], None] | None = None

    def deliver(self, publisher_id: Any, event_type: Any, payload: Any,
                metadata: Any) -> str:
        """Parse one notification and hand it to the loop; return HANDLED
        (ack) or REQUEUE. Never raises for anything the message holds."""
        return self.deliver_batch([(publisher_id, event_type, payload, metadata)])[0]

    def deliver_batch(self, notifications: Sequence[Notification],
                      body_bytes: Sequence[int | None] | None = None) -> list[str]:
        """Parse each notification here, hand the usable ones to the loop in
        one call, wait for it, and return HANDLED (ack) or REQUEUE for each,
        in order. Never raises for anything the messages hold.
        ``body_bytes``: the size of each one's message body, when known
        (see :func:`warmer.events.parse`)."""
        sizes = body_bytes if body_bytes is not None else [None] * len(notifications)
        results = [HANDLED] * len(notifications)
        tally: collections.Counter[tuple[Any, str]] = collections.Counter()
        parsed: list[tuple[int, Any, events.Event]] = []
        for n, (publisher_id, event_type, payload, metadata) in enumerate(notifications):
            try:
                event = events.parse(event_type, payload, metadata, publisher_id=publisher_id,
                                     max_payload_bytes=self._max_payload_bytes,
                                     body_bytes=sizes[n])
            except Exception as exc:  # whatever the input does, ack it
                LOG.warning("dropping malformed notification %s from %s: %s",
                            _short(event_type), _short(publisher_id), _describe(exc))
                tally[_label(event_type), "malformed"] += 1
                continue
            if event is None:
                tally[_label(event_type), "ignored"] += 1
            else:
                parsed.append((n, event_type, event))
        if parsed:
            outcomes = self._hand_off([event for _, _, event in parsed])
            for (n, event_type, _), outcome in zip(parsed, outcomes, strict=True):
                if outcome == REQUEUE:
                    results[n] = REQUEUE
                    outcome = "requeued"
                tally[_label(event_type), outcome] += 1
        for (label, outcome), count in tally.items():
            self._metrics.notification(label, outcome, count)
        return results

    def _hand_off(self, batch: list[events.Event]) -> list[str]:
        """The outcome of each event: what the loop's fold returned, or
        REQUEUE for all when the loop did not start folding the batch within
        ``handoff_timeout`` (or is closed)."""
        job = _Job(batch)
        try:
            self._loop.call_soon_threadsafe(self._run, job)
        except RuntimeError:  # loop closed
            return [REQUEUE] * len(batch)
        if not self._wait(job.done, self._handoff_timeout):
            with job.lock:
                job.abandoned = not job.started
            if job.abandoned:
                LOG.info("requeueing %d notifications: the loop did not take them "
                         "within %.1fs", len(batch), self._handoff_timeout)
                return [REQUEUE] * len(batch)
            self._wait(job.done, None)  # started: the fold is synchronous and bounded
        return job.outcomes

    def _wait(self, done: threading.Event, timeout: float | None) -> bool:
        """Wait for ``done`` at most ``timeout`` seconds (None: for ever), in
        slices with :attr:`keepalive` between them."""
        deadline = None if timeout is None else time.monotonic() + timeout
        while True:
            left = self.SLICE if deadline is None else min(self.SLICE,
                                                           deadline - time.monotonic())
            if left <= 0:
                return done.is_set()
            if done.wait(left):
                return True
            if self.keepalive is not None:
                self.keepalive()

    def _run(self, job: _Job) -> None:
        """On the loop: fold the batch, unless the consumer thread took it back."""
        with job.lock:
            if job.abandoned:
                return
            job.started = True
        try:
            job.outcomes = [self._fold_one(event) for event in job.batch]
        finally:
            job.done.set()

    def _fold_one(self, event: events.Event) -> str:
        try:
            return self._sink(event)
        except self._transient:
            return REQUEUE
        except Exception:
            LOG.exception("handling %s failed; dropping it", type(event).__name__)
            return "error"

    def ignored(self, event_type: Any) -> None:
        self._metrics.notification(event_type, "ignored")

    def malformed_envelope(self, exc: BaseException) -> None:
        LOG.warning("dropping a notification with a malformed envelope: %s", _describe(exc))
        self._metrics.notification(None, "malformed")


def envelope(message: Any) -> tuple[str, Notification]:
    """The priority and the fields of a decoded oslo.messaging notification
    (the inner ``oslo.message``), as oslo.messaging's dispatcher extracts
    them. Raises ValueError for an envelope that is not an object or has no
    known priority."""
    if not isinstance(message, dict):
        raise ValueError(f"envelope is {type(message).__name__}, not an object")
    priority = message.get("priority")
    if not isinstance(priority, str) or priority.lower() not in PRIORITIES:
        raise ValueError(f"priority {_short(priority)}")
    metadata = {"message_id": message.get("message_id"),
                "timestamp": message.get("timestamp")}
    return priority.lower(), (message.get("publisher_id"), message.get("event_type"),
                              message.get("payload"), metadata)


def dispatch_batch(bridge: Bridge, messages: Sequence[Any],
                   body_bytes: Sequence[int | None] | None = None) -> list[str]:
    """What to do with each decoded notification (the inner
    ``oslo.message`` objects, in order): HANDLED (ack) or REQUEUE. A
    malformed envelope is acked and counted; a priority warmer's queue is
    not bound to is acked as ``ignored``; the rest goes to the bridge in
    one batch."""
    sizes = body_bytes if body_bytes is not None else [None] * len(messages)
    results = [HANDLED] * len(messages)
    usable: list[int] = []
    notifications: list[Notification] = []
    for n, message in enumerate(messages):
        try:
            priority, fields = envelope(message)
        except Exception as exc:
            bridge.malformed_envelope(exc)
            continue
        if priority not in CONSUMED_PRIORITIES:
            bridge.ignored(fields[1])
            continue
        usable.append(n)
        notifications.append(fields)
    delivered = bridge.deliver_batch(notifications, [sizes[n] for n in usable])
    for n, result in zip(usable, delivered, strict=True):
        results[n] = result
    return results


def dispatch(bridge: Bridge, message: Any) -> str:
    """:func:`dispatch_batch` of one message."""
    return dispatch_batch(bridge, [message])[0]


class _DriverDropCounter(logging.Handler):
    """Counts the messages oslo.messaging's rabbit driver rejects before
    warmer sees them (it says so only in a log record)."""

    MARK = "Failed to process message"

    def __init__(self, bridge: Bridge) -> None:
        super().__init__(logging.ERROR)
        self._bridge = bridge

    def emit(self, record: logging.LogRecord) -> None:
        if isinstance(record.msg, str) and record.msg.startswith(self.MARK):
            self._bridge.malformed_envelope(ValueError("rejected by the rabbit driver"))


class BusListener:
    """Consumes warmer's pool queue on the Glance and Cinder exchanges.

    The queue is declared by oslo.messaging's rabbit driver with the
    transport's ``[oslo_messaging_rabbit]`` options, as every OpenStack
    service declares its own: ``amqp_durable_queues`` (durable exchanges
    and queues), ``amqp_auto_delete``, ``rabbit_quorum_queue`` (and its
    ``rabbit_quorum_*`` limits), ``rabbit_ha_queues``. They must match how
    the deployment's services declared the same exchanges, or the declare
    fails and the daemon does not start.

    :meth:`connected` tells whether the listener's own AMQP connection is
    up. The rabbit driver reconnects by itself (``rabbit_retry_interval``,
    ``rabbit_retry_backoff``, ``rabbit_interval_max``) and then declares
    the queue again; nothing is consumed meanwhile, and messages taken but
    not yet acked when the connection broke are redelivered by the broker.
    """

    #: Seconds one wait for the socket lasts while nothing is pending (how
    #: soon :meth:`stop` is noticed).
    IDLE_POLL = 0.5
    #: Seconds of silence on the socket after which a pending batch is
    #: handed off without waiting to fill.
    GAP = 0.002
    #: Seconds to wait after a batch was requeued whole, doubled each time
    #: in a row, up to MAX_BACK_OFF.
    BACK_OFF = 0.1
    MAX_BACK_OFF = 5.0

    def __init__(self, conf: cfg.ConfigOpts, bridge: Bridge) -> None:
        self._conf = conf
        self._bridge = bridge
        self._transport: Any = None
        self._conn: Any = None
        self._thread: threading.Thread | None = None
        self._stopping = threading.Event()
        #: (channel generation, message) of the batch being gathered.
        self._pending: list[tuple[int, Any]] = []
        self._channel: Any = None
        self._dead_channel: Any = None
        self._generation = 0
        self._requeue_streak = 0
        self._oldest = 0.0
        self._batch = conf.bus.batch_size
        self._linger = conf.bus.batch_linger
        self._drop_counter = _DriverDropCounter(bridge)
        self.running = False

    def start(self) -> None:
        """Connect, declare the pool's queue and bindings, start consuming.
        Blocking (it waits for the broker as the driver does): call it from
        a thread."""
        bus = self._conf.bus
        prefetch = _bounded_prefetch(self._conf)
        self._batch = max(1, min(self._batch, prefetch // 2))
        self._transport = oslo_messaging.get_notification_transport(self._conf)
        logging.getLogger("oslo.messaging._drivers.impl_rabbit").addHandler(self._drop_counter)
        self._conn = _listen_connection(self._transport)
        for exchange in (bus.glance_exchange, bus.cinder_exchange):
            for topic in bus.topics:
                for priority in CONSUMED_PRIORITIES:
                    self._conn.declare_topic_consumer(
                        exchange_name=exchange, topic=f"{topic}.{priority}",
                        callback=self._received, queue_name=bus.pool)
        self._bridge.keepalive = self._keepalive
        threshold = self._conf.oslo_messaging_rabbit.heartbeat_timeout_threshold
        if threshold > 0:  # several heartbeat checks per threshold, as the driver does
            self._bridge.SLICE = min(Bridge.SLICE, threshold / 4)
        self._stopping.clear()
        self._thread = threading.Thread(target=self._consume, name="bus-consumer",
                                        daemon=True)
        self.running = True
        self._thread.start()

    def _received(self, message: Any) -> None:
        """The driver's callback, in the consumer thread, for each message it
        could decode: keep it for the next batch, with the generation of the
        channel it came on."""
        if not self._pending:
            self._oldest = time.monotonic()
        self._pending.append((self._generation_now(), message))

    def _keepalive(self) -> None:
        """Between slices of a long wait for the loop, in the consumer thread:
        what the driver's ``consume`` does on an idle connection, send a
        heartbeat when one is due and read what the broker sent (its
        heartbeats, and messages, which join the next batch). A listening
        connection has no heartbeat thread, so without this a hand-off
        longer than ``heartbeat_timeout_threshold`` would get the
        connection closed by the broker."""
        try:
            driver_conn = self._conn.connection  # the pool's context wraps it
            kombu_conn = driver_conn.connection
            if kombu_conn is None or not kombu_conn.connected:
                return  # broken: the next consume reconnects
            if driver_conn._heartbeat_supported_and_enabled():
                driver_conn._heartbeat_check()
            kombu_conn.drain_events(timeout=0.001)
        except (TimeoutError, driver_common.Timeout):
            pass
        except Exception as exc:  # the connection broke while we waited
            LOG.warning("the bus connection failed during a hand-off: %s", _describe(exc))
            self._abandon_channel()

    def _generation_now(self) -> int:
        """The generation of the channel the connection consumes on now.

        Delivery tags mean something only on the channel that gave them, and
        a ``multiple`` ack covers every earlier tag of that channel. So each
        channel gets a number when first seen, and a channel this listener
        gave up on (:meth:`_abandon_channel`) never gets one again: nothing
        that came on it is acked or requeued afterwards."""
        channel = self._conn.channel
        if channel is None or channel is self._dead_channel:
            return -1
        if channel is not self._channel:
            self._channel = channel
            self._generation += 1
        return self._generation

    def _consume(self) -> None:
        conn = self._conn
        while not self._stopping.is_set():
            if self._pending:
                timeout = max(0.0005, min(self.GAP,
                                          self._oldest + self._linger - time.monotonic()))
            else:
                timeout = self.IDLE_POLL
            try:
                conn.consume(timeout=timeout)
            except driver_common.Timeout:
                if self._pending:
                    self._hand_off()
                continue
            except Exception:  # the driver retries on its own; never die silently
                LOG.exception("consuming notifications failed; trying again")
                self._stopping.wait(1.0)
                continue
            if len(self._pending) >= self._batch or (
                    self._pending and time.monotonic() - self._oldest >= self._linger):
                self._hand_off()
        if self._pending:
            self._hand_off()  # the engine is draining by now: these are requeued

    def _hand_off(self) -> None:
        """Hand the pending batch to the loop and settle it. Whatever goes
        wrong, the batch is settled here and now, message by message if need
        be, or its channel is given up: an unsettled message must never sit
        below a later batch's ``multiple`` ack, which would ack it unseen."""
        batch, self._pending = self._pending, []
        try:
            results = dispatch_batch(self._bridge, [m for _, m in batch],
                                     [_body_size(m) for _, m in batch])
        except Exception:  # a bug of the bridge: the messages are not lost
            LOG.exception("handing %d notifications off failed; requeueing them",
                          len(batch))
            results = [REQUEUE] * len(batch)
        self._settle(batch, results)
        self._back_off(results)

    def _back_off(self, results: list[str]) -> None:
        """After a batch that was requeued whole (the loop is closed,
        draining, or stalled), wait before consuming again, longer each
        time in a row (up to :attr:`MAX_BACK_OFF`): the broker would
        otherwise redeliver the same messages at once, in a loop. Heartbeats
        go on meanwhile; :meth:`stop` ends the wait."""
        if not results or any(result != REQUEUE for result in results):
            self._requeue_streak = 0
            return
        self._requeue_streak += 1
        delay = min(self.MAX_BACK_OFF, self.BACK_OFF * 2 ** (self._requeue_streak - 1))
        LOG.info("a whole batch was requeued (%d in a row); consuming again in %.1fs",
                 self._requeue_streak, delay)
        deadline = time.monotonic() + delay
        while not self._stopping.is_set():
            left = deadline - time.monotonic()
            if left <= 0:
                return
            if self._stopping.wait(min(left, self._bridge.SLICE)):
                return
            self._keepalive()

    def _settle(self, batch: list[tuple[int, Any]], results: list[str]) -> None:
        """Requeue what must be, then ack the rest with one ``multiple``
        ack of the last one (every earlier message of this channel is
        settled by then). Messages of a channel the connection no longer
        uses are left alone: the broker redelivers them.

        If any of it fails, what this channel holds unsettled is unknown, so
        the channel is given up (:meth:`_abandon_channel`): the broker then
        redelivers every message of it that was not settled, and no later
        ``multiple`` ack can cover them.

        No lock: the rabbit driver's ``_connection_lock`` is a no-op for a
        listening connection (there is no heartbeat thread), and only the
        consumer thread uses the connection."""
        current = self._generation_now()
        try:
            last = None
            for (generation, message), result in zip(batch, results, strict=True):
                if generation != current or generation < 0:
                    continue
                raw = message._raw_message
                if result == REQUEUE:
                    raw.requeue()
                else:
                    last = raw
            if last is not None:
                last.ack(multiple=True)
        except Exception as exc:  # connection or channel gone, or worse: never die here
            LOG.warning("could not settle %d notifications (%s); dropping the channel, "
                        "the broker redelivers them", len(batch), _describe(exc))
            self._abandon_channel()

    def _abandon_channel(self) -> None:
        """Give up the current channel: nothing that came on it is settled
        any more, and the connection's socket is closed without a handshake
        (kombu's ``collect``), so the broker requeues every message of it
        not acked yet. The rabbit driver reconnects on the next consume."""
        conn = self._conn
        self._dead_channel = conn.channel
        self._channel = None
        try:
            conn.connection.connection.collect()  # context, driver, kombu
        except Exception as exc:
            LOG.warning("closing the bus connection after a failed settle: %s",
                        _describe(exc))

    def connected(self) -> bool | None:
        """Whether the listener's AMQP connection is up right now: True or
        False, or None when this oslo.messaging does not let it be seen.

        It reads the state of the kombu connection the rabbit driver
        consumes on (no I/O, no lock), so any thread may call it. kombu
        drops that connection object as soon as a read or write fails (the
        broker closed it, the socket broke, a heartbeat was missed) and sets
        a new one only once a reconnection succeeded, just before the driver
        declares its queues again. oslo.messaging has no public hook for
        this, hence the private path, checked by a unit test."""
        conn, thread = self._conn, self._thread
        if conn is None or not self.running or thread is None or not thread.is_alive():
            return False
        try:
            kombu_conn = conn.connection  # None once the driver closed it
            if kombu_conn is None:
                return False
            kombu_conn = kombu_conn.connection
        except AttributeError:
            return None
        # Only kombu's ``connected`` property, never ``connection``, which
        # would connect.
        if not isinstance(getattr(type(kombu_conn), "connected", None), property):
            return None
        return bool(kombu_conn.connected)

    def stop(self) -> None:
        """Stop consuming; what was taken and not handed off is handed off
        (a draining engine requeues it) or left to the broker. Blocking."""
        self.running = False  # first: readiness must not look at what is closing
        self._stopping.set()
        if self._conn is not None:
            self._conn.stop_consuming()
        if self._thread is not None:
            self._thread.join()
            self._thread = None
        if self._conn is not None:
            try:
                self._conn.close()
            except Exception as exc:  # a broken connection cannot close cleanly
                LOG.info("closing the bus connection: %s", exc)
            self._conn = None
        if self._transport is not None:
            self._transport.cleanup()
            self._transport = None
        logging.getLogger("oslo.messaging._drivers.impl_rabbit").removeHandler(
            self._drop_counter)


def _bounded_prefetch(conf: cfg.ConfigOpts) -> int:
    """``[oslo_messaging_rabbit] rabbit_qos_prefetch_count``, set to twice
    ``[bus] batch_size`` when it is 0 (oslo.messaging's default: no limit,
    and the broker pushes a whole backlog into one daemon of the pool,
    which then holds it unacked while the others idle). Must run before the
    transport is made: the driver reads it when it connects. It only
    applies to listening connections, and this process has no other."""
    group = "oslo_messaging_rabbit"
    conf.register_opts(impl_rabbit.rabbit_opts, group=group)  # as the driver will
    prefetch: int = conf[group].rabbit_qos_prefetch_count
    if prefetch <= 0:
        prefetch = 2 * conf.bus.batch_size
        conf.set_override("rabbit_qos_prefetch_count", prefetch, group=group)
        LOG.info("[%s] rabbit_qos_prefetch_count is 0 (no limit); warmer's listener "
                 "uses %d (twice [bus] batch_size)", group, prefetch)
    return prefetch


def _listen_connection(transport: Any) -> Any:
    """A dedicated listening connection of the transport's rabbit driver,
    made as its notification listeners make theirs (oslo.messaging has no
    public way to consume other than through its servers)."""
    driver = transport._driver
    get = getattr(driver, "_get_connection", None)
    if get is None:
        raise RuntimeError(f"the {type(driver).__name__} transport driver is not supported; "
                           "warmer needs oslo.messaging's rabbit driver")
    return get(driver_common.PURPOSE_LISTEN)


def _body_size(message: Any) -> int | None:
    """The size of ``message``'s body in bytes. py-amqp decodes a body that
    has a content encoding into ``str``; its length in characters would
    undercount (an astral character is 4 bytes) and let an oversized
    payload skip the size check (invariant 6)."""
    body = getattr(getattr(message, "_raw_message", None), "body", None)
    if isinstance(body, str):
        return len(body.encode("utf-8", "surrogatepass"))
    return len(body) if isinstance(body, bytes) else None


def _label(event_type: Any) -> Any:
    return event_type if events.is_known(event_type) else None


def _short(value: Any) -> str:
    if isinstance(value, str):
        return value[:80]
    if value is None or isinstance(value, (bool, int, float)):
        return repr(value)[:80]
    return f"<{type(value).__name__}>"  # never repr() a container from the wire


def _describe(exc: BaseException) -> str:
    """One bounded line about ``exc``: a parser's own message for
    :class:`~warmer.events.MalformedEvent`, the type and the start of the
    message for anything else."""
    try:
        text = str(exc)
    except Exception:  # a message that cannot even be shown
        text = ""
    text = " ".join(text.split())[:200]
    if isinstance(exc, events.MalformedEvent):
        return text
    return f"{type(exc).__name__}: {text}" if text else type(exc).__name__
