"""From a message body to an event folded on the asyncio loop: decoding,
parsing, the hand-off to the loop, and what each message's fate is.

Everything here but :meth:`Bridge._run` runs in the listener's consumer
thread (:mod:`warmer.bus.listener`), which settles the messages with the
results.

Per message, the result is HANDLED (ack) or REQUEUE:

* handed off (the loop folded the event into its state): HANDLED;
* unknown event type, or a priority warmer has no use for: HANDLED,
  counted as ``ignored``;
* malformed (a body that is not oslo.messaging's JSON envelope, an
  envelope version it refuses, an unknown priority, missing or mistyped
  fields, an image id that is not a canonical UUID, an oversized payload),
  and *any* exception raised while decoding or parsing, even one that is a
  bug of the parser: HANDLED, logged in one bounded line (no traceback)
  and counted as ``malformed``. Never requeued, so a poison message cannot
  loop, and it never reaches the engine, so it never touches Ceph;
* the loop is draining, or did not start folding the batch within
  ``handoff_timeout`` of its submission: REQUEUE. A handshake
  (:class:`_Job`) decides, once, whether the loop folds a batch or the
  consumer thread takes it back: a batch is never both folded and
  requeued, and a fold that started in time is waited for and acked;
* a bug while folding: HANDLED, logged and counted as ``error``
  (requeueing it would only repeat the bug forever).

A batch goes through three steps, so that the consumer thread can decode
and parse the next batch while the loop folds this one:
:func:`prepare_batch` (decode and parse, no loop involved),
:meth:`Bridge.submit` (one ``call_soon_threadsafe`` for the whole batch)
and :meth:`Bridge.poll` or :meth:`Bridge.finish` (the results, and the
metrics counted, once the loop folded it or it was taken back).
"""

from __future__ import annotations

import collections
import logging
import threading
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any

import kombu.compression
import kombu.serialization
import oslo_messaging
from oslo_messaging._drivers import common as driver_common

from warmer import events

if TYPE_CHECKING:
    import asyncio

    from warmer.metrics import Metrics

LOG = logging.getLogger(__name__)

HANDLED: str = oslo_messaging.NotificationResult.HANDLED
REQUEUE: str = oslo_messaging.NotificationResult.REQUEUE

#: The priorities oslo.messaging knows; warmer's queue is bound to these three.
PRIORITIES = frozenset({"audit", "debug", "info", "warn", "error", "critical", "sample"})
CONSUMED_PRIORITIES = ("info", "warn", "error")

#: The only content type oslo.messaging's rabbit driver publishes with, and
#: the only one decoded here (kombu would also decode others it knows).
JSON_CONTENT = "application/json"

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

    def __init__(self, batch: list[events.Event], deadline: float) -> None:
        self.batch = batch
        #: ``time.monotonic()`` past which an unstarted job is taken back.
        self.deadline = deadline
        self.lock = threading.Lock()
        self.started = False
        self.abandoned = False
        self.done = threading.Event()
        self.outcomes: list[str] = []


