"""The notification listener: oslo.messaging's rabbit connection, drained
in batches by one consumer thread, and bridged into the asyncio loop
(:mod:`warmer.bus.bridge`).

oslo.messaging has no asyncio executor, and its notification servers
(threading executor, even in batch mode) take the messages one at a time
through a poller, an executor and a dispatcher; its connection's
``consume()`` reads one message per call, each inside ``ensure()`` (kombu's
retry wrapper) and with two socket timeout changes per AMQP frame. Here
that topped out below a third of what a bare kombu consumer of the same
queue does. So the listener keeps everything oslo.messaging decides and
drives the consumption itself:

* the connection is the rabbit driver's own, made as its notification
  listener makes it (``transport_url``, every ``[oslo_messaging_rabbit]``
  option: TLS, heartbeats, failover, reconnection and back-off,
  ``rabbit_qos_prefetch_count``, which warmer sets to twice
  ``[bus] batch_size`` when it is 0), and the queue is declared by the driver
  as for ``listen_for_notifications``: one queue named after the pool,
  bound to ``<topic>.<priority>`` (info, warn, error) on the Glance and
  Cinder exchanges, with the driver's durable, auto-delete, quorum and HA
  arguments;
* the consumer thread drains the socket in *sessions*: each one runs
  inside the driver's ``ensure()``, as the driver's own ``consume()`` does,
  so that a broken connection or channel is recovered exactly as the
  driver recovers it (failover to the next host, reconnection with its
  back-off, queues declared and consumers registered again; the prefetch
  is set again too, which the driver forgets on a channel py-amqp reopened
  in place), but reads
  every message that comes until a batch is full, or the socket was silent
  for :attr:`BusListener.GAP` (or ``batch_linger`` passed), with the
  socket's timeout set once per session instead of twice per frame;
* the driver's consumers deliver the raw messages to the listener, which
  decodes each body once (:func:`warmer.bus.bridge.decode`, as the driver
  would: JSON, then oslo's envelope) when it hands the batch off;
* the hand-off is pipelined: while the loop folds a batch, the consumer
  thread drains, decodes and parses the next one. At most one batch is on
  the loop at a time, and a batch is settled only once the loop answered
  for it, in the order the batches came: its requeues, then one
  ``basic.ack`` with ``multiple`` of its last message. Every message of a
  later batch has a higher delivery tag, so that ack never covers one the
  loop has not folded.

The ack and requeue rules per message are :mod:`warmer.bus.bridge`'s; a
body that cannot be decoded is malformed (acked, counted), never requeued.
When the connection or the channel breaks, messages taken and not acked yet
are redelivered by the broker (and counted as ``duplicate`` if they had been
folded in). Delivery tags are per channel, and py-amqp revives a channel the
broker closed *in place* (the same object, its tags starting again at 1), so
the listener stamps every message with a *generation* when it arrives, and
starts a new generation on every error of the channel or connection (any
exception while reading, any recovery by the driver, any failed settle or
keepalive). The consumer thread never acks or requeues a message of an
earlier generation, and drops those not handed off yet: the broker
redelivers them all. Heartbeats: a listening connection has no heartbeat thread; the
consumer thread sends them and reads the broker's between sessions and
while it waits for the loop.
"""

from __future__ import annotations

import logging
import threading
import time
from collections.abc import Callable
from typing import Any

import amqp  # type: ignore[import-untyped]
import oslo_messaging
from oslo_config import cfg
from oslo_messaging._drivers import common as driver_common
from oslo_messaging._drivers import impl_rabbit

from warmer.bus.bridge import (
    CONSUMED_PRIORITIES,
    HANDLED,
    PRIORITIES,
    REQUEUE,
    Batch,
    Bridge,
    Notification,
    Sink,
    TransientHandoffError,
    Undecodable,
    _describe,
    decode,
    dispatch,
    dispatch_batch,
    envelope,
    prepare_batch,
)

LOG = logging.getLogger(__name__)

