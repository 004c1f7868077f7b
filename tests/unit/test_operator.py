"""The operator's requests (warm now, pin, evict now) and the daemon's
STATUS= line, with fakes behind the engine's real interfaces."""

from __future__ import annotations

import asyncio
import json
import uuid
from typing import Any

import pytest
from aiohttp.test_utils import TestClient

from tests.unit.fakes import FakeGlance, FakeRbdImage
from tests.unit.test_engine import (
    FSID,
    NOW,
    FakeCopyTarget,
    build,
    copy_engine,
    info,
    only_status,
    run,
    with_copies,
)
from tests.unit.test_http_api import TOKEN, bearer, with_client
from warmer.cmd import ops as cli_ops
from warmer.events import VolumeCreatedFromImage
from warmer.http_api.app import Listener, image_view, make_app
from warmer.ids import canonical_image_id
from warmer.popularity import Policy
from warmer.service import status_text
from warmer.state.fleet import FleetDemand, SiteStore
from warmer.state.memory import MemoryStore
from warmer.state.store import Pin
from warmer.tracker import Tracker, Weights
from warmer.warming.engine import Engine
from warmer.warming.operator import Refused
from warmer.warming.target import TargetResult


class WarmingTarget(FakeCopyTarget):
    """A copy target that copies when asked to warm: its budget decides."""

    async def warm(self, image: Any, fanout: Any = None) -> TargetResult:
        image_id = image.info.id
        if image_id not in self.copies:
            if not await self.budget.admit(self, image_id, 10):
                return TargetResult("cold", "over_budget", None)
            self.copies[image_id] = 10
        return TargetResult("warm", "cloneable", f"rbd://fsid-edge/images/{image_id}/snap")


def warming_engine(**kw: int) -> tuple[Engine, FakeGlance, WarmingTarget]:
    target = WarmingTarget(**kw)
    engine, glance = copy_engine(target)
    return engine, glance, target


# -- warm --------------------------------------------------------------------------------

def test_warm_wants_a_cold_image_for_its_next_evaluation_only() -> None:
    async def scenario() -> None:
        engine, glance, ceph = build()
        glance.add(info("a"), f"rbd://{FSID}/images/a/snap")
        ceph.images[("images", "a")] = FakeRbdImage({"snap": False})
        request = await engine.ops.warm("a", None, 10)  # no demand at all
        assert request.targets == ("central",) and request.done_at is None
        await engine.evaluate("a")
        assert only_status(engine, "a") == ("warm", "cloneable")
        assert ceph.images[("images", "a")].snapshots == {"snap": True}
        assert request.done_at is not None
        assert engine.ops.forced == {}
        # The next evaluation is not forced; the warm copy stays reported.
        await engine.evaluate("a")
        assert only_status(engine, "a") == ("warm", "cloneable")
    run(scenario())


def test_warm_refuses_at_once_what_it_cannot_do() -> None:
    async def scenario() -> None:
        engine, glance, _ = build()
        glance.add(info("q", disk_format="qcow2"))
        cases = [("nothing", None, "not_found", "Glance has no image"),
                 ("q", None, "conflict", "not eligible: disk_format_not_raw"),
                 ("q", "nowhere", "bad_request", "unknown target 'nowhere'")]
        for image_id, target, kind, text in cases:
            with pytest.raises(Refused) as caught:
                await engine.ops.warm(image_id, target, 10)
            assert (caught.value.kind, text in str(caught.value)) == (kind, True)
        assert engine.tracker.image("nothing") is None  # a 404 forgets nothing, adds nothing
        glance.down = True
        with pytest.raises(Refused, match="Glance cannot be asked"):
            await engine.ops.warm("q", None, 10)
    run(scenario())


def test_warm_competes_for_room_with_its_own_score_and_evicts_nothing_worth_more() -> None:
    async def scenario() -> None:
        engine, glance, target = warming_engine(capacity_images=1)
        with_copies(engine, glance, target, {"kept": 1})
        glance.add(info("cold"), "file:///cold")
        await engine.ops.warm("cold", "edge", 10)
        await engine.evaluate("cold")
        assert [(r.state, r.reason) for r in engine.status("cold")] == [("cold", "over_budget")]
        assert target.evicted == [] and "kept" in target.copies
        assert engine.ops.requests["cold"].done_at is not None
        # Pinned, it is worth every other copy: room is made.
        engine.tracker.set_pins({"cold"})
        await engine.evaluate("cold")
        assert target.evicted == ["kept"] and "cold" in target.copies
    run(scenario())


