"""Parsing of every notification shape warmer uses (DESIGN.md §3)."""

from __future__ import annotations

import datetime as dt
from typing import Any

import pytest
from hypothesis import given
from hypothesis import strategies as st

from warmer import events

IMAGE_ID = "4f3c7b8e-1d2a-4c5b-9e6f-0a1b2c3d4e5f"
META = {"message_id": "m-1", "timestamp": "2026-11-25 10:00:00.123456"}


def glance_payload(**over: Any) -> dict[str, Any]:
    payload: dict[str, Any] = {
        "id": IMAGE_ID, "name": "ubuntu", "status": "active", "created_at": "2026-11-25T09:59:00Z",
        "updated_at": "2026-11-25T10:00:00Z", "min_disk": 0, "min_ram": 0, "protected": False,
        "checksum": "abc", "owner": "p1", "disk_format": "raw", "container_format": "bare",
        "size": 1 << 30, "virtual_size": None, "is_public": True, "visibility": "public",
        "properties": {"warmer_pin": "true"}, "tags": ["gold"], "deleted": False,
        "deleted_at": None,
    }
    payload.update(over)
    return payload


def cinder_rows(volume_id: str, meta: dict[str, str]) -> list[dict[str, Any]]:
    return [{"id": n, "volume_id": volume_id, "snapshot_id": None, "key": k, "value": v,
             "deleted": False, "deleted_at": None, "created_at": "2026-11-25T10:00:00",
             "updated_at": None} for n, (k, v) in enumerate(meta.items())]


def volume_payload(rows: Any) -> dict[str, Any]:
    return {"tenant_id": "t", "user_id": "u", "host": "ctl@ceph#ceph",
            "availability_zone": "nova", "volume_id": "vol-1", "volume_type": "type-id",
            "display_name": "v", "status": "available", "size": 10, "metadata": [],
            "volume_attachment": [], "glance_metadata": rows}


@pytest.mark.parametrize("event_type", sorted(events.GLANCE_IMAGE_EVENTS))
def test_glance_image_events_parse_to_image_changed(event_type: str) -> None:
    ev = events.parse(event_type, glance_payload(), META)
    assert isinstance(ev, events.ImageChanged)
    assert ev.image.id == IMAGE_ID
    assert ev.image.disk_format == "raw"
    assert ev.image.size == 1 << 30
    assert ev.image.tags == frozenset({"gold"})
    assert ev.image.properties == {"warmer_pin": "true"}
    assert ev.image.updated_at == dt.datetime(2026, 11, 25, 10, 0, tzinfo=dt.UTC)
    assert ev.timestamp == dt.datetime(2026, 11, 25, 10, 0, 0, 123456, tzinfo=dt.UTC)


def test_image_delete_and_send() -> None:
    deleted = events.parse("image.delete", glance_payload(status="deleted", deleted=True), META)
    assert deleted == events.ImageDeleted(IMAGE_ID, deleted.timestamp)  # type: ignore[union-attr]
    sent = events.parse("image.send", {"bytes_sent": 10, "image_id": IMAGE_ID, "owner_id": "o",
                                       "receiver_tenant_id": "t", "receiver_user_id": "u"}, META)
    assert isinstance(sent, events.ImageSent)
    assert sent.image_id == IMAGE_ID and sent.message_id == "m-1"


def test_volume_create_end_takes_image_id_from_glance_metadata_rows() -> None:
    rows = cinder_rows("vol-1", {"image_id": IMAGE_ID, "image_name": "ubuntu",
                                 "disk_format": "raw", "size": "1073741824", "custom": "x"})
    ev = events.parse("volume.create.end", volume_payload(rows), META,
                      publisher_id="volume.ctl@ceph#ceph")
    assert isinstance(ev, events.VolumeCreatedFromImage)
    assert (ev.volume_id, ev.image_id, ev.disk_format, ev.size) == (
        "vol-1", IMAGE_ID, "raw", 1 << 30)
    assert ev.backend_host == "ctl@ceph#ceph"


