"""oslo.messaging notification listener, bridged into the asyncio loop.

oslo.messaging has no asyncio executor, only ``threading``. Each message
is parsed in the listener's thread, then handed to the loop with
``asyncio.run_coroutine_threadsafe`` and the thread waits for the loop to
take it. Ack and requeue rules (``allow_requeue=True``):

* handed off (the loop folded the event into its state): ack;
* unknown event type: ack, counted as ``ignored``;
* malformed (bad envelope, missing or mistyped fields, an image id that
  is not a canonical UUID, oversized payload), and *any* exception raised
  while parsing, even one that is a bug of the parser: ack, logged in one
  bounded line (no traceback) and counted as ``malformed``. Never requeued,
  so a poison message cannot loop (oslo.messaging requeues whatever a
  callback raises), and it never reaches the engine, so it never touches
  Ceph;
* the loop is draining or did not take the event within
  ``handoff_timeout``: requeue, so another daemon of the pool, or this one
  after a restart, gets it;
* a bug while handling: ack, logged and counted as ``error`` (requeueing
  it would only repeat the bug forever).

Two kinds of bad input never reach the bridge, and are counted as
``malformed`` here too:

* a body that is not JSON, or an envelope oslo.messaging cannot turn into a
  message: its rabbit driver logs "Failed to process message ... skipping
  it" and rejects it (no requeue). :class:`_DriverDropCounter` counts those
  log records;
* a message without a valid priority, or whose fields break oslo's own
  extraction: oslo.messaging would ack the first silently and *requeue*
  the second forever. :class:`_GuardedDispatcher` acks and counts both.
"""

from __future__ import annotations

import asyncio
import concurrent.futures
import logging
from collections.abc import Callable, Coroutine
from typing import Any

import oslo_messaging
from oslo_config import cfg
from oslo_messaging.notify import dispatcher as notify_dispatcher
from oslo_messaging.notify import listener as notify_listener

from warmer import events
from warmer.metrics import Metrics

LOG = logging.getLogger(__name__)

HANDLED: str = oslo_messaging.NotificationResult.HANDLED
REQUEUE: str = oslo_messaging.NotificationResult.REQUEUE

Sink = Callable[[events.Event], Coroutine[Any, Any, str]]


class TransientHandoffError(Exception):
    """The loop could not take the event now; the message is requeued."""


class Bridge:
    """Hands parsed events from listener threads to the loop."""

    def __init__(self, loop: asyncio.AbstractEventLoop, sink: Sink, metrics: Metrics, *,
                 max_payload_bytes: int, handoff_timeout: float,
                 transient: tuple[type[BaseException], ...] = ()) -> None:
        self._loop = loop
        self._sink = sink
        self._metrics = metrics
        self._max_payload_bytes = max_payload_bytes
        self._handoff_timeout = handoff_timeout
        self._requeue_on: tuple[type[BaseException], ...] = (
            concurrent.futures.TimeoutError, concurrent.futures.CancelledError,
            TransientHandoffError, *transient)

    def deliver(self, publisher_id: Any, event_type: Any, payload: Any,
                metadata: Any) -> str:
        """Parse one notification and hand it to the loop; return HANDLED
        (ack) or REQUEUE. Never raises for anything the message holds."""
        try:
            event = events.parse(event_type, payload, metadata, publisher_id=publisher_id,
                                 max_payload_bytes=self._max_payload_bytes)
        except Exception as exc:  # whatever the input does, ack it
            LOG.warning("dropping malformed notification %s from %s: %s",
                        _short(event_type), _short(publisher_id), _describe(exc))
            self._metrics.notification(event_type, "malformed")
            return HANDLED
        if event is None:
            self._metrics.notification(event_type, "ignored")
            return HANDLED
        try:
            future = asyncio.run_coroutine_threadsafe(self._sink(event), self._loop)
        except RuntimeError:  # loop closed
            self._metrics.notification(event_type, "requeued")
            return REQUEUE
        try:
            outcome = future.result(timeout=self._handoff_timeout)
        except self._requeue_on as exc:
            future.cancel()
            LOG.info("requeueing %s: %s", event_type, type(exc).__name__)
            self._metrics.notification(event_type, "requeued")
            return REQUEUE
        except Exception:
            LOG.exception("handling %s failed; dropping it", event_type)
            self._metrics.notification(event_type, "error")
            return HANDLED
        self._metrics.notification(event_type, outcome)
        return HANDLED

    def malformed_envelope(self, exc: BaseException) -> None:
        LOG.warning("dropping a notification with a malformed envelope: %s", _describe(exc))
        self._metrics.notification(None, "malformed")


