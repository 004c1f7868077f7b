"""Invariant 6 under fire: 10,000 generated hostile notifications through
the listener's real dispatch and :class:`Bridge`, with a real event loop in a thread.

Each case is built from a valid notification of one of the shapes warmer
uses, then (mostly) broken in one known way, so the generator knows what
the bridge must do with it:

* ``sink``: well formed (possibly with odd but harmless extras); handed to
  the sink exactly once;
* ``malformed``: acked, counted ``malformed``, logged in one bounded line
  without a traceback, and never handed to the sink (the sink stands in for
  the engine, the only way to Ceph);
* ``ignored``: an event type warmer does not use; acked, counted
  ``ignored``, never handed on.

Nothing may escape the parsing (``Bridge.prepare``), and nothing may be
requeued: a requeued poison message would loop forever.
"""

from __future__ import annotations

import asyncio
import logging
import math
import random
import time
import uuid
from collections.abc import Iterator
from dataclasses import dataclass
from typing import Any

from warmer.bus import bridge as bridge_mod
from warmer.bus import listener
from warmer.bus.listener import HANDLED, REQUEUE, Bridge, dispatch
from warmer.events import Event, ImageChanged, VolumeCreatedFromImage
from warmer.metrics import Metrics

CASES = 10_000
SEED = 20261125
MAX_PAYLOAD = 64 * 1024


@dataclass
class Case:
    name: str
    message: Any
    expect: str  # sink, malformed or ignored
    image_id: str | None = None
    site: str | None = None  # for a volume.create.end handed on: its backend_host


def _uuid(rng: random.Random) -> str:
    return str(uuid.UUID(int=rng.getrandbits(128), version=4))


def _ts(rng: random.Random) -> str:
    return f"2026-11-{rng.randint(1, 28):02d} 10:{rng.randint(0, 59):02d}:00.000000"


def _envelope(rng: random.Random, event_type: Any, payload: Any, publisher: str) -> dict[str, Any]:
    return {"message_id": _uuid(rng), "publisher_id": publisher, "event_type": event_type,
            "priority": rng.choice(["INFO", "INFO", "info", "WARN", "ERROR"]),
            "payload": payload, "timestamp": _ts(rng)}


def _glance_image(rng: random.Random, image_id: str) -> dict[str, Any]:
    return {"id": image_id, "name": f"img-{rng.randint(0, 999)}",
            "status": rng.choice(["queued", "saving", "active"]),
            "disk_format": rng.choice(["raw", "qcow2", None]),
            "container_format": "bare", "size": rng.choice([None, 0, rng.getrandbits(40)]),
            "visibility": rng.choice(["public", "private"]), "checksum": None,
            "owner": "p", "min_disk": 0, "min_ram": 0, "protected": False,
            "properties": {"os_distro": "ubuntu"}, "tags": ["a"],
            "created_at": "2026-11-25T09:00:00Z", "updated_at": "2026-11-25T10:00:00Z",
            "deleted": False, "deleted_at": None, "is_public": True, "virtual_size": None}


def _rows(volume_id: str, meta: dict[str, Any]) -> list[dict[str, Any]]:
    return [{"id": n, "volume_id": volume_id, "snapshot_id": None, "key": k, "value": v,
             "deleted": False, "deleted_at": None, "created_at": "2026-11-25T10:00:00",
             "updated_at": None} for n, (k, v) in enumerate(meta.items())]


SITE_HOSTS = ["ctl@ceph#ceph", "edge1.example.org@ceph-edge#rbd", "h@lvm#LVM iSCSI",
              "c1@ceph-central#ceph-central"]
ZONES = ["nova", "az-edge", "az central", None]


