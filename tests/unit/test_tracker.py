"""Invariant 3: duplicated, reordered or replayed notifications leave the
same end state."""

from __future__ import annotations

import datetime as dt
import itertools
import time

from hypothesis import given
from hypothesis import strategies as st

from warmer.events import (
    Event,
    ImageCacheUsed,
    ImageChanged,
    ImageDeleted,
    ImageInfo,
    ImageSent,
    VolumeCreatedFromImage,
)
from warmer.popularity import Policy
from warmer.tracker import Tracker, Weights

T0 = dt.datetime(2026, 11, 25, 10, 0, tzinfo=dt.UTC)


def tracker() -> Tracker:
    return Tracker(half_life=3600, weights=Weights(), policy=Policy(), threshold=2.0,
                   top_k=0, dedup_window=1000)


def image(status: str, second: int, **over: object) -> ImageInfo:
    fields: dict[str, object] = {"id": "img", "status": status, "disk_format": "raw",
                                 "size": 10, "updated_at": T0 + dt.timedelta(seconds=second)}
    fields.update(over)
    return ImageInfo(**fields)  # type: ignore[arg-type]


def changed(info: ImageInfo, event_type: str = "image.update") -> ImageChanged:
    return ImageChanged(event_type, info, info.updated_at or T0)


def volume(n: int, image_id: str = "img", second: int = 0) -> VolumeCreatedFromImage:
    return VolumeCreatedFromImage(f"vol-{n}", image_id, "h@b#p", "raw", 10,
                                  T0 + dt.timedelta(seconds=second))


def state(t: Tracker) -> tuple[object, ...]:
    now = (T0 + dt.timedelta(hours=1)).timestamp()
    return (sorted(t.image_ids()), {i: t.image(i) for i in t.image_ids()},
            {i: round(t.score(i, now), 9) for i in t.image_ids()},
            sorted(i for i in ("img", "other") if t.is_deleted(i)))


LIFECYCLE: list[Event] = [
    changed(image("queued", 0), "image.create"),
    changed(image("saving", 1), "image.upload"),
    changed(image("active", 1), "image.activate"),
    changed(image("active", 5, tags=frozenset({"warmer-pin"}))),
    volume(1, second=6), volume(2, second=7),
    ImageSent("img", "msg-1", T0 + dt.timedelta(seconds=8)),
    ImageCacheUsed("miss", "img", "h@b#p", "msg-2", T0 + dt.timedelta(seconds=9)),
]


def apply_all(events: list[Event]) -> Tracker:
    t = tracker()
    for ev in events:
        t.apply(ev)
    return t


def test_duplicate_volume_create_is_counted_once() -> None:
    once, thrice = tracker(), tracker()
    once.apply(volume(1))
    for _ in range(3):
        outcome = thrice.apply(volume(1)).outcome
    assert outcome == "duplicate"
    assert state(once) == state(thrice)


def test_duplicate_activate_is_idempotent() -> None:
    t = tracker()
    first = t.apply(changed(image("active", 1), "image.activate"))
    again = t.apply(changed(image("active", 1), "image.activate"))
    assert first.changed and not again.changed


@given(order=st.permutations(range(len(LIFECYCLE))),
       dups=st.lists(st.integers(0, len(LIFECYCLE) - 1), max_size=6))
def test_any_order_with_any_duplicates_gives_the_same_end_state(order: list[int],
                                                                 dups: list[int]) -> None:
    reference = state(apply_all(LIFECYCLE))
    replayed = [LIFECYCLE[i] for i in order] + [LIFECYCLE[i] for i in dups]
    assert state(apply_all(replayed)) == reference


def test_upload_reordered_after_activate_in_the_same_second_keeps_active() -> None:
    t = apply_all([changed(image("active", 1), "image.activate"),
                   changed(image("saving", 1), "image.upload")])
    info = t.image("img")
    assert info is not None and info.status == "active"


def test_nothing_resurrects_a_deleted_image() -> None:
    deleted = ImageDeleted("img", T0 + dt.timedelta(seconds=30))
    for late in itertools.permutations([deleted, *LIFECYCLE[:5]]):
        t = apply_all(list(late))
        assert t.image_ids() == [] and t.is_deleted("img")
        assert t.score("img", T0.timestamp()) == 0


def test_api_view_replaces_a_stale_image_from_cinder() -> None:
    t = tracker()
    t.apply(volume(1))
    assert t.is_stale("img")
    t.observe(image("active", 0, name="ubuntu"), authoritative=True)
    assert not t.is_stale("img")
    info = t.image("img")
    assert info is not None and info.name == "ubuntu"


def test_a_read_that_began_after_an_ignored_one_clears_stale_and_is_forgotten() -> None:
    """A read that began before a notification changed the image is ignored
    and the image stays stale; the next read, begun after it, is taken and
    clears stale, though no notification comes: the image is not left stale
    forever. The notification's time is then dropped, so that the tracker
    keeps one only for images with a change not read back yet."""
    t = tracker()
    t.observe(image("active", 0), authoritative=True)
    before = time.monotonic()
    t.apply(changed(image("active", 1, tags=frozenset({"warmer-pin"}))))
    assert t.is_stale("img")
    applied = t.observe(image("active", 0), authoritative=True, read_at=before)
    assert applied.outcome == "stale" and t.is_stale("img")
    after = time.monotonic()
    applied = t.observe(image("active", 1, tags=frozenset({"warmer-pin"})),
                        authoritative=True, read_at=after)
    assert applied.outcome == "handled" and not t.is_stale("img")
    assert t._changed_at == {}


def test_warmers_own_downloads_are_not_demand() -> None:
    t = Tracker(half_life=3600, weights=Weights(), policy=Policy(), threshold=2.0, top_k=0,
                dedup_window=1000, own_users=frozenset({"warmer-user"}))
    own = ImageSent("img", "msg-1", T0, receiver_user_id="warmer-user", receiver_tenant_id="p")
    applied = t.apply(own)
    assert applied.outcome == "own_download" and not applied.changed
    # Not even tracked: warmer's download of an image nobody wants starts nothing.
    assert t.image_ids() == [] and t.score("img", T0.timestamp()) == 0

    other = ImageSent("img", "msg-2", T0, receiver_user_id="someone", receiver_tenant_id="p")
    assert t.apply(other).outcome == "handled"
    assert t.score("img", T0.timestamp()) == Weights().image_send


def test_own_users_can_change_at_run_time() -> None:
    t = tracker()
    sent = ImageSent("img", "msg-1", T0, receiver_user_id="warmer-user")
    t.own_users = frozenset({"warmer-user"})
    assert t.apply(sent).outcome == "own_download"
    t.own_users = frozenset()
    assert t.apply(sent).outcome == "handled"  # the first was not remembered as a duplicate
