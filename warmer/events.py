"""Typed events parsed from Glance and Cinder notifications.

Parsing is strict about what warmer relies on and liberal about the rest:
a field warmer uses must be present with the right type, or the whole
notification is rejected as :class:`MalformedEvent`; fields it does not
use are ignored. Unknown event types yield ``None``. Parsing never does
I/O, so a rejected notification can never have touched Ceph.

Shapes (DESIGN.md §3):

* Glance ``image.*``: the payload is the image (id, status, disk_format,
  size, visibility, properties, tags, updated_at, ...); no locations.
* Glance ``image.send``: image_id, bytes_sent, receiver_user_id and
  receiver_tenant_id (who downloaded it: warmer's own downloads are not
  demand, invariant 9).
* Cinder ``volume.create.end``: ``glance_metadata`` is a list of DB rows
  ``{key, value, ...}``; the source image is the row whose key is
  ``image_id``. An empty list means "not from an image". Where it happened
  (:mod:`warmer.sites`): the payload's ``host`` (``host@backend#pool``, the
  volume's own host, which Cinder also uses as the publisher:
  ``volume.<host@backend#pool>``) and ``availability_zone``.
* Cinder ``image_volume_cache.hit|miss``: ``{image_id, host}``, where
  ``host`` is ``host@backend#pool`` (the publisher is only
  ``volume.<host>``, without the backend).

Glance's ``image.send`` says nothing about a Cinder site.

Every image id must be a canonical UUID (:mod:`warmer.ids`); other ids,
hosts and message ids are bounded. Site fields (hosts, availability
zones) are strings of at most 255 printable characters: no control
characters, no newlines. Numbers that arrive as strings
(``glance_metadata`` ``size``) must be plain ASCII digits.
"""

from __future__ import annotations

import datetime as dt
import json
import re
import uuid
from dataclasses import dataclass, field
from typing import Any

from warmer.ids import MAX_ID_LEN, InvalidId, bounded_token, canonical_image_id

GLANCE_IMAGE_EVENTS = frozenset({
    "image.create", "image.update", "image.upload", "image.activate",
    "image.prepare",
})
IMAGE_DELETE = "image.delete"
IMAGE_SEND = "image.send"
VOLUME_CREATE_END = "volume.create.end"
CACHE_EVENTS = {"image_volume_cache.hit": "hit", "image_volume_cache.miss": "miss"}

MAX_TEXT_LEN = 255  # hosts, user and project ids
_DIGITS = re.compile(r"[0-9]{1,20}")
_TS_FORMATS = ("%Y-%m-%d %H:%M:%S.%f", "%Y-%m-%d %H:%M:%S",
               "%Y-%m-%dT%H:%M:%S.%f", "%Y-%m-%dT%H:%M:%S")
#: The shape every OpenStack service writes its timestamps in, which the
#: formats above read too; read here without ``strptime`` (7-8 us each, two
#: per ``volume.create.end``).
_TS_CANONICAL = re.compile(
    r"([0-9]{4})-([0-9]{2})-([0-9]{2})[ T]([0-9]{2}):([0-9]{2}):([0-9]{2})(?:\.([0-9]{1,6}))?")


class MalformedEvent(ValueError):
    """A notification that claims a known event type but cannot be used."""


@dataclass(frozen=True)
class ImageInfo:
    """What warmer uses of a Glance image, from a notification or the API."""

    id: str
    status: str
    disk_format: str | None = None
    size: int | None = None
    visibility: str | None = None
    name: str | None = None
    checksum: str | None = None
    os_hash_algo: str | None = None
    os_hash_value: str | None = None
    properties: dict[str, str] = field(default_factory=dict)
    tags: frozenset[str] = frozenset()
    updated_at: dt.datetime | None = None


@dataclass(frozen=True)
class ImageChanged:
    event_type: str
    image: ImageInfo
    timestamp: dt.datetime


@dataclass(frozen=True)
class ImageDeleted:
    image_id: str
    timestamp: dt.datetime


@dataclass(frozen=True)
class ImageSent:
    image_id: str
    message_id: str
    timestamp: dt.datetime
    receiver_user_id: str | None = None
    receiver_tenant_id: str | None = None