def test_an_evaluation_left_busy_keeps_the_warm_request_for_its_retry() -> None:
    async def scenario() -> None:
        engine, glance, target = warming_engine()
        glance.add(info("b"), "file:///b")
        busy = [True]

        async def warm(image: Any, fanout: Any = None) -> TargetResult:
            if busy[0]:
                return TargetResult("busy", "copy_in_progress_elsewhere", None)
            return TargetResult("warm", "cloneable", "rbd://fsid-edge/images/b/snap")
        target.warm = warm  # type: ignore[method-assign]
        request = await engine.ops.warm("b", None, 10)
        await engine.evaluate("b")
        assert request.done_at is None and engine.ops.forced == {"b": {"edge"}}
        busy[0] = False
        await engine.evaluate("b")
        assert request.done_at is not None and only_status(engine, "b") == ("warm",
                                                                           "cloneable")
    run(scenario())


def test_a_warm_request_waits_out_a_passing_error_too() -> None:
    """The API answered 202: a cluster that was unreachable for one try must
    not make the request vanish."""
    async def scenario() -> None:
        from warmer.ceph.client import CephUnavailable
        engine, glance, target = warming_engine()
        glance.add(info("c"), "file:///c")
        down = [True]

        async def warm(image: Any, fanout: Any = None) -> TargetResult:
            if down[0]:
                raise CephUnavailable("edge: timed out")
            return TargetResult("warm", "cloneable", "rbd://fsid-edge/images/c/snap")
        target.warm = warm  # type: ignore[method-assign]
        request = await engine.ops.warm("c", None, 10)
        await engine.evaluate("c")
        assert only_status(engine, "c") == ("error", "ceph_unavailable")
        assert request.done_at is None and engine.ops.forced == {"c": {"edge"}}
        down[0] = False
        await engine.evaluate("c")
        assert request.done_at is not None and only_status(engine, "c") == ("warm",
                                                                           "cloneable")
    run(scenario())


# -- evict ---------------------------------------------------------------------------------

def test_evict_holds_a_wanted_image_out_until_new_demand() -> None:
    async def scenario() -> None:
        engine, glance, target = warming_engine()
        with_copies(engine, glance, target, {"hot": 3})
        assert await engine.ops.evict("hot", "edge") == "removed"
        assert "hot" not in target.copies
        await engine.evaluate("hot")  # still wanted by its score, but held out
        assert only_status(engine, "hot") == ("not_wanted", "evicted_by_operator")
        assert "hot" not in target.copies
        engine.tracker.apply(VolumeCreatedFromImage("new-volume", "hot", "h", "raw", 10,
                                                    NOW))  # new demand lifts the hold
        await engine.evaluate("hot")
        assert "hot" in target.copies and only_status(engine, "hot") == ("warm", "cloneable")
    run(scenario())


def test_an_explicit_warm_lifts_an_operators_hold() -> None:
    async def scenario() -> None:
        engine, glance, target = warming_engine()
        with_copies(engine, glance, target, {"hot": 3})
        await engine.ops.evict("hot", "edge")
        await engine.ops.warm("hot", "edge", 10)
        await engine.evaluate("hot")
        assert "hot" in target.copies
    run(scenario())


def test_evict_refuses_clones_pins_and_missing_copies_with_one_clear_reason() -> None:
    async def scenario() -> None:
        engine, glance, target = warming_engine()
        with_copies(engine, glance, target, {"cloned": 3, "mine": 3, "tagged": 3},
                    pinned={"tagged"})
        target.children.add("cloned")
        engine.tracker.set_pins({"mine"})
        cases = [("cloned", "edge", "conflict", "has clones"),
                 ("mine", "edge", "conflict", "unpin it first"),
                 ("tagged", "edge", "conflict", "Glance tag or property"),
                 ("nothing", "edge", "not_found", "no copy"),
                 ("cloned", "nowhere", "bad_request", "unknown target")]
        for image_id, name, kind, text in cases:
            with pytest.raises(Refused) as caught:
                await engine.ops.evict(image_id, name)
            assert caught.value.kind == kind and text in str(caught.value), caught.value
            assert "\n" not in str(caught.value)
        assert set(target.copies) == {"cloned", "mine", "tagged"}
        assert engine.ops.holds == {}
    run(scenario())


def test_evict_refuses_a_target_that_holds_no_copies() -> None:
    async def scenario() -> None:
        engine, _, _ = build()
        with pytest.raises(Refused, match="holds no copies"):
            await engine.ops.evict("a", "central")
    run(scenario())


