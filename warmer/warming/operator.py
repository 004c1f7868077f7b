"""What an operator asks of the engine: warm now, evict now (issue 8).

**Warm** (:meth:`Operator.warm`) makes an image wanted in the named
targets (or all) for its next evaluation, whatever its score: an override
of *whether* it is wanted, never of eligibility (Glance must show it
active and raw, and the rest of the policy) nor of *what it is worth*.
A copy it starts asks the target's budget for room like any other copy,
with the image's own demand score: it evicts only copies worth less (by
the eviction margin), so a cold image in a full budget ends ``cold
over_budget`` and evicts nothing. To make an image take room from others,
pin it (a pinned image is worth every other copy). Nothing else changes:
the copy is made, verified, protected and published exactly as always
(invariants 1, 2, 4 and 5 are the target's, under the same leases). An
evaluation that ends ``busy`` (another daemon holds the copy lease) keeps
the request for the retry; any other end (warm, cold, not wanted, error)
completes it, and :class:`WarmRequest` says when. Afterwards the copy is
kept like any warm copy whose demand went: published until its budget
needs the room.

**Evict** (:meth:`Operator.evict`) takes warmer's copy out of one target
with :meth:`Target.evict`: children always win (``has_children``), only
warmer's own copies (``not_owned``), under the copy lease (``busy``), the
Glance location first. It refuses a pinned image (unpin it, or remove its
Glance tag or property, first). An image that is still wanted would be
copied again at once, so an eviction puts a *hold* on the image in that
target: it is not wanted there until new demand for it is counted there
(its score rises above what it was at the eviction, decayed since), an
operator warms it, or it is pinned. The hold is in this daemon's memory:
a restart forgets it, and so does another daemon of the fleet (the
leader's reconciliation evaluates every image), which may copy it again
if it is still wanted; evict through the leader (``warmer status`` says
who leads) to keep the hold where the reconciliation runs.

Both run on the event loop; only :meth:`Operator.warm` reads Glance (one
GET, to answer at once for an image Glance does not have) and only
:meth:`Operator.evict` touches Ceph (through the target).
"""

from __future__ import annotations

import collections
import logging
import math
from collections.abc import Collection
from dataclasses import dataclass, field
from typing import TYPE_CHECKING

from warmer.ceph.bindings import errors as ceph_errors
from warmer.ceph.client import CephUnavailable
from warmer.glance.client import GlanceUnavailable, LocationConflict
from warmer.popularity import Verdict
from warmer.reasons import Reason, State
from warmer.warming.target import TargetProblem, TargetResult

if TYPE_CHECKING:
    from warmer.warming.engine import Engine

LOG = logging.getLogger(__name__)

MAX_REQUESTS = 10_000  # warm requests remembered (the latest per image)
# Verdicts an operator's warm overrides: the image is eligible, only its
# demand (or an earlier operator eviction) does not want it.
OVERRIDABLE = frozenset({Reason.BELOW_THRESHOLD, Reason.EVICTED_BY_OPERATOR})
# Errors that pass by themselves: a warm request waits for the retry.
PASSING_ERRORS = frozenset({Reason.CEPH_UNAVAILABLE, Reason.GLANCE_UNAVAILABLE,
                            Reason.GLANCE_404_UNCONFIRMED})
MAX_CARRIES = 20


class Refused(Exception):
    """An operator request that cannot be done, with why (one line).
    ``kind``: ``bad_request``, ``not_found``, ``conflict``, ``busy``,
    ``unavailable`` or ``stopping``."""

    def __init__(self, kind: str, message: str) -> None:
        super().__init__(message)
        self.kind = kind


@dataclass
class WarmRequest:
    """The latest warm request for an image: made at ``at`` (the engine's
    clock) for ``targets``; ``done_at`` once an evaluation answered it."""

    image_id: str
    targets: tuple[str, ...]
    at: float
    done_at: float | None = None

    def view(self) -> dict[str, object]:
        return {"targets": list(self.targets), "at": self.at, "done_at": self.done_at}


@dataclass(frozen=True)
class Hold:
    """An operator evicted the copy: not wanted in the target until its
    demand there exceeds ``score`` (at ``at``) decayed since, i.e. until
    new demand is counted."""

    score: float
    at: float