@dataclass(frozen=True)
class VolumeCreatedFromImage:
    volume_id: str
    image_id: str
    #: ``host@backend#pool`` of the volume: the payload's ``host``, else the
    #: host part of the publisher id; ``""`` when neither says.
    backend_host: str
    disk_format: str | None
    size: int | None
    timestamp: dt.datetime
    #: The volume's availability zone; ``None`` when the payload has none.
    availability_zone: str | None = None
    #: When Cinder created the volume's record (payload ``created_at``), before
    #: it chose between a clone and a download; ``None`` when unreadable.
    created_at: dt.datetime | None = None


@dataclass(frozen=True)
class ImageCacheUsed:
    kind: str  # "hit" or "miss"
    image_id: str
    host: str  # host@backend#pool of the cache entry (hit) or the new volume (miss)
    message_id: str
    timestamp: dt.datetime


Event = ImageChanged | ImageDeleted | ImageSent | VolumeCreatedFromImage | ImageCacheUsed


def is_known(event_type: Any) -> bool:
    return isinstance(event_type, str) and (
        event_type in GLANCE_IMAGE_EVENTS or event_type in CACHE_EVENTS
        or event_type in (IMAGE_DELETE, IMAGE_SEND, VOLUME_CREATE_END))


#: A payload decoded from a message body of ``n`` bytes is at most this
#: many times ``n`` characters long once written again as ``json.dumps``
#: writes it: a non-ASCII character (2 to 4 bytes of UTF-8) becomes at most
#: 12 characters, a separator 2, a short float such as ``9e15`` 18
#: (4.5 times); the rest stays as long or gets shorter.
JSON_GROWTH = 8


def parse(event_type: Any, payload: Any, metadata: Any,
          *, publisher_id: Any = None, max_payload_bytes: int = 1 << 20,
          now: dt.datetime | None = None, body_bytes: int | None = None) -> Event | None:
    """Turn one notification into an :data:`Event`.

    Returns ``None`` for an event type warmer does not use, and for a
    ``volume.create.end`` of a volume not created from an image. Raises
    :class:`MalformedEvent` for anything else that cannot be used.

    ``body_bytes``, the size of the message body the payload was decoded
    from, when known, spares measuring a payload that cannot be over the
    limit (a body of at most ``max_payload_bytes / JSON_GROWTH`` bytes).
    """
    if not is_known(event_type):
        return None
    if not isinstance(payload, dict):
        raise MalformedEvent(f"{event_type}: payload is {type(payload).__name__}, not an object")
    if body_bytes is None or body_bytes * JSON_GROWTH > max_payload_bytes:
        _check_size(event_type, payload, max_payload_bytes)
    meta = metadata if isinstance(metadata, dict) else {}
    ts = _timestamp(meta.get("timestamp"), now)
    message_id = meta.get("message_id")
    message_id = (str(uuid.uuid4()) if message_id is None
                  else _token(message_id, "message_id"))

    if event_type in GLANCE_IMAGE_EVENTS:
        return ImageChanged(event_type, image_info(payload), ts)
    if event_type == IMAGE_DELETE:
        return ImageDeleted(_image_id(payload.get("id"), "id"), ts)
    if event_type == IMAGE_SEND:
        return ImageSent(_image_id(payload.get("image_id"), "image_id"), message_id, ts,
                         receiver_user_id=_opt_text(payload, "receiver_user_id"),
                         receiver_tenant_id=_opt_text(payload, "receiver_tenant_id"))
    if event_type == VOLUME_CREATE_END:
        return _volume_created(payload, publisher_id, ts)
    return ImageCacheUsed(CACHE_EVENTS[event_type],
                          _image_id(payload.get("image_id"), "image_id"),
                          _site(payload.get("host"), f"{event_type}: host"), message_id, ts)


