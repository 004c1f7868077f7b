"""Pins are read from two places that can race with the pins' changes: the
shared state (pins set through warmer, read at every refresh) and Glance
(a tag or property, read by evaluations, reconciliations and pin
discovery). A read that began before a change must not undo it when it
lands after it."""

from __future__ import annotations

import asyncio
import datetime as dt
import uuid

from tests.unit.fakes import FakeGlance
from tests.unit.test_engine import build, info
from warmer.events import ImageChanged, ImageInfo
from warmer.glance.client import GlanceImage
from warmer.popularity import Policy
from warmer.state.fleet import FleetDemand, SiteStore
from warmer.state.memory import MemoryStore
from warmer.state.store import Pin
from warmer.tracker import Tracker, Weights

IMAGE = str(uuid.UUID(int=7))
NOW = dt.datetime.now(dt.UTC)
TAG = "warmer-pin"


class SlowPins(MemoryStore):
    """A store whose pins read takes its snapshot at once and answers
    only when ``gate`` opens (a RADOS read in flight)."""

    def __init__(self) -> None:
        super().__init__()
        self.gate = asyncio.Event()
        self.gate.set()
        self.reading = asyncio.Event()

    async def pins(self) -> dict[str, Pin]:
        snapshot = await super().pins()
        self.reading.set()
        await self.gate.wait()
        return snapshot


async def started() -> tuple[SlowPins, Tracker, FleetDemand]:
    """A daemon's tracker and shared demand, started, on a :class:`SlowPins`."""
    base = SlowPins()
    t = Tracker(half_life=3600, weights=Weights(), policy=Policy(), threshold=2.0,
                top_k=0, dedup_window=10)
    demand = MemoryStore()
    fleet = FleetDemand(t, base, {s: SiteStore(base, demand) for s in t.sites},
                        daemon="a", flush_interval=5, refresh_interval=10)
    await fleet.start()
    return base, t, fleet


async def during_a_pins_read(base: SlowPins, fleet: FleetDemand, change: object) -> None:
    """Start a refresh, hold its pins read in flight, run ``change`` (a
    coroutine) meanwhile, then let the read answer."""
    base.gate.clear()
    base.reading.clear()
    refresh = asyncio.create_task(fleet.refresh())
    await base.reading.wait()
    changing = asyncio.ensure_future(change)  # type: ignore[call-overload]
    for _ in range(5):
        await asyncio.sleep(0)
    base.gate.set()
    await asyncio.gather(refresh, changing)


def test_a_pin_set_during_a_refresh_of_the_pins_is_not_undone_by_it() -> None:
    async def scenario() -> None:
        base, t, fleet = await started()
        await during_a_pins_read(base, fleet, fleet.pin(IMAGE, "uid 0"))
        assert t.pinned_through_warmer(IMAGE) and IMAGE in fleet.pins
        assert IMAGE in await MemoryStore.pins(base)
    asyncio.run(scenario())


def test_an_unpin_during_a_refresh_of_the_pins_is_not_undone_by_it() -> None:
    async def scenario() -> None:
        base, t, fleet = await started()
        await fleet.pin(IMAGE, "uid 0")
        await during_a_pins_read(base, fleet, fleet.unpin(IMAGE))
        assert not t.pinned_through_warmer(IMAGE) and IMAGE not in fleet.pins
    asyncio.run(scenario())


def test_unpin_then_pin_again_during_a_refresh_ends_pinned() -> None:
    async def scenario() -> None:
        base, t, fleet = await started()
        await fleet.pin(IMAGE, "uid 0")

        async def unpin_then_pin() -> None:
            await fleet.unpin(IMAGE)
            await fleet.pin(IMAGE, "uid 0", "again")
        await during_a_pins_read(base, fleet, unpin_then_pin())
        assert t.pinned_through_warmer(IMAGE) and fleet.pins[IMAGE].reason == "again"
    asyncio.run(scenario())


def test_pin_and_unpin_do_not_wait_for_a_pins_read_in_flight() -> None:
    """A read of a sick state waits for its op timeouts (30 s by default;
    `warmer pin` gives up after 10 s): a pin or unpin answers meanwhile,
    and the read, when it lands, undoes neither."""
    async def scenario() -> None:
        base, t, fleet = await started()
        other = str(uuid.UUID(int=8))
        base.gate.clear()
        base.reading.clear()
        refresh = asyncio.create_task(fleet.refresh())
        await base.reading.wait()
        await asyncio.wait_for(fleet.pin(IMAGE, "uid 0"), 1)
        await asyncio.wait_for(fleet.pin(other, "uid 0"), 1)
        assert await asyncio.wait_for(fleet.unpin(other), 1)
        assert t.pinned_through_warmer(IMAGE) and not t.pinned_through_warmer(other)
        assert not refresh.done()
        base.gate.set()
        assert await refresh
        assert t.pinned_through_warmer(IMAGE) and set(fleet.pins) == {IMAGE}
    asyncio.run(scenario())