def _volume(rng: random.Random, image_id: str) -> dict[str, Any]:
    volume_id = _uuid(rng)
    return {"tenant_id": "t", "user_id": "u", "host": rng.choice(SITE_HOSTS),
            "availability_zone": rng.choice(ZONES), "volume_id": volume_id, "volume_type": "type",
            "display_name": "v", "status": "available", "size": 1, "metadata": [],
            "volume_attachment": [], "snapshot_id": None,
            "glance_metadata": _rows(volume_id, {"image_id": image_id, "disk_format": "raw",
                                                 "size": str(rng.getrandbits(30))})}


def valid(rng: random.Random) -> tuple[str, dict[str, Any], str]:
    """A valid notification of a random kind: (kind, envelope, image id)."""
    image_id = _uuid(rng)
    kind = rng.choice(["image", "delete", "send", "volume", "cache"])
    if kind == "image":
        event = rng.choice(["image.create", "image.update", "image.upload",
                            "image.activate", "image.prepare"])
        message = _envelope(rng, event, _glance_image(rng, image_id), "image.g1")
    elif kind == "delete":
        message = _envelope(rng, "image.delete", _glance_image(rng, image_id), "image.g1")
    elif kind == "send":
        message = _envelope(rng, "image.send", {
            "image_id": image_id, "bytes_sent": 10, "owner_id": "o",
            "receiver_user_id": "u", "receiver_tenant_id": "t"}, "image.g1")
    elif kind == "volume":
        message = _envelope(rng, "volume.create.end", _volume(rng, image_id),
                            "volume.ctl@ceph#ceph")
    else:
        message = _envelope(rng, f"image_volume_cache.{rng.choice(['hit', 'miss'])}",
                            {"image_id": image_id, "host": rng.choice(SITE_HOSTS)},
                            "volume.ctl")
    return kind, message, image_id


def bad_image_ids(rng: random.Random, good: str) -> str:
    return rng.choice([
        f"volume-{good}", f"warmer-tmp.{good}", "a..b", "{" + good + "}",
        good.replace("-", ""), good.upper(), f"urn:uuid:{good}", good + "\n", " " + good,
        good[:-1] + "z", good + "0", good[:35], "", "../" + good, good.replace("-", "_"),
        good[:8] + "\u2010" + good[9:],  # a unicode hyphen
        "".join(rng.choice("0123456789abcdef-") for _ in range(36)).replace("-", "x", 1),
        "x" * rng.randint(37, 5000),
    ])


WRONG_TYPES: list[Any] = [None, 0, -1, 1.5, math.nan, math.inf, -math.inf, True, [], {},
                          ["x"], {"id": "x"}, 10 ** 30]


def _deep(depth: int) -> Any:
    value: Any = "leaf"
    for n in range(depth):
        value = {"k": value} if n % 2 else [value]
    return value


def _id_path(kind: str, message: dict[str, Any]) -> tuple[dict[str, Any], str]:
    """The dict and key that hold this notification's image id."""
    payload = message["payload"]
    if kind in ("image", "delete"):
        return payload, "id"
    if kind == "volume":
        row = next(r for r in payload["glance_metadata"] if r["key"] == "image_id")
        return row, "value"
    return payload, "image_id"


# Another field each kind cannot do without.
REQUIRED = {"image": "status", "delete": "id", "send": "image_id", "volume": "volume_id",
            "cache": "host"}


def _required(kind: str, message: dict[str, Any]) -> tuple[dict[str, Any], str]:
    return message["payload"], REQUIRED[kind]


