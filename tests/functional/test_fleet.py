"""The shared demand on the real stack (RabbitMQ, Ceph): daemons that
compete for one bus pool each see part of the demand, and score what one
daemon that saw all of it scores; a daemon killed with SIGKILL after its
flush comes back with its scores as soon as it is ready.

Scores decay with time, so two daemons asked a few milliseconds apart
answer differently (by ~2e-7 relative per second with a one-hour
half-life). The admin API gives each score unrounded (``exact_score``)
with the instant it was computed (``scored_at``); every score decays by
the same factor, so ``exact_score * 2**((scored_at - T) / half_life)`` is
the score at any common instant ``T``, and that is what is compared."""

from __future__ import annotations

import json
import time
import uuid
from typing import Any

from stackclient import Stack
from stackclient.cinder import CinderNotifier
from stackclient.daemon import Daemon
from stackclient.glance import Glance

from tests.functional.conftest import record_timing

HALF_LIFE = 3600.0  # config/warmer-local.conf
FAST = "[state]\nflush_interval = 0.5\nrefresh_interval = 0.5\n"


def score_at(view: dict[str, Any], at: float) -> float:
    return float(view["exact_score"]) * 2.0 ** ((view["scored_at"] - at) / HALF_LIFE)


def views(d: Daemon, images: list[str]) -> dict[str, dict[str, Any]] | None:
    found = {i: d.image(i) for i in images}
    if any(v is None for v in found.values()):
        return None
    return {i: v for i, v in found.items() if v is not None}


def handled(d: Daemon) -> float:
    return d.metric("warmer_notifications_total", event_type="volume.create.end",
                    outcome="handled")


def relative(a: float, b: float) -> float:
    return abs(a - b) / max(abs(a), abs(b))


def test_three_daemons_sharing_a_bus_pool_score_what_one_daemon_seeing_everything_scores(
        stack: Stack, glance: Glance, cinder: CinderNotifier) -> None:
    pool = f"fleet-{uuid.uuid4().hex[:8]}"
    fleet = [Daemon(stack, pool=pool, name=f"fleet-{n}",
                    overrides=f"[DEFAULT]\nhost = fleet-{n}\n{FAST}") for n in (1, 2, 3)]
    reference = Daemon(stack, name="fleet-ref", overrides=f"[DEFAULT]\nhost = fleet-ref\n{FAST}")
    assert reference.state_namespace != fleet[0].state_namespace
    daemons = [*fleet, reference]
    try:
        for d in daemons:
            d.start(wait=False)
        for d in daemons:
            d.wait_ready()
        # Queued images (no data): tracked and scored, never eligible, so
        # no daemon copies anything meanwhile.
        images = [glance.create(f"fleet-{n}")["id"] for n in range(3)]
        bodies = [glance.get(i) for i in images]
        sent = 0
        for n in range(60):
            cinder.volume_created(bodies[n % 3] if n % 4 else bodies[0])
            sent += 1
        last_sent = time.monotonic()
        reference.wait_until(lambda: handled(reference) == sent, 30, "reference saw all")
        for d in fleet:
            d.wait_until(lambda d=d: views(d, images) is not None, 30, "images tracked")

        worst: list[float] = []

        def converged() -> bool:
            ref = views(reference, images)
            assert ref is not None
            at = ref[images[0]]["scored_at"]
            diffs = []
            for d in fleet:
                mine = views(d, images)
                assert mine is not None
                diffs += [relative(score_at(mine[i], at), score_at(ref[i], at))
                          for i in images]
            worst[:] = [max(diffs)]
            return max(diffs) <= 1e-9

        fleet[0].wait_until(converged, 30, f"scores equal to the reference ({worst})",
                            interval=0.1)
        record_timing("fleet: last event -> 3 daemons' scores = reference", time.monotonic()
                      - last_sent)
        print(f"fleet: worst relative score difference {worst[0]:.3g}; "
              f"events per daemon {[handled(d) for d in fleet]}")
        # The pool split the stream: each daemon counted only part of it.
        counts = [handled(d) for d in fleet]
        assert sum(counts) == sent and max(counts) < sent, counts
        assert all(d.metric("warmer_state_errors_total") == 0 for d in daemons)
    finally:
        for d in daemons:
            d.kill()


def test_a_daemon_killed_after_its_flush_answers_with_its_scores_once_ready_again(
        stack: Stack, glance: Glance, cinder: CinderNotifier) -> None:
    d = Daemon(stack, name="phoenix", overrides=f"[DEFAULT]\nhost = phoenix\n{FAST}").start()
    try:
        image_id = glance.create("phoenix")["id"]
        body = glance.get(image_id)
        for _ in range(7):
            cinder.volume_created(body)
        d.wait_until(lambda: handled(d) == 7, 30, "events counted")
        before = d.image(image_id)
        assert before is not None and before["exact_score"] > 6.9
        time.sleep(1.0)  # two flush intervals
        d.kill()  # SIGKILL

        started = time.monotonic()
        d.start(wait=False)
        d.wait_ready()
        ready = time.monotonic() - started
        after = d.image(image_id)  # at once: no refresh to wait for
        answered = time.monotonic() - started
        assert after is not None, "the restarted daemon does not know the image"
        diff = relative(score_at(after, before["scored_at"]), before["exact_score"])
        assert diff <= 1e-9, (before, after)
        shown = d.cli("show", image_id)
        assert shown.returncode == 0, shown
        assert relative(score_at(json.loads(shown.stdout), before["scored_at"]),
                        before["exact_score"]) <= 1e-9
        record_timing("restart after kill -9: start -> ready", ready)
        record_timing("restart after kill -9: start -> image answered", answered)
        print(f"restart: relative score difference {diff:.3g}")
    finally:
        d.kill()