@dataclass
class Operator:
    engine: Engine
    holds: dict[tuple[str, str], Hold] = field(default_factory=dict)
    # image id -> targets in which its next evaluation wants it
    forced: dict[str, set[str]] = field(default_factory=dict)
    requests: collections.OrderedDict[str, WarmRequest] = field(
        default_factory=collections.OrderedDict)
    # image id -> how many retries its warm request was carried over to
    _carried: dict[str, int] = field(default_factory=dict)

    # -- warm ------------------------------------------------------------------------

    def _targets(self, target: str | None) -> tuple[str, ...]:
        names = tuple(t.name for t in self.engine.targets)
        if target is None:
            return names
        if target not in names:
            raise Refused("bad_request", f"unknown target {target!r} (targets: "
                                         f"{', '.join(names)})")
        return (target,)

    async def warm(self, image_id: str, target: str | None, limit: int) -> WarmRequest:
        """Queue ``image_id``'s evaluation with it wanted in ``target`` (all
        targets when None). Raises :class:`Refused`: unknown target, an
        image Glance does not have (nothing is removed or forgotten for
        that: a 404 is not a delete), an ineligible image, a full queue
        (``limit``, as for evaluate), or a stopping daemon."""
        engine = self.engine
        if not engine.accepting:
            raise Refused("stopping", "the daemon is stopping")
        targets = self._targets(target)
        if engine.tracker.is_deleted(image_id):
            raise Refused("not_found", f"image {image_id} was deleted in Glance")
        if image_id in engine.hands_off:
            raise Refused("conflict", f"image {image_id}: warmer keeps its hands off it "
                                      f"({engine.hands_off[image_id]}) until restarted")
        if not engine.scheduler.has_room(image_id, limit):
            # Before asking Glance: a full queue must cost nothing more.
            raise Refused("busy", f"work queue full (limit {limit} images, [http] "
                                  "admin_max_queue); try again later")
        why = await self.glance_view(image_id)
        if why is not None:
            raise Refused("conflict", f"image {image_id} is not eligible: {why}")
        if not engine.request(image_id, limit):
            raise Refused("busy", f"work queue full (limit {limit} images, [http] "
                                  "admin_max_queue); try again later")
        for name in targets:
            self.holds.pop((image_id, name), None)  # an explicit warm lifts a hold
        self.forced.setdefault(image_id, set()).update(targets)
        request = WarmRequest(image_id, targets, engine.clock())
        self.requests[image_id] = request
        self.requests.move_to_end(image_id)
        while len(self.requests) > MAX_REQUESTS:
            self.requests.popitem(last=False)
        LOG.info("image %s: an operator asked to warm it in %s", image_id, ", ".join(targets))
        return request

    async def glance_view(self, image_id: str) -> str | None:
        """Ask Glance about ``image_id`` now and take its view: why it is
        not eligible (None when it is). :class:`Refused` when Glance has no
        such image (nothing is removed or forgotten for that: a 404 is not
        a delete) or cannot be asked."""
        engine = self.engine
        try:
            fresh = await engine.views.fetch(image_id)
        except GlanceUnavailable as exc:
            raise Refused("unavailable", f"Glance cannot be asked now: {exc}") from exc
        if fresh is None:
            raise Refused("not_found", f"Glance has no image {image_id}")
        return engine.tracker.policy.ineligible_reason(fresh.info)

    def take(self, image_id: str) -> set[str] | None:
        """The targets an evaluation starting now must want ``image_id`` in
        (taken: the next evaluation does not, unless asked again)."""
        return self.forced.pop(image_id, None)

    def override(self, image_id: str, forced: set[str] | None,
                 verdicts: dict[str, Verdict | None]) -> dict[str, Verdict | None]:
        """``verdicts`` with the forced targets wanted (reason ``operator``)
        where only demand kept the image out."""
        if not forced:
            return verdicts
        out = dict(verdicts)
        for name in forced:
            v = out.get(name)
            if v is not None and not v.wanted and v.reason in OVERRIDABLE:
                out[name] = Verdict(True, Reason.OPERATOR, v.score)
        return out

    def finished(self, image_id: str, forced: set[str] | None) -> None:
        """An evaluation that took ``forced`` ended: a target left ``busy``
        or in a passing ``error`` (its cluster or Glance unavailable) keeps
        the request for the retry the engine scheduled, up to
        :data:`MAX_CARRIES` times; otherwise the request is done (unless a
        newer one came meanwhile)."""
        if not forced or image_id in self.forced:
            return
        engine = self.engine
        again = {name for name in forced
                 if (row := engine.book.get(image_id, name)) is not None
                 and (row.state == State.BUSY or (row.state == State.ERROR
                                                  and row.reason in PASSING_ERRORS))
                 and engine.tracker.image(image_id) is not None}
        carried = self._carried.get(image_id, 0)
        if again and carried < MAX_CARRIES:
            self._carried[image_id] = carried + 1
            self.forced[image_id] = again
            return
        self._carried.pop(image_id, None)
        request = self.requests.get(image_id)
        if request is not None and request.done_at is None:
            request.done_at = engine.clock()

    # -- evict -----------------------------------------------------------------------

    async def evict(self, image_id: str, target_name: str) -> str:
        """Take warmer's copy of ``image_id`` out of ``target_name`` now and
        hold it out (see the module doc). Returns ``removed``; raises
        :class:`Refused` with the reason otherwise."""
        engine = self.engine
        (name,) = self._targets(target_name)
        target = next(t for t in engine.targets if t.name == name)
        if not target.config.copy_images:
            raise Refused("conflict", f"target {name} holds no copies (copy_images = false); "
                                      "warmer never removes Glance's own images")
        if engine.tracker.pinned_through_warmer(image_id):
            raise Refused("conflict", f"image {image_id} is pinned through warmer: "
                                      "unpin it first")
        if engine.tracker.is_pinned(image_id):
            raise Refused("conflict", f"image {image_id} is pinned by its Glance tag or "
                                      "property: remove it first")
        if image_id in engine.hands_off:
            raise Refused("conflict", f"image {image_id}: warmer keeps its hands off it "
                                      f"({engine.hands_off[image_id]}) until restarted")
        failures: tuple[type[BaseException], ...] = (CephUnavailable, TargetProblem,
                                                     GlanceUnavailable, *ceph_errors())
        now = engine.clock()
        try:
            async with engine.budget.admission(target):
                result = await target.evict(image_id)
        except LocationConflict as exc:
            engine.hands_off.let_go(image_id, exc)
            raise Refused("conflict", f"Glance's locations changed under the eviction; "
                                      f"warmer lets image {image_id} go until restarted") from exc
        except failures as exc:
            raise Refused("unavailable", f"target {name}: {exc}") from exc
        engine.metrics.evictions.labels(name, "operator", result).inc()
        if result != "removed":
            raise Refused(*REFUSALS.get(result, ("conflict", "refused: " + result)))
        LOG.info("image %s: evicted from target %s by an operator", image_id, name)
        if engine.tracker.image(image_id) is not None:
            self.holds[(image_id, name)] = Hold(engine.budget.demand_in(image_id, now, target), now)
        engine.book.record(image_id, target, TargetResult(State.NOT_WANTED,
                                                          Reason.EVICTED_BY_OPERATOR, None))
        return result

    def apply_holds(self, image_id: str, now: float, found: dict[str, Verdict | None]) -> None:
        """Verdicts of targets ``image_id`` is held out of become not wanted
        (``evicted_by_operator``); a hold that new demand (or a pin) lifted
        is dropped."""
        engine = self.engine
        for target in engine.targets:
            key = (image_id, target.name)
            hold = self.holds.get(key)
            verdict = found.get(target.name)
            if hold is None or verdict is None or not verdict.wanted:
                continue
            if verdict.reason == Reason.PINNED or self._new_demand(
                    hold, now, engine.budget.demand_in(image_id, now, target)):
                del self.holds[key]
                continue
            found[target.name] = Verdict(False, Reason.EVICTED_BY_OPERATOR, verdict.score)

    def _new_demand(self, hold: Hold, now: float, score: float) -> bool:
        age = max(0.0, now - hold.at)
        decayed = hold.score * math.pow(2.0, -age / self.engine.tracker.half_life)
        return score > decayed * (1.0 + 1e-9) + 1e-12

    def forget(self, image_ids: Collection[str]) -> None:
        """Images the engine no longer tracks."""
        gone = set(image_ids)
        for key in [k for k in self.holds if k[0] in gone]:
            del self.holds[key]
        for image_id in gone:
            self.requests.pop(image_id, None)

    # -- the daemon's summary (systemd STATUS=) ------------------------------------

    def summary(self) -> tuple[int, int, int]:
        """(warm, copying, failing): warm rows (image x target), copies
        under way, rows in error. O(rows)."""
        engine = self.engine
        warm = failing = 0
        for row in engine.book.recorded():
            if row.state == State.WARM:
                warm += 1
            elif row.state == State.ERROR:
                failing += 1
        copying = sum(len(t.progress) for t in engine.targets)
        return warm, copying, failing


# Target.evict's refusals: (kind, one line).
REFUSALS: dict[str, tuple[str, str]] = {
    "gone": ("not_found", "warmer holds no copy of it in that target"),
    "has_children": ("conflict", "kept: its snapshot has clones (Cinder volumes), and "
                                 "children always win"),
    "not_owned": ("conflict", "kept: the RBD image there is not warmer's copy"),
    "busy": ("conflict", "busy: a copy or another change holds the image's lease; try again"),
    "glance_refused": ("conflict", "kept: Glance refused to remove the location"),
    "glance_404": ("conflict", "kept: Glance answered 404 for the image, which is not a "
                               "delete"),
    "locations_hidden": ("conflict", "kept: Glance does not show the image's locations "
                                     "(show_multiple_locations), so the location could "
                                     "not be removed first"),
}