def image_info(payload: dict[str, Any]) -> ImageInfo:
    """Parse a Glance image, as notifications and ``GET /v2/images/{id}`` give it."""
    props = payload.get("properties")
    if props is None:
        # The v2 API returns custom properties at the top level; keep the
        # string-valued ones that are not Glance's own fields.
        props = {k: v for k, v in payload.items()
                 if isinstance(v, str) and k not in _CORE_FIELDS}
    if not isinstance(props, dict):
        raise MalformedEvent("image properties is not an object")
    tags = payload.get("tags") or []
    if not isinstance(tags, list) or not all(isinstance(t, str) for t in tags):
        raise MalformedEvent("image tags is not a list of strings")
    return ImageInfo(
        id=_image_id(payload.get("id"), "id"),
        status=_str(payload, "status"),
        disk_format=_opt_str(payload, "disk_format"),
        size=_opt_int(payload, "size"),
        visibility=_opt_str(payload, "visibility"),
        name=_opt_str(payload, "name"),
        checksum=_opt_str(payload, "checksum"),
        os_hash_algo=_opt_str(payload, "os_hash_algo"),
        os_hash_value=_opt_str(payload, "os_hash_value"),
        properties={str(k): str(v) for k, v in props.items()},
        tags=frozenset(tags),
        updated_at=_opt_timestamp(payload.get("updated_at")),
    )


_CORE_FIELDS = frozenset({
    "id", "name", "status", "disk_format", "container_format", "visibility",
    "checksum", "os_hash_algo", "os_hash_value", "owner", "created_at",
    "updated_at", "self", "file", "schema", "direct_url", "stores",
    "os_glance_failed_import", "os_glance_importing_to_stores",
})


def _volume_created(payload: dict[str, Any], publisher_id: Any,
                    ts: dt.datetime) -> VolumeCreatedFromImage | None:
    volume_id = _token(payload.get("volume_id"), "volume_id")
    rows = payload.get("glance_metadata")
    if rows is None or rows == []:
        return None  # not created from an image
    if not isinstance(rows, list):
        raise MalformedEvent("volume.create.end: glance_metadata is not a list of rows")
    meta: dict[str, str] = {}
    for row in rows:
        if not isinstance(row, dict) or not isinstance(row.get("key"), str):
            raise MalformedEvent("volume.create.end: glance_metadata row without a key")
        if row.get("deleted") in (True, 1, "1", "True", "true"):
            continue
        value = row.get("value")
        if value is not None and not isinstance(value, str):
            raise MalformedEvent(f"volume.create.end: glance_metadata {row['key']} "
                                 "is not a string")
        meta[row["key"]] = value or ""
    if "image_id" not in meta:
        return None
    image_id = _image_id(meta["image_id"], "glance_metadata image_id")
    host = payload.get("host")
    if host is None or host == "":
        host = _publisher_host(publisher_id)
    else:
        host = _site(host, "volume.create.end: host")
    zone = payload.get("availability_zone")
    zone = None if zone is None or zone == "" else _site(
        zone, "volume.create.end: availability_zone")
    disk_format = meta.get("disk_format") or None
    if disk_format is not None and len(disk_format) > MAX_TEXT_LEN:
        raise MalformedEvent("volume.create.end: glance_metadata disk_format is too long")
    return VolumeCreatedFromImage(
        volume_id=volume_id, image_id=image_id, backend_host=host,
        disk_format=disk_format, size=_digits(meta.get("size"), "glance_metadata size"),
        timestamp=ts, availability_zone=zone, created_at=_created_at(payload, ts))


def _created_at(payload: dict[str, Any], ts: dt.datetime) -> dt.datetime | None:
    """The volume's ``created_at`` (never after the notification), or None:
    an unreadable one only makes the hit-ratio metric say ``unknown``."""
    try:
        parsed = _parse_ts(payload.get("created_at"))
    except (MalformedEvent, ValueError, TypeError, OverflowError):
        return None
    return None if parsed is None else min(parsed, ts)


def _site(value: Any, what: str) -> str:
    """A host string or availability zone: a non-empty string of at most
    :data:`MAX_TEXT_LEN` printable characters (spaces allowed: a pool is
    Cinder's ``volume_backend_name``, which may have them)."""
    if not isinstance(value, str) or not value:
        raise MalformedEvent(f"{what} is missing or not a string")
    if len(value) > MAX_TEXT_LEN:
        raise MalformedEvent(f"{what} is longer than {MAX_TEXT_LEN} characters")
    if not value.isprintable():
        raise MalformedEvent(f"{what} {value[:64]!r} has control characters")
    return value