class _Endpoint:
    """Receives INFO (everything warmer uses), and WARN and ERROR (Glance's
    failed uploads), so that those are counted rather than left queued."""

    def __init__(self, bridge: Bridge) -> None:
        self._bridge = bridge

    def _any(self, ctxt: Any, publisher_id: Any, event_type: Any, payload: Any,
             metadata: Any) -> str:
        return self._bridge.deliver(publisher_id, event_type, payload, metadata)

    info = warn = error = _any


class _GuardedDispatcher(notify_dispatcher.NotificationDispatcher):  # type: ignore[misc]
    def __init__(self, bridge: Bridge) -> None:
        super().__init__([_Endpoint(bridge)], None)
        self._bridge = bridge

    def dispatch(self, incoming: Any) -> Any:
        try:
            priority, _, _ = self._extract_user_message(incoming)
        except Exception as exc:
            self._bridge.malformed_envelope(exc)
            return HANDLED
        if priority not in notify_dispatcher.PRIORITIES:
            self._bridge.malformed_envelope(ValueError(f"priority {priority!r}"))
            return HANDLED
        return super().dispatch(incoming)


class _DriverDropCounter(logging.Handler):
    """Counts the messages oslo.messaging's rabbit driver rejects before
    dispatch (it says so only in a log record)."""

    MARK = "Failed to process message"

    def __init__(self, bridge: Bridge) -> None:
        super().__init__(logging.ERROR)
        self._bridge = bridge

    def emit(self, record: logging.LogRecord) -> None:
        if isinstance(record.msg, str) and record.msg.startswith(self.MARK):
            self._bridge.malformed_envelope(ValueError("rejected by the rabbit driver"))


class BusListener:
    """One oslo.messaging listener on the Glance and Cinder exchanges.

    Its queues are declared by oslo.messaging's rabbit driver with the
    transport's ``[oslo_messaging_rabbit]`` options, as every OpenStack
    service declares its own: ``amqp_durable_queues`` (durable exchanges
    and queues), ``amqp_auto_delete``, ``rabbit_quorum_queue`` (and its
    ``rabbit_quorum_*`` limits), ``rabbit_ha_queues``. They must match how
    the deployment's services declared the same exchanges, or the declare
    fails and the daemon does not start.

    :meth:`connected` tells whether the listener's own AMQP connection is
    up. The rabbit driver reconnects by itself (``rabbit_retry_interval``,
    ``rabbit_retry_backoff``, ``rabbit_interval_max``) and then declares
    the queues again; nothing is consumed meanwhile, and messages taken but
    not yet acked when the connection broke are redelivered by the broker.
    """

    def __init__(self, conf: cfg.ConfigOpts, bridge: Bridge) -> None:
        self._conf = conf
        self._bridge = bridge
        self._transport: Any = None
        self._server: Any = None
        self._drop_counter = _DriverDropCounter(bridge)
        self.running = False

    def start(self) -> None:
        """Connect, declare the pool's queue and bindings, start consuming.
        Blocking: call it from a thread."""
        bus = self._conf.bus
        self._transport = oslo_messaging.get_notification_transport(self._conf)
        targets = [oslo_messaging.Target(exchange=exchange, topic=topic)
                   for exchange in (bus.glance_exchange, bus.cinder_exchange)
                   for topic in bus.topics]
        self._server = notify_listener.NotificationServer(
            self._transport, targets, _GuardedDispatcher(self._bridge), "threading",
            allow_requeue=True, pool=bus.pool)
        logging.getLogger("oslo.messaging._drivers.impl_rabbit").addHandler(self._drop_counter)
        self._server.start()
        self.running = True

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
        server = self._server
        if server is None or not self.running:
            return False
        try:
            conn = server.listener._poll_style_listener.conn.connection.connection
        except AttributeError:
            return None
        # Only kombu's ``connected`` property, never ``connection``, which
        # would connect.
        if not isinstance(getattr(type(conn), "connected", None), property):
            return None
        return bool(conn.connected)

    def stop(self) -> None:
        """Stop consuming and wait for in-flight callbacks. Blocking."""
        if self._server is not None:
            self._server.stop()
            self._server.wait()
            self._server = None
        if self._transport is not None:
            self._transport.cleanup()
            self._transport = None
        logging.getLogger("oslo.messaging._drivers.impl_rabbit").removeHandler(
            self._drop_counter)
        self.running = False


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