@dataclass
class Batch:
    """A batch decoded and parsed in the consumer thread, on its way to the
    loop. ``results`` has one entry per message, in order: HANDLED for what
    never reaches the loop, filled in for the rest once the loop answered."""

    results: list[str]
    #: (index in ``results``, event type) of each event handed to the loop.
    slots: list[tuple[int, Any]] = field(default_factory=list)
    events: list[events.Event] = field(default_factory=list)
    tally: collections.Counter[tuple[Any, str]] = field(default_factory=collections.Counter)
    job: _Job | None = None
    #: Set once the results are final and counted.
    closed: bool = False


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
        """:meth:`prepare`, :meth:`submit` and :meth:`finish`: HANDLED
        (ack) or REQUEUE for each notification, in order."""
        batch = Batch([HANDLED] * len(notifications))
        self.prepare(batch, range(len(notifications)), notifications, body_bytes)
        self.submit(batch)
        return self.finish(batch)

    def prepare(self, batch: Batch, indexes: Sequence[int],
                notifications: Sequence[Notification],
                body_bytes: Sequence[int | None] | None = None) -> None:
        """Parse each notification (``indexes``: its place in ``batch``),
        here, in the calling thread; keep the usable events for the loop.
        Never raises for anything the messages hold. ``body_bytes``: the
        size of each one's message body, when known (see
        :func:`warmer.events.parse`)."""
        sizes = body_bytes if body_bytes is not None else [None] * len(notifications)
        for n, (publisher_id, event_type, payload, metadata) in enumerate(notifications):
            try:
                event = events.parse(event_type, payload, metadata, publisher_id=publisher_id,
                                     max_payload_bytes=self._max_payload_bytes,
                                     body_bytes=sizes[n])
            except Exception as exc:  # whatever the input does, ack it
                LOG.warning("dropping malformed notification %s from %s: %s",
                            _short(event_type), _short(publisher_id), _describe(exc))
                batch.tally[_label(event_type), "malformed"] += 1
                continue
            if event is None:
                batch.tally[_label(event_type), "ignored"] += 1
            else:
                batch.slots.append((indexes[n], event_type))
                batch.events.append(event)

    def submit(self, batch: Batch) -> None:
        """Hand the batch's events to the loop, in one call, without waiting.
        ``handoff_timeout`` runs from now. A loop that is closed already
        gets nothing: every event is requeued."""
        if not batch.events:
            return
        job = _Job(batch.events, time.monotonic() + self._handoff_timeout)
        try:
            self._loop.call_soon_threadsafe(self._run, job)
        except RuntimeError:  # loop closed
            job.abandoned = True
        batch.job = job

    def poll(self, batch: Batch) -> list[str] | None:
        """The batch's results if they are known now (the loop folded it, or
        did not start folding it within ``handoff_timeout``: it is taken
        back, every event REQUEUE); else None. Does not wait."""
        job = batch.job
        if job is not None and not job.done.is_set() and not job.abandoned:
            if time.monotonic() < job.deadline:
                return None
            with job.lock:
                job.abandoned = not job.started
            if not job.abandoned:
                return None  # started: the fold is synchronous and bounded
            LOG.info("requeueing %d notifications: the loop did not take them "
                     "within %.1fs", len(job.batch), self._handoff_timeout)
        return self._close(batch)

    def finish(self, batch: Batch) -> list[str]:
        """The batch's results, waiting for them as long as it takes: until
        ``handoff_timeout`` for the loop to start folding, then until the
        fold that started is done. :attr:`keepalive` runs between slices."""
        job = batch.job
        if job is not None and not job.abandoned:
            if not self._wait(job.done, job.deadline):
                with job.lock:
                    job.abandoned = not job.started
                if job.abandoned:
                    LOG.info("requeueing %d notifications: the loop did not take them "
                             "within %.1fs", len(job.batch), self._handoff_timeout)
                else:
                    self._wait(job.done, None)  # started: synchronous and bounded
        return self._close(batch)

    def _close(self, batch: Batch) -> list[str]:
        """Fill in the results of a batch the loop folded or that was taken
        back, and count every message of it, once."""
        if batch.closed:
            return batch.results
        job = batch.job
        outcomes = ([REQUEUE] * len(batch.events)
                    if job is None or job.abandoned or len(job.outcomes) != len(batch.events)
                    else job.outcomes)  # no outcomes: the fold died of a BaseException
        for (n, event_type), outcome in zip(batch.slots, outcomes, strict=True):
            if outcome == REQUEUE:
                batch.results[n] = REQUEUE
                outcome = "requeued"
            batch.tally[_label(event_type), outcome] += 1
        for (label, outcome), count in batch.tally.items():
            self._metrics.notification(label, outcome, count)
        batch.closed = True
        return batch.results

    def _wait(self, done: threading.Event, deadline: float | None) -> bool:
        """Wait for ``done`` until ``deadline`` (``time.monotonic()``; None:
        for ever), in slices with :attr:`keepalive` between them."""
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

    def ignored(self, batch: Batch, event_type: Any) -> None:
        batch.tally[_label(event_type), "ignored"] += 1

    def malformed_envelope(self, batch: Batch, exc: BaseException) -> None:
        LOG.warning("dropping a notification with a malformed envelope: %s", _describe(exc))
        batch.tally[None, "malformed"] += 1


def decode(body: Any, content_type: Any, content_encoding: Any = None,
           compression: Any = None) -> Any:
    """The notification in a message body: the inner ``oslo.message`` object
    of oslo.messaging's envelope, decoded as its rabbit driver decodes it:
    decompressed by kombu as its ``compression`` header says (a publisher's
    ``[oslo_messaging_rabbit] kombu_compression``), deserialized by kombu
    (its content type and encoding rules), then ``deserialize_msg``, which
    also checks the envelope's version; each JSON document once. Raises for
    a body that is not that: another content type, a compression kombu does
    not know or that fails, JSON that does not parse, an envelope version
    oslo.messaging refuses."""
    if content_type != JSON_CONTENT:
        raise ValueError(f"content type {_short(content_type)} is not {JSON_CONTENT}")
    if compression:  # kombu.message.Message does this before anything else
        body = _decompress(body, compression)
    return driver_common.deserialize_msg(_loads(body, content_type, content_encoding))


#: kombu's own decompression and deserialization (untyped there).
_decompress: Callable[[Any, Any], Any] = kombu.compression.decompress
_loads: Callable[[Any, Any, Any], Any] = kombu.serialization.loads


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


#: A message whose body could not be decoded, in place of its notification.
@dataclass(frozen=True)
class Undecodable:
    error: BaseException


def prepare_batch(bridge: Bridge, messages: Sequence[Any],
                  body_bytes: Sequence[int | None] | None = None) -> Batch:
    """Decoded notifications (the inner ``oslo.message`` objects, or
    :class:`Undecodable`), in order, made ready for :meth:`Bridge.submit`.
    A malformed envelope is acked and counted; a priority warmer's queue is
    not bound to is acked as ``ignored``; the rest is parsed."""
    sizes = body_bytes if body_bytes is not None else [None] * len(messages)
    batch = Batch([HANDLED] * len(messages))
    usable: list[int] = []
    notifications: list[Notification] = []
    for n, message in enumerate(messages):
        try:
            if isinstance(message, Undecodable):
                raise message.error
            priority, fields = envelope(message)
        except Exception as exc:
            bridge.malformed_envelope(batch, exc)
            continue
        if priority not in CONSUMED_PRIORITIES:
            bridge.ignored(batch, fields[1])
            continue
        usable.append(n)
        notifications.append(fields)
    bridge.prepare(batch, usable, notifications, [sizes[n] for n in usable])
    return batch


def dispatch_batch(bridge: Bridge, messages: Sequence[Any],
                   body_bytes: Sequence[int | None] | None = None) -> list[str]:
    """:func:`prepare_batch`, handed off and waited for: HANDLED (ack) or
    REQUEUE for each message, in order."""
    batch = prepare_batch(bridge, messages, body_bytes)
    bridge.submit(batch)
    return bridge.finish(batch)


def dispatch(bridge: Bridge, message: Any) -> str:
    """:func:`dispatch_batch` of one message."""
    return dispatch_batch(bridge, [message])[0]


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