def hostile(rng: random.Random, n: int) -> Case:
    """One case: a valid notification, broken in one way (or not at all)."""
    kind, message, image_id = valid(rng)
    payload = message["payload"]
    how = rng.choice([
        "valid", "valid_with_noise", "bad_image_id", "wrong_type", "missing", "huge_string",
        "deep", "nan_size", "unicode_digits", "huge_list", "unknown_event", "non_dict_envelope",
        "bad_priority", "non_dict_payload", "bad_message_id", "bad_tags", "bad_receiver",
        "huge_int", "long_volume_id", "bad_rows", "bad_timestamp", "not_from_image",
        "bad_site", "odd_publisher",
    ])
    name = f"{n}:{kind}:{how}"
    site = payload["host"] if kind == "volume" else None
    if how == "valid":
        return Case(name, message, "sink", image_id, site=site)
    if how == "valid_with_noise":
        # Harmless oddities: unknown fields of any JSON type, a garbage
        # notification timestamp (taken as now), no message id.
        payload[f"x_{rng.randint(0, 99)}"] = rng.choice(
            [math.nan, math.inf, [1, [2, [3]]], {"a": None}, "\u00b2", 10 ** 18, -0.0])
        if rng.random() < 0.5:
            message["timestamp"] = rng.choice(["yesterday", 5, None, "\u0663"])
        if rng.random() < 0.3:
            del message["message_id"]
        return Case(name, message, "sink", image_id, site=site)
    if how == "bad_image_id":
        holder, key = _id_path(kind, message)
        holder[key] = bad_image_ids(rng, image_id)
        return Case(name, message, "malformed")
    if how == "wrong_type":
        holder, key = (_id_path(kind, message) if rng.random() < 0.5
                       else _required(kind, message))
        holder[key] = rng.choice(WRONG_TYPES)
        return Case(name, message, "malformed")
    if how == "missing":
        holder, key = (_id_path(kind, message) if rng.random() < 0.5
                       else _required(kind, message))
        del holder[key]  # an image_id row without a value is malformed too
        return Case(name, message, "malformed")
    if how == "huge_string":
        payload["name" if kind in ("image", "delete") else "blob"] = "x" * (
            MAX_PAYLOAD + rng.randint(1, 50_000))
        return Case(name, message, "malformed")
    if how == "deep":
        payload["properties" if kind == "image" else "nested"] = _deep(rng.randint(3000, 6000))
        return Case(name, message, "malformed")
    if how == "nan_size" and kind == "image":
        payload["size"] = rng.choice([math.nan, math.inf, -math.inf, 1.0, -5, "5", True])
        return Case(name, message, "malformed")
    if how == "unicode_digits" and kind == "volume":
        row = next(r for r in payload["glance_metadata"] if r["key"] == "size")
        row["value"] = rng.choice(["\u00b2", "\u0663", "\uff11\uff12", "9" * 5000, "1e3",
                                   "-1", " 1", "0x1", "1_0", "9" * 21])
        return Case(name, message, "malformed")
    if how == "huge_list":
        if kind == "volume":
            payload["glance_metadata"] = payload["glance_metadata"] * 2000
        else:
            payload["tags"] = ["t"] * (MAX_PAYLOAD // 4)
        return Case(name, message, "malformed")
    if how == "unknown_event":
        message["event_type"] = rng.choice([
            "compute.instance.create.end", "image.create ", "IMAGE.CREATE", "image",
            "volume.create.start", "image.member.create", "task.run", "", None, 5,
            ["image.create"], {"e": 1}, "x" * 10_000])
        return Case(name, message, "ignored")
    if how == "non_dict_envelope":
        return Case(name, rng.choice([["not", "a", "dict"], "text", 42, None, 1.5,
                                      [message]]), "malformed")
    if how == "bad_priority":
        message["priority"] = rng.choice([None, 5, ["INFO"], {"p": 1}])
        return Case(name, message, "malformed")
    if how == "non_dict_payload":
        message["payload"] = rng.choice(["payload", ["a"], None, 3, math.nan])
        return Case(name, message, "malformed")
    if how == "bad_message_id":
        message["message_id"] = rng.choice(["m" * 300, 7, ["m"], {"m": 1}, "m\n", ""])
        return Case(name, message, "malformed")
    if how == "bad_tags" and kind == "image":
        payload["tags"] = rng.choice(["gold", [1, 2], {"t": 1}, [None]])
        return Case(name, message, "malformed")
    if how == "bad_receiver" and kind == "send":
        payload[rng.choice(["receiver_user_id", "receiver_tenant_id"])] = rng.choice(
            [5, ["u"], "u" * 300, {"u": 1}])
        return Case(name, message, "malformed")
    if how == "huge_int":
        payload["size" if kind == "image" else "n"] = 10 ** rng.randint(5000, 9000)
        return Case(name, message, "malformed")
    if how == "long_volume_id" and kind == "volume":
        payload["volume_id"] = rng.choice(["v" * 256, "v\n", "-v", "v v", "v/../x"])
        return Case(name, message, "malformed")
    if how == "bad_rows" and kind == "volume":
        payload["glance_metadata"] = rng.choice([
            {"image_id": image_id}, [{"value": image_id}], [["image_id", image_id]],
            [{"key": "image_id", "value": 7}], [{"key": 7, "value": image_id}], "rows"])
        return Case(name, message, "malformed")
    if how == "bad_timestamp" and kind == "image":
        payload["updated_at"] = rng.choice(["yesterday", 5, ["2026"], "2026-13-45 99:99:99"])
        return Case(name, message, "malformed")
    if how == "not_from_image" and kind == "volume":
        payload["glance_metadata"] = []  # a volume not made from an image
        return Case(name, message, "ignored")
    if how == "bad_site" and kind in ("volume", "cache"):
        field = rng.choice(["host", "availability_zone"]) if kind == "volume" else "host"
        payload[field] = rng.choice(BAD_SITES)
        return Case(name, message, "malformed")
    if how == "odd_publisher" and kind == "volume":
        # No host in the payload and a publisher id that names none: the
        # demand still counts, at an unknown site.
        payload.pop("host")
        message["publisher_id"] = rng.choice(BAD_PUBLISHERS)
        return Case(name, message, "sink", image_id, site="")
    return Case(name + ":as-is", message, "sink", image_id)


BAD_SITES: list[Any] = [5, 1.5, True, ["h@b#p"], {"h": 1}, "h" * 256, "h@b#p\n", "h\x00@b",
                        "h@b#\x1b[2J", "\u2028", "h" * 100_000]
BAD_PUBLISHERS: list[Any] = [None, 5, ["volume.h@b#p"], "volume", "volume.", "image.h@b#p",
                             "volume.h\n@b", "volume." + "h" * 5000, ""]


def generate(seed: int, count: int) -> Iterator[Case]:
    rng = random.Random(seed)
    for n in range(count):
        yield hostile(rng, n)


class _LogCheck(logging.Handler):
    def __init__(self) -> None:
        super().__init__(logging.DEBUG)
        self.records: list[logging.LogRecord] = []

    def emit(self, record: logging.LogRecord) -> None:
        self.records.append(record)


def test_ten_thousand_hostile_notifications_never_escape_requeue_or_reach_the_engine(
        loop: asyncio.AbstractEventLoop) -> None:
    seen: list[Event] = []

    def sink(event: Event) -> str:
        seen.append(event)
        return "handled"

    metrics = Metrics()
    outcomes: list[str] = []
    count = metrics.notification

    def counting(event_type: object, outcome: str, n: int = 1) -> None:
        outcomes.extend([outcome] * n)
        count(event_type, outcome, n)

    metrics.notification = counting  # type: ignore[method-assign]
    bridge = Bridge(loop, sink, metrics, max_payload_bytes=MAX_PAYLOAD, handoff_timeout=5.0)
    escaped: list[tuple[str, BaseException]] = []
    prepare = bridge.prepare

    def watched(*args: Any) -> None:
        try:
            prepare(*args)
        except BaseException as exc:  # what the listener would turn into a requeue
            escaped.append((current.name, exc))
            raise

    bridge.prepare = watched  # type: ignore[method-assign]
    logs = _LogCheck()
    logger = logging.getLogger(bridge_mod.__name__)
    logger.addHandler(logs)
    level = logger.level
    logger.setLevel(logging.DEBUG)
    requeued: list[str] = []
    wrong: list[str] = []
    tally: dict[str, int] = {}
    started = time.monotonic()
    try:
        for current in generate(SEED, CASES):
            tally[current.expect] = tally.get(current.expect, 0) + 1
            before_seen, before_out, before_logs = len(seen), len(outcomes), len(logs.records)
            result = dispatch(bridge, current.message)
            if result == REQUEUE:
                requeued.append(current.name)
            new_seen = seen[before_seen:]
            new_out = outcomes[before_out:]
            new_logs = logs.records[before_logs:]
            if current.expect == "sink":
                ok = (result == HANDLED and len(new_seen) == 1
                      and _image_of(new_seen[0]) == current.image_id and new_out == ["handled"]
                      and (current.site is None or _site_of(new_seen[0]) == current.site))
            elif current.expect == "malformed":
                ok = (result == HANDLED and not new_seen and new_out == ["malformed"]
                      and len(new_logs) == 1 and new_logs[0].exc_info is None
                      and len(new_logs[0].getMessage()) <= 400)
            else:
                ok = result == HANDLED and not new_seen and new_out == ["ignored"]
            if not ok:
                wrong.append(f"{current.name}: result={result} sink={len(new_seen)} "
                             f"outcomes={new_out} logs={[r.getMessage()[:120] for r in new_logs]}")
    finally:
        logger.removeHandler(logs)
        logger.setLevel(level)
    elapsed = time.monotonic() - started
    print(f"\n{CASES} hostile notifications in {elapsed:.2f}s: {sorted(tally.items())}")
    assert escaped == [], f"{len(escaped)} escaped prepare(), e.g. {escaped[:3]}"
    assert requeued == [], f"{len(requeued)} requeued, e.g. {requeued[:5]}"
    assert wrong == [], f"{len(wrong)} cases handled wrongly, e.g.\n" + "\n".join(wrong[:10])
    # The generator must really have exercised every expectation.
    assert tally.get("malformed", 0) > CASES // 2 and tally.get("sink", 0) > CASES // 10
    assert tally.get("ignored", 0) > 100


def _image_of(event: Event) -> str:
    return event.image.id if isinstance(event, ImageChanged) else event.image_id


def _site_of(event: Event) -> str | None:
    return event.backend_host if isinstance(event, VolumeCreatedFromImage) else None


class _Raw:
    def __init__(self, body: Any) -> None:
        self.body = body


def test_an_astral_character_body_over_the_limit_is_malformed_not_waved_through(
        loop: asyncio.AbstractEventLoop) -> None:
    """py-amqp decodes a body that has a content encoding into ``str``. A
    body of astral characters (4 bytes of UTF-8 each, 12 characters each
    once JSON-escaped) must be measured in bytes: counted in characters it
    looked small enough to skip the size check, and the payload, 1.5 times
    the limit, reached the engine."""
    seen: list[Event] = []

    def sink(event: Event) -> str:
        seen.append(event)
        return "handled"

    metrics = Metrics()
    bridge = Bridge(loop, sink, metrics, max_payload_bytes=MAX_PAYLOAD, handoff_timeout=5.0)
    image = {"id": "0b7e5c3a-2f41-4d8e-9c6b-1a2b3c4d5e6f", "status": "active",
             "disk_format": "raw", "size": 1, "properties": {"k": "\U0001f600" * 8000}}
    message = dict(priority="INFO", event_type="image.update", publisher_id="image.h",
                   payload=image, message_id="m", timestamp="2026-11-25 10:00:00")
    body = '{"oslo.version": "2.0", "oslo.message": "' + "\U0001f600" * 8000 + '"}'
    assert len(body) * 8 <= MAX_PAYLOAD < len(body.encode()) * 8  # the bypass
    size = listener._body_size(_Raw(body))
    assert size == len(body.encode())
    assert listener.dispatch_batch(bridge, [message], [size]) == [HANDLED]
    assert seen == []
    assert metrics.registry.get_sample_value(
        "warmer_notifications_total",
        {"event_type": "image.update", "outcome": "malformed"}) == 1