def test_a_pins_read_dropped_for_a_local_pin_is_read_again_at_the_next_refresh() -> None:
    async def scenario() -> None:
        base, t, fleet = await started()
        theirs = str(uuid.UUID(int=9))
        await MemoryStore.put_pin(base, Pin(theirs, "daemon b", 0.0))
        await during_a_pins_read(base, fleet, fleet.pin(IMAGE, "uid 0"))
        await fleet.refresh()
        assert set(fleet.pins) == {IMAGE, theirs}
        assert t.pinned_through_warmer(IMAGE) and t.pinned_through_warmer(theirs)
    asyncio.run(scenario())


class SlowGlance(FakeGlance):
    """Glance whose answers are taken when asked and given when ``gate``
    opens: a GET or a listing page in flight while Glance changes."""

    def __init__(self) -> None:
        super().__init__()
        self.gate = asyncio.Event()
        self.gate.set()
        self.asked = asyncio.Event()

    async def get_image(self, image_id: str) -> GlanceImage | None:
        answer = await super().get_image(image_id)
        self.asked.set()
        await self.gate.wait()
        return answer


def tagged(tags: frozenset[str], second: int) -> ImageInfo:
    return info("p", tags=tags, updated_at=NOW + dt.timedelta(seconds=second))


async def glance_changes_during_a_get(glance: SlowGlance, engine: object, new: ImageInfo
                                      ) -> None:
    """An evaluation's GET of ``p`` is in flight when Glance changes the image
    to ``new`` and its image.update notification is folded; then the GET
    answers, with the image as it was."""
    from warmer.warming.engine import Engine
    assert isinstance(engine, Engine)
    glance.gate.clear()
    glance.asked.clear()
    reading = asyncio.create_task(engine.evaluate("p"))
    await glance.asked.wait()
    glance.add(new, "rbd://fsid-central/images/p/snap")
    engine.fold(ImageChanged("image.update", new, NOW))
    glance.gate.set()
    await reading


def slow_engine(start: ImageInfo) -> tuple[object, SlowGlance]:
    """An engine that does not know ``p`` yet: its evaluation asks Glance."""
    glance = SlowGlance()
    engine, _, _ = build(glance=glance)
    glance.add(start, "rbd://fsid-central/images/p/snap")
    return engine, glance


def test_a_tag_pin_added_during_a_glance_read_is_not_undone_by_it() -> None:
    async def scenario() -> None:
        engine, glance = slow_engine(tagged(frozenset(), 0))
        await glance_changes_during_a_get(glance, engine, tagged(frozenset({TAG}), 1))
        tracker = engine.tracker  # type: ignore[attr-defined]
        assert tracker.is_pinned("p")
        assert tracker.is_stale("p")  # Glance is asked again before acting
    asyncio.run(scenario())


def test_a_tag_pin_removed_during_a_glance_read_is_not_undone_by_it() -> None:
    async def scenario() -> None:
        engine, glance = slow_engine(tagged(frozenset({TAG}), 0))
        await glance_changes_during_a_get(glance, engine, tagged(frozenset(), 1))
        assert not engine.tracker.is_pinned("p")  # type: ignore[attr-defined]
    asyncio.run(scenario())


def test_unpin_and_pin_again_within_one_second_around_a_read_ends_pinned() -> None:
    """The read began after the unpin and answers after the pin again, all
    within one second: Glance's updated_at (whole seconds) is the same on
    the notification and on the stale answer, so it cannot order them."""
    async def scenario() -> None:
        engine, glance = slow_engine(tagged(frozenset({TAG}), 0))
        unpinned = tagged(frozenset(), 1)
        glance.add(unpinned, "rbd://fsid-central/images/p/snap")
        engine.fold(ImageChanged("image.update", unpinned, NOW))  # type: ignore[attr-defined]
        await glance_changes_during_a_get(glance, engine, tagged(frozenset({TAG}), 1))
        assert engine.tracker.is_pinned("p")  # type: ignore[attr-defined]
    asyncio.run(scenario())


def test_a_read_that_began_after_the_change_is_taken() -> None:
    async def scenario() -> None:
        engine, glance = slow_engine(tagged(frozenset(), 0))
        new = tagged(frozenset({TAG}), 1)
        glance.add(new, "rbd://fsid-central/images/p/snap")
        engine.fold(ImageChanged("image.update", new, NOW))  # type: ignore[attr-defined]
        tracker = engine.tracker  # type: ignore[attr-defined]
        assert tracker.is_stale("p")
        await engine.evaluate("p")  # type: ignore[attr-defined]
        assert tracker.is_pinned("p") and not tracker.is_stale("p")
    asyncio.run(scenario())
