"""Invariant 6 at the bus boundary: decoding, and the ack and requeue rules of
the bridge (the listener that settles the messages: test_listener.py)."""

from __future__ import annotations

import asyncio
import json
import logging
import threading
import time
from typing import Any

import pytest

from warmer.bus.bridge import (
    HANDLED,
    REQUEUE,
    Bridge,
    Undecodable,
    decode,
    dispatch,
    dispatch_batch,
    prepare_batch,
)
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
    monkeypatch.setattr("warmer.bus.bridge.events.parse", broken)
    bridge, metrics, seen = make(loop, ok)
    with caplog.at_level(logging.DEBUG, logger="warmer.bus.bridge"):
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


def envelope_body(message: Any) -> str:
    """A message body as oslo.messaging's rabbit driver publishes it."""
    return json.dumps({"oslo.version": "2.0", "oslo.message": json.dumps(message)})


def test_a_body_is_decoded_as_the_rabbit_driver_decodes_it() -> None:
    message = _message()
    assert decode(envelope_body(message), "application/json") == message
    assert decode(envelope_body(message).encode(), "application/json") == message
    # An object without oslo's envelope is taken as it is, as the driver does.
    assert decode(json.dumps(message), "application/json") == message


@pytest.mark.parametrize("body,content_type", [
    (b"\xff\xfe not json", "application/json"),
    ("{\"oslo.version\": \"2.0\", \"oslo.message\": \"{not json\"}", "application/json"),
    ("{\"oslo.version\": \"3.0\", \"oslo.message\": \"{}\"}", "application/json"),
    ("{\"oslo.version\": \"2.0\", \"oslo.message\": 5}", "application/json"),
    (envelope_body({"priority": "INFO"}), "application/x-python-serialize"),
    (envelope_body({"priority": "INFO"}), None),
])
def test_a_body_that_does_not_decode_is_acked_as_malformed_and_never_requeued(
        loop: asyncio.AbstractEventLoop, body: Any, content_type: Any) -> None:
    """What the rabbit driver rejected before warmer saw it (and counted only
    in a log line): here it is malformed like any other poison message. No
    content type but JSON is decoded, pickle least of all."""
    with pytest.raises(Exception):  # noqa: B017 (whatever decoding raises)
        decode(body, content_type)
    bridge, metrics, seen = make(loop, ok)
    try:
        decoded: Any = decode(body, content_type)
    except Exception as exc:
        decoded = Undecodable(exc)
    batch = prepare_batch(bridge, [_message(), decoded, _message()])
    bridge.submit(batch)
    assert bridge.finish(batch) == [HANDLED] * 3
    assert len(seen) == 2
    assert count(metrics, "other", "malformed") == 1


def test_a_batch_on_the_loop_is_answered_by_poll_only_once_folded(
        loop: asyncio.AbstractEventLoop) -> None:
    """poll() never waits: None while the loop has not folded the batch, the
    results (counted once) afterwards."""
    release = threading.Event()

    def slow(ev: Event) -> str:
        release.wait(5)
        return "handled"
    bridge, metrics, _ = make(loop, slow)
    batch = prepare_batch(bridge, [_message(), "garbage"])
    bridge.submit(batch)
    assert bridge.poll(batch) is None
    assert count(metrics, "image.activate", "handled") == 0
    release.set()
    deadline = time.monotonic() + 5
    while (results := bridge.poll(batch)) is None and time.monotonic() < deadline:
        time.sleep(0.01)
    assert results == [HANDLED, HANDLED]
    assert bridge.poll(batch) == [HANDLED, HANDLED]  # closed: counted once
    assert count(metrics, "image.activate", "handled") == 1
    assert count(metrics, "other", "malformed") == 1


def test_poll_takes_back_a_batch_the_loop_did_not_start_in_time(
        loop: asyncio.AbstractEventLoop) -> None:
    bridge, metrics, seen = make(loop, ok, timeout=0.2)
    loop.call_soon_threadsafe(time.sleep, 0.6)  # the loop is stuck
    batch = prepare_batch(bridge, [_message()])
    bridge.submit(batch)
    assert bridge.poll(batch) is None
    time.sleep(0.3)
    assert bridge.poll(batch) == [REQUEUE]
    time.sleep(0.5)  # the loop is free again: the batch was taken back
    assert seen == [] and count(metrics, "image.activate", "requeued") == 1


class _Fatal(BaseException):
    pass


def test_a_fold_that_dies_of_a_base_exception_requeues_its_batch(
        loop: asyncio.AbstractEventLoop) -> None:
    """Not one of the fold's outcomes: the batch is requeued, and nothing
    escapes into the consumer thread (which would die)."""
    def fatal(ev: Event) -> str:
        raise _Fatal()
    bridge, metrics, _ = make(loop, fatal)
    batch = prepare_batch(bridge, [_message(), _message()])
    bridge.submit(batch)
    assert bridge.finish(batch) == [REQUEUE, REQUEUE]
    assert count(metrics, "image.activate", "requeued") == 2