def test_volume_not_from_an_image_is_ignored() -> None:
    assert events.parse("volume.create.end", volume_payload([]), META) is None


def test_deleted_glance_metadata_rows_are_skipped() -> None:
    rows = cinder_rows("vol-1", {"image_id": IMAGE_ID})
    rows[0]["deleted"] = True
    assert events.parse("volume.create.end", volume_payload(rows), META) is None


@pytest.mark.parametrize("kind", ["hit", "miss"])
def test_image_volume_cache_events(kind: str) -> None:
    ev = events.parse(f"image_volume_cache.{kind}",
                      {"image_id": IMAGE_ID, "host": "ctl@ceph#ceph"}, META)
    assert isinstance(ev, events.ImageCacheUsed)
    assert ev.kind == kind and ev.host == "ctl@ceph#ceph"


def test_unknown_event_types_are_none() -> None:
    assert events.parse("compute.instance.create.end", {"x": 1}, META) is None
    assert events.parse(None, {}, META) is None
    assert events.parse(["image.create"], {}, META) is None


@pytest.mark.parametrize("event_type,payload,match", [
    ("image.create", "not a dict", "payload is str"),
    ("image.create", glance_payload(id=None), "id is missing"),
    ("image.create", glance_payload(id=42), "id is missing"),
    ("image.create", glance_payload(id="../../etc"), "not a canonical UUID"),
    ("image.create", glance_payload(status=None), "status"),
    ("image.create", glance_payload(size="big"), "size"),
    ("image.create", glance_payload(size=-1), "size"),
    ("image.create", glance_payload(size=True), "size"),
    ("image.create", glance_payload(tags="gold"), "tags"),
    ("image.create", glance_payload(properties=[1]), "properties"),
    ("image.create", glance_payload(updated_at="yesterday"), "timestamp"),
    ("volume.create.end", volume_payload({"image_id": IMAGE_ID}), "not a list"),
    ("volume.create.end", volume_payload([{"value": IMAGE_ID}]), "without a key"),
    ("volume.create.end", volume_payload([{"key": "image_id", "value": 7}]), "not a string"),
    ("image_volume_cache.miss", {"image_id": IMAGE_ID}, "host"),
    ("image.send", {"bytes_sent": 1}, "image_id"),
])
def test_malformed_payloads_are_rejected(event_type: str, payload: Any, match: str) -> None:
    with pytest.raises(events.MalformedEvent, match=match):
        events.parse(event_type, payload, META)


def test_huge_payload_is_rejected() -> None:
    payload = glance_payload(properties={"blob": "x" * 5000})
    with pytest.raises(events.MalformedEvent, match="over 4096"):
        events.parse("image.update", payload, META, max_payload_bytes=4096)


def test_future_timestamps_are_clamped_to_now() -> None:
    now = dt.datetime(2026, 1, 1, tzinfo=dt.UTC)
    ev = events.parse("image.send", {"image_id": IMAGE_ID},
                      {"timestamp": "2099-01-01 00:00:00"}, now=now)
    assert ev is not None and ev.timestamp == now


json_values = st.recursive(
    st.none() | st.booleans() | st.integers() | st.floats(allow_nan=False) | st.text(max_size=20),
    lambda children: st.lists(children, max_size=4) | st.dictionaries(st.text(max_size=10),
                                                                      children, max_size=4),
    max_leaves=20)


@given(event_type=st.sampled_from(sorted(events.GLANCE_IMAGE_EVENTS | {
    "image.delete", "image.send", "volume.create.end", "image_volume_cache.hit", "x.y"})),
       payload=json_values, metadata=json_values)
def test_arbitrary_input_never_escapes_as_another_exception(event_type: str, payload: Any,
                                                            metadata: Any) -> None:
    try:
        result = events.parse(event_type, payload, metadata)
    except events.MalformedEvent:
        return
    assert result is None or isinstance(result, (events.ImageChanged, events.ImageDeleted,
                                                 events.ImageSent, events.ImageCacheUsed,
                                                 events.VolumeCreatedFromImage))