# -- pins ----------------------------------------------------------------------------------

def test_pins_through_warmer_want_eligible_images_in_every_site() -> None:
    t = Tracker(half_life=3600, weights=Weights(), policy=Policy(), threshold=2.0,
                top_k=0, dedup_window=10, sites=("central", "edge"))
    t.observe(info("p"))
    t.observe(info("q", disk_format="qcow2"))
    assert t.set_pins({"p", "q", "unknown"}) == {"p", "q", "unknown"}
    for site in ("central", "edge"):
        assert t.verdict("p", 0.0, site).wanted  # type: ignore[union-attr]
        assert t.verdict("q", 0.0, site).reason == "disk_format_not_raw"  # type: ignore[union-attr]
        assert "p" in t.wanted(site, 0.0)
    assert t.is_pinned("q") and t.image("unknown") is not None  # tracked, Glance is asked
    assert t.sweep(0.0, 1.0, lambda _: False) == 0  # pinned images are never forgotten
    assert t.set_pins({"q"}) == {"p", "unknown"}
    assert not t.verdict("p", 0.0, "edge").wanted  # type: ignore[union-attr]


def test_a_pin_set_on_one_daemon_reaches_another_at_its_refresh_and_survives_restart(
) -> None:
    image_id = canonical_image_id(str(uuid.uuid4()))

    def daemon(name: str, base: MemoryStore) -> tuple[Tracker, FleetDemand]:
        t = Tracker(half_life=3600, weights=Weights(), policy=Policy(), threshold=2.0,
                    top_k=0, dedup_window=10)
        demand_store = MemoryStore()
        f = FleetDemand(t, base, {s: SiteStore(base, demand_store) for s in t.sites},
                        daemon=name, flush_interval=5, refresh_interval=10)
        return t, f

    async def scenario() -> None:
        base = MemoryStore()
        ta, a = daemon("a", base)
        tb, b = daemon("b", base)
        await a.start()
        await b.start()
        await a.pin(image_id, "uid 0", "golden image")
        assert ta.pinned_through_warmer(image_id)
        assert not tb.pinned_through_warmer(image_id)
        await b.refresh()
        assert tb.pinned_through_warmer(image_id)
        assert b.pins[image_id].reason == "golden image"
        tc, c = daemon("b", base)  # b restarted
        await c.start()
        assert tc.pinned_through_warmer(image_id)
        assert await a.unpin(image_id) and not await a.unpin(image_id)
        await c.refresh()
        assert not tc.pinned_through_warmer(image_id)
    asyncio.run(scenario())


# -- what the operator sees ------------------------------------------------------------------

@pytest.mark.parametrize(("leader", "role"), [
    ({"name": "ctl-1", "self": True}, "leader"),
    ({"name": "ctl-2", "self": False}, "follower of ctl-2"),
    ({"name": None, "self": False}, "no leader seen"),
])
def test_status_line_for_systemctl(leader: dict[str, object], role: str) -> None:
    assert status_text(14, 2, 0, leader) == f"14 warm, 2 copying, 0 failing, {role}"


def test_the_summary_counts_warm_rows_copies_under_way_and_errors() -> None:
    async def scenario() -> None:
        engine, glance, target = warming_engine()
        with_copies(engine, glance, target, {"a": 3, "b": 3})
        await engine.evaluate("a")
        await engine.evaluate("b")
        target.progress["c"] = (1, 10)
        engine.book.record_all("d", "error", "ceph_unavailable")
        assert engine.ops.summary() == (2, 1, 1)
    run(scenario())


def test_progress_bars() -> None:
    assert cli_ops.progress_bar(0, 0) == "[" + "." * 24 + "]   0%  0.0/0.0 MiB"
    half = cli_ops.progress_bar(16 << 20, 32 << 20)
    assert half == "[" + "#" * 12 + "." * 12 + "]  50%  16.0/32.0 MiB"
    image = {"targets": [{"target": "edge", "state": "busy", "reason": "copying"},
                         {"target": "central", "state": "warm", "reason": "cloneable"}],
             "copying": {"edge": {"done_bytes": 32 << 20, "size_bytes": 32 << 20}}}
    assert cli_ops.target_states(image) == (
        "edge=copying [" + "#" * 24 + "] 100%  32.0/32.0 MiB, central=warm(cloneable)")