# The bridge's names too, for whoever takes them from here (service, bench).
__all__ = ["CONSUMED_PRIORITIES", "HANDLED", "PRIORITIES", "REQUEUE", "Bridge", "BusListener",
           "Notification", "Sink", "TransientHandoffError", "dispatch", "dispatch_batch",
           "envelope"]


class _InFlight:
    """The batch on the loop: its messages, in order, and what the bridge
    made of them."""

    def __init__(self, messages: list[Any], batch: Batch) -> None:
        self.messages = messages
        self.batch = batch


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

    #: Seconds one session waits for the socket while nothing is pending
    #: nor on the loop (how soon :meth:`stop` is noticed).
    IDLE_POLL = 0.5
    #: Seconds of silence on the socket after which a pending batch is
    #: handed off without waiting to fill (and how often a batch on the loop
    #: is looked at while nothing comes).
    GAP = 0.002
    #: Seconds to wait after a batch was requeued whole, doubled each time
    #: in a row, up to MAX_BACK_OFF.
    BACK_OFF = 0.1
    MAX_BACK_OFF = 5.0
    #: Sessions failed in a row after which :meth:`connected` says False
    #: (until one succeeds): a consumer that cannot consume is not ready.
    FAILED_SESSIONS = 5

    def __init__(self, conf: cfg.ConfigOpts, bridge: Bridge) -> None:
        self._conf = conf
        self._bridge = bridge
        self._transport: Any = None
        self._conn: Any = None
        self._thread: threading.Thread | None = None
        self._stopping = threading.Event()
        #: The raw messages of the batch being gathered, in delivery order.
        self._pending: list[Any] = []
        self._inflight: _InFlight | None = None
        #: Bumped on every error of the channel or connection; see
        #: :meth:`_new_generation`.
        self._generation = 0
        #: Sessions in a row that failed (see :attr:`FAILED_SESSIONS`).
        self._failed_sessions = 0
        self._requeue_streak = 0
        self._oldest = 0.0
        self._last_heartbeat = 0.0
        self._batch = conf.bus.batch_size
        self._linger = conf.bus.batch_linger
        self.running = False

    def start(self) -> None:
        """Connect, declare the pool's queue and bindings, start consuming.
        Blocking (it waits for the broker as the driver does): call it from
        a thread."""
        bus = self._conf.bus
        prefetch = _bounded_prefetch(self._conf)
        self._batch = max(1, min(self._batch, prefetch // 2))
        self._transport = oslo_messaging.get_notification_transport(self._conf)
        self._conn = _listen_connection(self._transport)
        for exchange in (bus.glance_exchange, bus.cinder_exchange):
            for topic in bus.topics:
                for priority in CONSUMED_PRIORITIES:
                    self._conn.declare_topic_consumer(
                        exchange_name=exchange, topic=f"{topic}.{priority}",
                        queue_name=bus.pool)
        try:
            _check_driver(self._conn.connection)
        except Exception:
            self._conn.close()
            self._transport.cleanup()
            self._conn = self._transport = None
            raise
        _deliver_raw(self._conn.connection, self._received)
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
        """The driver's consumers' callback, in the consumer thread, for each
        message (py-amqp's, undecoded): keep it for the next batch."""
        if not self._pending:
            self._oldest = time.monotonic()
        setattr(message, _GENERATION, self._generation)
        self._pending.append(message)

    def _new_generation(self) -> None:
        """The channel or the connection failed: what came before is the
        broker's to redeliver (it requeues every unacked message of a closed
        channel or connection). From now on nothing of the earlier
        generation is acked or requeued -- its delivery tags may mean other
        messages on a channel py-amqp revived in place -- and what is
        pending is dropped rather than folded twice."""
        self._generation += 1
        self._pending = []

    # -- the consumer thread ---------------------------------------------------

    def _consume(self) -> None:
        while not self._stopping.is_set():
            busy = bool(self._pending) or self._inflight is not None
            try:
                self._drain(self.GAP if busy else self.IDLE_POLL)
                self._failed_sessions = 0
            except driver_common.Timeout:
                # reconnecting took the session's time: look at the rest
                self._session_failed()
            except Exception:  # the driver retries on its own; never die silently
                LOG.exception("consuming notifications failed; trying again")
                self._new_generation()
                self._session_failed()
                self._stopping.wait(1.0)
            try:
                if self._inflight is not None:
                    results = self._bridge.poll(self._inflight.batch)
                    if results is not None:
                        self._settle_inflight(results)
                if self._pending:
                    self._hand_off()
            except Exception:  # a bug: never die, never ack what is unknown
                LOG.exception("settling notifications failed; the broker redelivers them")
                self._give_up()
        try:
            self._flush()
        except Exception:
            LOG.exception("settling notifications at stop failed; the broker redelivers them")
            self._give_up()

    def _session_failed(self) -> None:
        self._failed_sessions += 1
        if self._failed_sessions == self.FAILED_SESSIONS:
            LOG.error("%d sessions on the bus failed in a row; the listener is not ready "
                      "until one succeeds", self._failed_sessions)

    def _give_up(self) -> None:
        """After a bug: forget every message taken and not settled, and give
        the channel up, so that the broker redelivers them all and no later
        ``multiple`` ack covers them."""
        self._pending, self._inflight = [], None
        self._abandon_channel()

    def _flush(self) -> None:
        """Hand off everything pending and settle every batch, waiting for
        the loop. When stopping, the engine is draining by then: what had
        not reached the loop is requeued."""
        while self._pending:
            self._hand_off()
        if self._inflight is not None:
            self._settle_inflight(self._bridge.finish(self._inflight.batch))

    def _drain(self, wait: float) -> None:
        """One session: read what comes for the next batch, inside the
        driver's ``ensure()``, as its ``consume()`` does, so that every
        connection or channel error is recovered the driver's way (its
        error callbacks re-register every consumer after a reconnection,
        and give up with ``Timeout`` once the session's time is spent).
        Returns when the batch is full, when ``batch_linger`` passed, or
        after the socket was silent for ``wait`` seconds (:attr:`GAP` as
        soon as something is pending)."""
        driver = self._conn.connection
        timer = driver_common.DecayingTimer(duration=max(wait, self.GAP))
        timer.start()

        def raise_timeout() -> None:
            raise driver_common.Timeout()

        def recoverable(exc: BaseException) -> None:
            if not isinstance(exc, driver_common.Timeout):
                self._new_generation()  # the driver recovers the channel or connection
                driver._new_tags = set(driver._consumers.values())
            timer.check_return(raise_timeout)

        def failed(exc: BaseException) -> None:
            recoverable(exc)
            LOG.error("Failed to consume message from queue: %s", exc)

        def session() -> None:
            kombu_conn = driver.connection
            if not kombu_conn.connected:
                # As the driver does (its bug 2126768): fail over to the
                # next host rather than loop on a dead one.
                kombu_conn.maybe_switch_next()
                raise kombu_conn.recoverable_connection_errors[0]
            _read_ahead(kombu_conn)
            if driver._new_tags:
                # py-amqp reopens a channel the broker closed in place; the
                # driver sees the same channel object and does not set its
                # prefetch again, and the broker would push the whole queue
                # into this daemon (seen on RabbitMQ 3.10: prefetch 0).
                driver._set_qos(driver.channel)
            while driver._new_tags:
                for consumer, tag in driver._consumers.items():
                    if tag in driver._new_tags:
                        consumer.consume(driver, tag=tag)
                        driver._new_tags.remove(tag)
            self._read(driver, kombu_conn, wait)
            self._heartbeat(driver)

        with driver._connection_lock:
            driver.ensure(session, recoverable_error_callback=recoverable,
                          error_callback=failed)

    def _read(self, driver: Any, kombu_conn: Any, wait: float) -> None:
        """Drain messages (each comes to :meth:`_received`) until the batch
        is ready or the socket is silent for ``wait``. py-amqp sets and
        restores the socket's timeout around every frame unless it already
        is the one asked for: set it here, once, and put the driver's back
        afterwards (acks and heartbeats are written under the driver's)."""
        sock = _socket(kombu_conn)
        previous = sock.gettimeout() if sock is not None else None
        try:
            while not driver._consume_loop_stopped:
                timeout = self.GAP if self._pending else wait
                if sock is not None and sock.gettimeout() != timeout:
                    sock.settimeout(timeout)
                try:
                    kombu_conn.drain_events(timeout=timeout)
                except TimeoutError:
                    return
                except kombu_conn.channel_errors as exc:
                    # py-amqp has revived the channel in place by now: its
                    # delivery tags start again at 1
                    self._new_generation()
                    # The driver's own line says only that the server is
                    # "unreachable", without the broker's reason.
                    LOG.warning("the broker closed the bus channel (%s); it is reopened, "
                                "and what was taken on it and not acked is redelivered",
                                _describe(exc))
                    if exc.code == 406 and exc.method_name == "Basic.ack":
                        # As the driver does: another consumer acked it; recover
                        raise kombu_conn.recoverable_channel_errors[0] from exc
                    raise
                except Exception:  # the connection broke: the driver reconnects
                    self._new_generation()
                    raise
                if len(self._pending) >= self._batch or (
                        self._pending and time.monotonic() - self._oldest >= self._linger):
                    return
        finally:
            if sock is not None:
                try:
                    sock.settimeout(previous)
                except OSError:  # closed: the driver reconnects
                    pass

    def _heartbeat(self, driver: Any) -> None:
        """At the end of a session, under the driver's timeout again: send a
        heartbeat when one is due, and check that the broker's came, at most
        every ``SLICE`` (a quarter of ``heartbeat_timeout_threshold``), as
        the driver's ``consume()`` does on an idle connection. Inside the
        session: a broker that went silent raises into ``ensure()``, which
        reconnects."""
        now = time.monotonic()
        if now - self._last_heartbeat < self._bridge.SLICE:
            return
        self._last_heartbeat = now
        if driver._heartbeat_supported_and_enabled():
            driver._heartbeat_check()

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
                return  # broken: the next session reconnects
            if driver_conn._heartbeat_supported_and_enabled():
                driver_conn._heartbeat_check()
            kombu_conn.drain_events(timeout=0.001)
        except (TimeoutError, driver_common.Timeout):
            pass
        except Exception as exc:  # the connection broke while we waited
            LOG.warning("the bus connection failed during a hand-off: %s", _describe(exc))
            self._abandon_channel()

    def _hand_off(self) -> None:
        """Decode and parse the next batch (at most ``batch_size`` of what is
        pending), then settle the batch on the loop once it is folded, then
        submit this one. Whatever goes wrong, no message is left unsettled
        below a later ``multiple`` ack: a batch that cannot be prepared is
        requeued at once (per message, which leaves the batch on the loop
        alone)."""
        messages = self._pending[:self._batch]
        self._pending = self._pending[self._batch:]
        if self._pending:
            self._oldest = time.monotonic()
        try:
            sizes = [_body_size(m) for m in messages]
            decoded = [_decoded(m) for m in messages]
            _drop_bodies(messages)  # two batches of up to batch_size bodies, held till acked
            batch = prepare_batch(self._bridge, decoded, sizes)
        except Exception:  # a bug of the bridge: the messages are not lost
            LOG.exception("handing %d notifications off failed; requeueing them",
                          len(messages))
            results = [REQUEUE] * len(messages)
            self._settle(messages, results)
            self._back_off(results)
            return
        if self._inflight is not None:
            self._settle_inflight(self._bridge.finish(self._inflight.batch))
        self._bridge.submit(batch)
        self._inflight = _InFlight(messages, batch)

    def _settle_inflight(self, results: list[str]) -> None:
        inflight, self._inflight = self._inflight, None
        assert inflight is not None
        self._settle(inflight.messages, results)
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

    def _settle(self, messages: list[Any], results: list[str]) -> None:
        """Requeue what must be, then ack the rest with one ``multiple``
        ack of the last one (every earlier message of this channel is
        settled by then). Messages of a channel the connection no longer
        uses, or of an earlier generation (:meth:`_new_generation`), are
        left alone: the broker redelivers them.

        If any of it fails, what this channel holds unsettled is unknown, so
        the channel is given up (:meth:`_abandon_channel`): the broker then
        redelivers every message of it that was not settled, and no later
        ``multiple`` ack can cover them.

        No lock: the rabbit driver's ``_connection_lock`` is a no-op for a
        listening connection (there is no heartbeat thread), and only the
        consumer thread uses the connection."""
        channel = self._conn.channel
        if channel is None:
            return
        generation = self._generation
        try:
            last = None
            for message, result in zip(messages, results, strict=True):
                if (message.channel is not channel
                        or getattr(message, _GENERATION, None) != generation):
                    continue
                if result == REQUEUE:
                    channel.basic_reject(message.delivery_tag, requeue=True)
                else:
                    last = message
            if last is not None:
                channel.basic_ack(last.delivery_tag, multiple=True)
        except Exception as exc:  # connection or channel gone, or worse: never die here
            LOG.warning("could not settle %d notifications (%s); dropping the channel, "
                        "the broker redelivers them", len(messages), _describe(exc))
            self._abandon_channel()

    def _abandon_channel(self) -> None:
        """Give up the current channel: nothing that came on it is settled
        any more, and the connection's socket is closed without a handshake
        (kombu's ``collect``), so the broker requeues every message of it
        not acked yet. The rabbit driver reconnects on the next session."""
        conn = self._conn
        self._new_generation()
        try:
            conn.connection.connection.collect()  # context, driver, kombu
        except Exception as exc:
            LOG.warning("closing the bus connection after a failed settle: %s",
                        _describe(exc))

    # -- state and shutdown -----------------------------------------------------

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
        if self._failed_sessions >= self.FAILED_SESSIONS:
            return False  # up or not, nothing is consumed
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


def _check_driver(driver: Any) -> None:
    """Refuse, at start, a rabbit driver, kombu or py-amqp without every
    private name the listener consumes through: missing later, one would
    end every session in an error (or, for py-amqp's transport, silently
    lose the read-ahead and the socket timeouts), and the daemon would look
    ready while consuming nothing. pyproject.toml bounds the three libraries
    below their next major version for the same reason."""
    missing = []

    def need(obj: Any, owner: str, name: str, check: Callable[[Any], bool] = callable) -> None:
        value = getattr(obj, name, _MISSING)
        if value is _MISSING or not check(value):
            missing.append(f"{owner}.{name}")

    driver_names: dict[str, Callable[[Any], bool]] = {
        "_new_tags": lambda v: isinstance(v, set),
        "_consumers": lambda v: isinstance(v, dict),
        "_consume_loop_stopped": lambda v: isinstance(v, bool),
        "_connection_lock": lambda v: hasattr(v, "__enter__") and hasattr(v, "__exit__"),
        "_heartbeat_check": callable,
        "_heartbeat_supported_and_enabled": callable,
        "_set_qos": callable,
        "ensure": callable,
        "channel": lambda v: True,
        "connection": lambda v: v is not None,
    }
    for name, check in driver_names.items():
        need(driver, "oslo.messaging impl_rabbit.Connection", name, check)
    if not getattr(driver, "_consumers", None):
        missing.append("oslo.messaging impl_rabbit.Connection._consumers (none declared)")
    for consumer in getattr(driver, "_consumers", None) or ():
        need(type(consumer), "oslo.messaging impl_rabbit.Consumer", "_callback")
        need(consumer, "oslo.messaging impl_rabbit.Consumer", "consume")
    kombu_conn = getattr(driver, "connection", None)
    if kombu_conn is not None:
        for name in ("drain_events", "maybe_switch_next", "collect"):
            need(kombu_conn, "kombu Connection", name)
        for name in ("channel_errors", "recoverable_channel_errors",
                     "recoverable_connection_errors"):
            need(kombu_conn, "kombu Connection", name, lambda v: isinstance(v, tuple))
        if not isinstance(getattr(type(kombu_conn), "connected", None), property):
            missing.append("kombu Connection.connected")
        amqp_conn = kombu_conn.connection  # connected by the declares
        if isinstance(amqp_conn, amqp.Connection):
            transport = getattr(amqp_conn, "transport", None)
            need(transport, "amqp transport", "_quick_recv")
            need(transport, "amqp transport", "sock",
                 lambda v: hasattr(v, "settimeout") and hasattr(v, "gettimeout"))
    if missing:
        raise RuntimeError("warmer's bus listener consumes through private names of "
                           "oslo.messaging, kombu and py-amqp, and these are missing or "
                           f"changed here: {', '.join(missing)}; this version is not "
                           "supported")


_MISSING = object()


#: The attribute each message gets when it arrives: the listener's
#: generation then (see :meth:`BusListener._new_generation`).
_GENERATION = "warmer_generation"


def _deliver_raw(driver: Any, callback: Callable[[Any], None]) -> None:
    """Make each of the driver's consumers hand its messages to ``callback``
    as they come (py-amqp's, not decoded), instead of decoding them one by
    one into a ``RabbitMessage`` (kombu's message, JSON decoded twice) and
    rejecting in the consumer what does not decode: the listener decodes
    them once, per batch, and acks what does not decode as malformed.
    ``Consumer.consume`` registers ``self._callback`` with the broker each
    time it (re)starts consuming, after every reconnection too, so an
    attribute of the instance is what it registers. :func:`_check_driver`
    checked at start that every consumer has that method: an
    oslo.messaging without it would decode and reject again behind
    warmer's back."""
    for consumer in driver._consumers:
        consumer._callback = callback


class _ReadAhead:
    """py-amqp's transport reads each frame with three ``recv`` calls of
    exactly the bytes it needs next (header, payload, end octet): nine
    system calls for a notification, and as many times the GIL is given to
    the loop's thread and waited for again. Its read buffer keeps whatever
    a ``recv`` returned beyond what was asked, so asking for at least
    :data:`READ_AHEAD` bytes makes one call serve several frames; a call
    still returns as soon as anything is there. Nothing else changes: the
    same socket, timeouts and errors."""

    def __init__(self, recv: Callable[[int], bytes]) -> None:
        self.recv = recv

    def __call__(self, n: int) -> bytes:
        return self.recv(max(n, READ_AHEAD))


#: Bytes asked of the socket at least, per read (see :class:`_ReadAhead`):
#: a few notifications; more would make py-amqp copy its buffer's rest for
#: every frame.
READ_AHEAD = 16384


def _read_ahead(kombu_conn: Any) -> None:
    """Install :class:`_ReadAhead` on the connection's py-amqp transport (a
    new one after every reconnection), if it is one."""
    transport: Any = getattr(kombu_conn.connection, "transport", None)
    recv = getattr(transport, "_quick_recv", None)
    if recv is not None and not isinstance(recv, _ReadAhead):
        transport._quick_recv = _ReadAhead(recv)


def _socket(kombu_conn: Any) -> Any:
    """The socket under a py-amqp connection; None for other transports
    (kombu's in-memory one in tests)."""
    transport = getattr(kombu_conn.connection, "transport", None)
    sock = getattr(transport, "sock", None)
    return sock if hasattr(sock, "settimeout") else None


def _decoded(message: Any) -> Any:
    """The notification in a raw message, or :class:`Undecodable`."""
    try:
        headers = getattr(message, "headers", None) or {}
        return decode(message.body, getattr(message, "content_type", None),
                      getattr(message, "content_encoding", None), headers.get("compression"))
    except Exception as exc:  # whatever the body holds: malformed, acked
        return Undecodable(exc)


def _drop_bodies(messages: list[Any]) -> None:
    """Forget the raw bodies once decoded: only the delivery tag, the channel
    and the generation are needed to settle a message, and a batch is held
    until the loop folded it."""
    for message in messages:
        try:
            message.body = None
        except AttributeError:  # a message type that will not let go
            pass


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
    body = getattr(message, "body", None)
    if isinstance(body, str):
        return len(body.encode("utf-8", "surrogatepass"))
    return len(body) if isinstance(body, bytes) else None