@given(payload=st.fixed_dictionaries(
    {"id": st.just(IMAGE_ID), "status": st.sampled_from(["active", "queued"])},
    optional={"size": json_values, "disk_format": json_values, "tags": json_values,
              "properties": json_values, "updated_at": json_values}))
def test_arbitrary_image_fields_either_parse_or_are_malformed(payload: dict[str, Any]) -> None:
    try:
        ev = events.parse("image.update", payload, META)
    except events.MalformedEvent:
        return
    assert isinstance(ev, events.ImageChanged)
    assert ev.image.size is None or (isinstance(ev.image.size, int) and ev.image.size >= 0)


NOT_CANONICAL = [
    f"volume-{IMAGE_ID}", f"warmer-tmp.{IMAGE_ID}", "a..b", "img-1", "../../etc",
    "{" + IMAGE_ID + "}", IMAGE_ID.replace("-", ""), IMAGE_ID.upper(), f"urn:uuid:{IMAGE_ID}",
    IMAGE_ID + "\n", " " + IMAGE_ID, IMAGE_ID[:-1] + "g", IMAGE_ID + "0",
]


def _with_image_id(event_type: str, image_id: str) -> Any:
    if event_type in ("image.update", "image.delete"):
        return glance_payload(id=image_id)
    if event_type == "volume.create.end":
        return volume_payload(cinder_rows("vol-1", {"image_id": image_id}))
    if event_type == "image.send":
        return {"image_id": image_id, "bytes_sent": 1}
    return {"image_id": image_id, "host": "ctl@ceph#ceph"}


@pytest.mark.parametrize("event_type", ["image.update", "image.delete", "image.send",
                                        "volume.create.end", "image_volume_cache.miss"])
@pytest.mark.parametrize("image_id", NOT_CANONICAL)
def test_image_ids_that_are_not_canonical_uuids_are_malformed(event_type: str,
                                                              image_id: str) -> None:
    with pytest.raises(events.MalformedEvent, match="canonical UUID|not a string"):
        events.parse(event_type, _with_image_id(event_type, image_id), META)


@pytest.mark.parametrize("event_type", ["image.update", "image.delete", "image.send",
                                        "volume.create.end", "image_volume_cache.miss"])
def test_canonical_image_ids_parse(event_type: str) -> None:
    ev = events.parse(event_type, _with_image_id(event_type, IMAGE_ID), META)
    assert ev is not None
    assert (ev.image.id if isinstance(ev, events.ImageChanged) else ev.image_id) == IMAGE_ID


@pytest.mark.parametrize("size", ["²", "１２", "٣", "9" * 5000, "-1", "1e3", " 1", "1 ",
                                  "0x10", "1_000", "1.0", "9" * 21])
def test_glance_metadata_size_that_is_not_plain_digits_is_malformed(size: str) -> None:
    rows = cinder_rows("vol-1", {"image_id": IMAGE_ID, "size": size})
    with pytest.raises(events.MalformedEvent, match="size"):
        events.parse("volume.create.end", volume_payload(rows), META)


def test_glance_metadata_size_empty_is_unknown() -> None:
    rows = cinder_rows("vol-1", {"image_id": IMAGE_ID, "size": ""})
    ev = events.parse("volume.create.end", volume_payload(rows), META)
    assert isinstance(ev, events.VolumeCreatedFromImage) and ev.size is None


@pytest.mark.parametrize("volume_id", ["v" * 256, "vol\n", "", "-vol", "vol 1", 7])
def test_volume_ids_are_bounded_tokens(volume_id: Any) -> None:
    payload = volume_payload(cinder_rows("vol-1", {"image_id": IMAGE_ID}))
    payload["volume_id"] = volume_id
    with pytest.raises(events.MalformedEvent, match="volume_id"):
        events.parse("volume.create.end", payload, META)