class FakeDaemon:
    """The admin API as the CLI sees it: a warm request answered after a
    copy that shows progress."""

    def __init__(self, final: tuple[str, str]) -> None:
        self.final = final
        self.polls = 0
        self.calls: list[tuple[str, str]] = []

    def call(self, path: str, method: str = "GET") -> Any:
        self.calls.append((method, path))
        if method == "POST":
            return {"targets": ["edge"], "at": 100.0, "done_at": None}
        self.polls += 1
        done = self.polls >= 3
        row = {"target": "edge", "state": self.final[0] if done else "busy",
               "reason": self.final[1] if done else "copying"}
        return {"targets": [row],
                "copying": {} if done else {"edge": {"done_bytes": self.polls << 20,
                                                     "size_bytes": 4 << 20}},
                "warm_request": {"targets": ["edge"], "at": 100.0,
                                 "done_at": 101.0 if done else None}}


def test_warm_wait_shows_progress_and_ends_warm(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(cli_ops, "POLL_INTERVAL", 0.0)
    lines: list[str] = []
    fake = FakeDaemon(("warm", "cloneable"))
    image_id = str(uuid.uuid4())
    assert cli_ops.warm(fake, image_id, "edge", True, 10, lines.append) == 0
    assert fake.calls[0] == ("POST", f"/v1/images/{image_id}/warm?target=edge")
    assert lines == ["edge: copying [######..................]  25%  1.0/4.0 MiB",
                     "edge: copying [############............]  50%  2.0/4.0 MiB",
                     f"{image_id} is warm in edge"]


def test_warm_wait_that_ends_cold_is_one_line_and_exit_1(
        monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(cli_ops, "POLL_INTERVAL", 0.0)
    with pytest.raises(cli_ops.OpsFailure) as caught:
        cli_ops.warm(FakeDaemon(("cold", "over_budget")), "x", "edge", True, 10,
                     lambda _: None)
    assert str(caught.value) == "image x is not warm: edge=cold(over_budget)"
    assert caught.value.code == 1


# -- the admin API routes ---------------------------------------------------------------

class FakePins:
    def __init__(self) -> None:
        self.pins: dict[str, Pin] = {}

    async def pin(self, image_id: str, by: str, reason: str = "") -> Pin:
        self.pins[image_id] = Pin(image_id, by, 1.0, reason)
        return self.pins[image_id]

    async def unpin(self, image_id: str) -> bool:
        return self.pins.pop(image_id, None) is not None


def test_admin_routes_answer_one_line_with_the_right_status() -> None:
    engine, glance, _ = build()
    known = str(uuid.uuid4())
    glance.add(info(known), f"rbd://{FSID}/images/{known}/snap")
    pins = FakePins()
    app = make_app(engine, engine.metrics, lambda: {}, lambda: 0.0, listener=Listener.TCP,
                   token=TOKEN, pins=pins)

    async def go(client: TestClient[Any, Any]) -> list[tuple[int, str]]:
        out = []
        for method, path in [
                ("POST", f"/v1/images/{uuid.uuid4()}/warm"),
                ("POST", f"/v1/images/{known}/warm?target=nowhere"),
                ("POST", "/v1/images/NOT-AN-ID/warm"),
                ("POST", f"/v1/images/{known}/evict"),
                ("POST", f"/v1/images/{known}/evict?target=central"),
                ("DELETE", f"/v1/images/{known}/pin"),
                ("PUT", f"/v1/images/{known}/pin?reason=gold"),
                ("DELETE", f"/v1/images/{known}/pin"),
                ("POST", f"/v1/images/{known}/warm?target=central")]:
            resp = await client.request(method, path, headers=bearer(TOKEN))
            out.append((resp.status, await resp.text()))
        resp = await client.put(f"/v1/images/{known}/pin")  # no token: refused
        out.append((resp.status, await resp.text()))
        return out

    answers = with_client(app, go)
    assert [status for status, _ in answers] == [404, 400, 400, 400, 409, 404, 200, 200,
                                                 202, 403]
    for status, body in answers:
        if status >= 400:
            assert body.count("\n") == 1 and body.endswith("\n"), body
    assert "Glance has no image" in answers[0][1]
    assert "holds no copies" in answers[4][1]
    assert json.loads(answers[6][1])["reason"] == "gold"
    assert json.loads(answers[8][1])["targets"] == ["central"]
    view = image_view(engine, known, 0.0, pins)
    assert view is not None and view["warm_request"]["targets"] == ["central"]
    assert view["pinned"] is False and view["pin"] is None