def _publisher_host(publisher_id: Any) -> str:
    """The host of ``volume.<host@backend#pool>``; ``""`` when the publisher
    id does not have that shape. The publisher id is the envelope's, not the
    payload's: one that is odd makes the site unknown, not the demand
    malformed."""
    if not isinstance(publisher_id, str):
        return ""
    service, dot, host = publisher_id.partition(".")
    if service != "volume" or not dot:
        return ""
    try:
        return _site(host, "publisher_id host")
    except MalformedEvent:
        return ""


def _digits(value: str | None, what: str) -> int | None:
    """A non-negative integer written as a string: ASCII digits only, at most
    20 of them (``str.isdigit`` also accepts "²", which ``int`` refuses).
    Empty or absent means unknown."""
    if not value:
        return None
    if not _DIGITS.fullmatch(value):
        raise MalformedEvent(f"{what} {value[:32]!r} is not a non-negative integer")
    return int(value)


def _check_size(event_type: str, payload: dict[str, Any], limit: int) -> None:
    try:
        size = len(json.dumps(payload, default=str))
    except (TypeError, ValueError, RecursionError) as exc:
        raise MalformedEvent(f"{event_type}: payload is not serialisable: {exc}") from exc
    if size > limit:
        raise MalformedEvent(f"{event_type}: payload is {size} bytes, over {limit}")


def _image_id(value: Any, what: str) -> str:
    try:
        return canonical_image_id(value, what)
    except InvalidId as exc:
        raise MalformedEvent(str(exc)) from None


def _token(value: Any, what: str) -> str:
    try:
        return bounded_token(value, what, MAX_ID_LEN)
    except InvalidId as exc:
        raise MalformedEvent(str(exc)) from None


def _opt_text(payload: dict[str, Any], key: str) -> str | None:
    value = _opt_str(payload, key)
    if value is not None and len(value) > MAX_TEXT_LEN:
        raise MalformedEvent(f"{key} is longer than {MAX_TEXT_LEN} characters")
    return value


def _str(payload: dict[str, Any], key: str) -> str:
    value = payload.get(key)
    if not isinstance(value, str):
        raise MalformedEvent(f"{key} is missing or not a string")
    return value


def _opt_str(payload: dict[str, Any], key: str) -> str | None:
    value = payload.get(key)
    if value is None:
        return None
    if not isinstance(value, str):
        raise MalformedEvent(f"{key} is not a string")
    return value


def _opt_int(payload: dict[str, Any], key: str) -> int | None:
    value = payload.get(key)
    if value is None:
        return None
    if isinstance(value, bool) or not isinstance(value, int) or value < 0:
        raise MalformedEvent(f"{key} is not a non-negative integer")
    return value


def _opt_timestamp(value: Any) -> dt.datetime | None:
    if value is None:
        return None
    parsed = _parse_ts(value)
    if parsed is None:
        raise MalformedEvent(f"timestamp {str(value)[:40]!r} is not understood")
    return parsed


def _parse_ts(value: Any) -> dt.datetime | None:
    text = _ts_text(value)
    if text is None:
        return None
    match = _TS_CANONICAL.fullmatch(text)
    if match is not None:
        year, month, day, hour, minute, second, fraction = match.groups()
        try:
            return dt.datetime(int(year), int(month), int(day), int(hour), int(minute),
                               int(second), int(fraction.ljust(6, "0")) if fraction else 0,
                               tzinfo=dt.UTC)
        except ValueError:  # out of range (month 13, 24 o'clock): strptime decides
            pass
    return _strptime_ts(text)


def _ts_text(value: Any) -> str | None:
    """A UTC timestamp's text without its zone (``Z`` or ``+00:00``)."""
    if not isinstance(value, str):
        return None
    text = value.strip().rstrip("Z")
    return text[:-6] if text.endswith("+00:00") else text


def _strptime_ts(text: str) -> dt.datetime | None:
    """:data:`_TS_FORMATS`, the definition of what a timestamp may be."""
    for fmt in _TS_FORMATS:
        try:
            return dt.datetime.strptime(text, fmt).replace(tzinfo=dt.UTC)
        except ValueError:
            continue
    return None


def _timestamp(value: Any, now: dt.datetime | None) -> dt.datetime:
    """The notification's own time, never later than now: a sender with a
    clock ahead must not make its demand outlive everyone else's."""
    current = now or dt.datetime.now(dt.UTC)
    parsed = _parse_ts(value)
    if parsed is None:
        return current
    return min(parsed, current)