@pytest.mark.parametrize("message_id", ["m" * 256, 5, ["m"]])
def test_message_ids_are_bounded(message_id: Any) -> None:
    with pytest.raises(events.MalformedEvent, match="message_id"):
        events.parse("image.send", {"image_id": IMAGE_ID},
                     {"message_id": message_id, "timestamp": None})


def test_image_send_carries_the_receiver() -> None:
    sent = events.parse("image.send", {"bytes_sent": 10, "image_id": IMAGE_ID,
                                       "owner_id": "o", "receiver_tenant_id": "t-1",
                                       "receiver_user_id": "u-1"}, META)
    assert isinstance(sent, events.ImageSent)
    assert (sent.receiver_user_id, sent.receiver_tenant_id) == ("u-1", "t-1")


@pytest.mark.parametrize("field", ["receiver_user_id", "receiver_tenant_id"])
@pytest.mark.parametrize("value", [5, ["u"], "u" * 256])
def test_image_send_receiver_of_the_wrong_shape_is_malformed(field: str, value: Any) -> None:
    with pytest.raises(events.MalformedEvent, match=field):
        events.parse("image.send", {"image_id": IMAGE_ID, field: value}, META)


# -- where the demand happened (warmer.sites) ---------------------------------

_ABSENT = object()


def _volume_event(publisher_id: Any = "volume.ctl@ceph#ceph",
                  **over: Any) -> events.VolumeCreatedFromImage:
    payload = volume_payload(cinder_rows("vol-1", {"image_id": IMAGE_ID}))
    for key, value in over.items():
        if value is _ABSENT:
            payload.pop(key, None)
        else:
            payload[key] = value
    ev = events.parse("volume.create.end", payload, META, publisher_id=publisher_id)
    assert isinstance(ev, events.VolumeCreatedFromImage)
    return ev


def test_volume_create_end_carries_host_and_availability_zone() -> None:
    ev = _volume_event(host="edge1.example.org@ceph-edge#rbd-edge",
                       availability_zone="az-edge")
    assert ev.backend_host == "edge1.example.org@ceph-edge#rbd-edge"
    assert ev.availability_zone == "az-edge"


@pytest.mark.parametrize("host", [None, "", _ABSENT])
def test_volume_host_falls_back_to_the_publisher_id(host: Any) -> None:
    ev = _volume_event(publisher_id="volume.edge1.example.org@ceph-edge#rbd", host=host)
    assert ev.backend_host == "edge1.example.org@ceph-edge#rbd"


def test_payload_host_wins_over_the_publisher_id() -> None:
    ev = _volume_event(publisher_id="volume.other@x#y", host="ctl@ceph#ceph")
    assert ev.backend_host == "ctl@ceph#ceph"


@pytest.mark.parametrize("publisher_id", [None, 7, ["volume.h@b#p"], "volume", "volume.",
                                          "image.h@b#p", "volumeh@b#p", "volume.h\n@b#p",
                                          "volume." + "h" * 300])
def test_an_odd_publisher_id_leaves_the_site_unknown(publisher_id: Any) -> None:
    ev = _volume_event(publisher_id=publisher_id, host=None)
    assert ev.backend_host == ""


@pytest.mark.parametrize("zone", [None, "", _ABSENT])
def test_volume_without_availability_zone(zone: Any) -> None:
    assert _volume_event(availability_zone=zone).availability_zone is None


def test_pool_names_with_spaces_are_kept() -> None:
    # The pool of host@backend#pool is the backend's volume_backend_name.
    assert _volume_event(host="h@lvm#LVM iSCSI").backend_host == "h@lvm#LVM iSCSI"


SITE_FIELD_VALUES = [7, 1.5, True, ["h@b#p"], {"h": 1}, "h" * 256, "h@b#p\n", "h\x00@b",
                     "h@b#\x1b[31m", "h\u2028@b"]


@pytest.mark.parametrize("field", ["host", "availability_zone"])
@pytest.mark.parametrize("value", SITE_FIELD_VALUES)
def test_volume_site_fields_of_the_wrong_shape_are_malformed(field: str, value: Any) -> None:
    payload = volume_payload(cinder_rows("vol-1", {"image_id": IMAGE_ID}))
    payload[field] = value
    with pytest.raises(events.MalformedEvent, match=field):
        events.parse("volume.create.end", payload, META, publisher_id="volume.h@b#p")


@pytest.mark.parametrize("value", [*SITE_FIELD_VALUES, None, ""])
def test_cache_event_host_of_the_wrong_shape_is_malformed(value: Any) -> None:
    with pytest.raises(events.MalformedEvent, match="host"):
        events.parse("image_volume_cache.hit", {"image_id": IMAGE_ID, "host": value}, META,
                     publisher_id="volume.ctl")


def test_cache_event_host_is_the_payloads_not_the_publishers() -> None:
    # Cinder's cache notifier publishes as volume.<CONF.host>, without the backend.
    ev = events.parse("image_volume_cache.miss",
                      {"image_id": IMAGE_ID, "host": "edge1@ceph-edge#rbd"}, META,
                      publisher_id="volume.edge1")
    assert isinstance(ev, events.ImageCacheUsed) and ev.host == "edge1@ceph-edge#rbd"


def test_host_at_the_length_limit_is_accepted() -> None:
    host = "h@b#" + "p" * (events.MAX_TEXT_LEN - 4)
    assert _volume_event(host=host).backend_host == host


_JSON = st.recursive(
    st.none() | st.booleans() | st.integers() | st.floats(allow_nan=False)
    | st.text(max_size=20),
    lambda inner: st.lists(inner, max_size=5) | st.dictionaries(st.text(max_size=5), inner,
                                                                max_size=5),
    max_leaves=30)


@given(_JSON)
def test_a_payload_written_again_is_at_most_json_growth_times_its_compact_body(
        value: object) -> None:
    """The bound that lets parse() skip measuring small bodies: the most
    compact UTF-8 body, against json.dumps as _check_size writes it."""
    import json
    body = json.dumps(value, separators=(",", ":"), ensure_ascii=False).encode()
    assert len(json.dumps(value, default=str)) <= events.JSON_GROWTH * max(len(body), 1)


@pytest.mark.parametrize("token", ["9e15", "1E9", "-1e15", "\u00e9", "\U0001f600", "[1,1,1]"])
def test_the_worst_tokens_stay_within_json_growth(token: str) -> None:
    import json
    text = token if token[0] in "-0123456789[" else json.dumps(token, ensure_ascii=False)
    body = len(text.encode())
    assert len(json.dumps(json.loads(text))) <= events.JSON_GROWTH * body


def _strptime_only(value: Any) -> dt.datetime | None:
    """What events._parse_ts answered before its fast path."""
    text = events._ts_text(value)
    return None if text is None else events._strptime_ts(text)


_TWO = st.integers(0, 99).map(lambda n: f"{n:02d}")


@given(st.tuples(st.integers(0, 9999).map(lambda n: f"{n:04d}"), _TWO, _TWO,
                 st.sampled_from([" ", "T", "t", "_"]), _TWO, _TWO, _TWO,
                 st.one_of(st.just(""), st.text("0123456789", min_size=0, max_size=8)
                           .map(lambda d: "." + d)),
                 st.sampled_from(["", "Z", "+00:00", " ", "+01:00"])))
def test_the_timestamp_fast_path_answers_what_strptime_answers(parts: tuple[str, ...]) -> None:
    year, month, day, sep, hour, minute, second, fraction, tail = parts
    text = f"{year}-{month}-{day}{sep}{hour}:{minute}:{second}{fraction}{tail}"
    assert events._parse_ts(text) == _strptime_only(text)


@pytest.mark.parametrize("text", ["2026-11-25 10:00:00.5", "2026-11-25T10:00:00+00:00",
                                  "2026-02-30 10:00:00", "2026-11-25 24:00:00",
                                  "2026-1-5 1:2:3", "\uff12026-11-25 10:00:00", ""])
def test_the_timestamp_fast_path_on_edge_cases(text: str) -> None:
    assert events._parse_ts(text) == _strptime_only(text)
