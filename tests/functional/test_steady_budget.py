"""A steady workload under a tight budget, on the real stack: three images
of equal demand want edge's two slots. No copy may be evicted to be copied
again: a newcomer must be worth more than [warming] eviction_margin over
what it would evict, so equals do not take turns.

The steady phase lasts WARMER_STEADY_SECONDS (60 by default in the suite;
the issue's five minutes: WARMER_STEADY_SECONDS=300)."""

from __future__ import annotations

import os
import random
import time
from collections.abc import Iterator

import pytest
from stackclient import Stack
from stackclient.cinder import CinderNotifier
from stackclient.daemon import Daemon
from stackclient.glance import Glance

from tests.functional.edge import empty_edge
from tests.functional.test_copies import edge_images

MiB = 1 << 20
STEADY_SECONDS = float(os.environ.get("WARMER_STEADY_SECONDS", "60"))


@pytest.fixture
def tight(stack: Stack, glance: Glance) -> Iterator[Daemon]:
    # Earlier tests' copies fill edge's registry, and their pinned images
    # are worth any slot: start from an empty edge.
    empty_edge(stack, glance)
    d = Daemon(stack, name="steady", overrides=(
        "[warming]\nreconcile_interval = 5\nretry_delay = 1\n"
        "[central]\ncopy_images = false\n[edge]\ncapacity_images = 2\n")).start()
    yield d
    d.kill()


def test_a_steady_workload_under_a_tight_budget_never_evicts_to_copy_again(
        stack: Stack, tight: Daemon, glance: Glance, cinder: CinderNotifier) -> None:
    d = tight
    images = []
    for n in range(3):
        image_id = glance.create(f"steady-{n}")["id"]
        glance.upload(image_id, os.urandom(MiB))
        images.append(glance.get(image_id))
    ids = [image["id"] for image in images]
    rng = random.Random(7)

    def one_round() -> None:
        for image in rng.sample(images, len(images)):  # equal demand, any order
            cinder.volume_created(image)

    # Warm-up: six rounds, then two of the three hold edge's slots.
    for _ in range(6):
        one_round()
        time.sleep(0.2)
    d.wait_until(lambda: sum(d.target_state(i, "edge") == ("warm", "cloneable")
                             for i in ids) == 2, 30, "two of three warm on edge")
    held = {i for i in ids if i in edge_images(stack)}
    copies = d.metric("warmer_changes_total", target="edge", action="copied")
    evictions = d.metric("warmer_evictions_total", target="edge", reason="budget")
    reconciled = d.metric("warmer_reconciliations_total", outcome="ok")
    # Steady: a round a second, each image in random order (so the one
    # without a slot is now and then a whole event ahead of the others).
    started = time.monotonic()
    while time.monotonic() - started < STEADY_SECONDS:
        one_round()
        time.sleep(1.0)
    d.wait_until(lambda: d.metric("warmer_reconciliations_total", outcome="ok")
                 >= reconciled + STEADY_SECONDS // 5 - 2, 30, "reconciliations ran")
    assert d.metric("warmer_evictions_total", target="edge", reason="budget") == evictions
    assert d.metric("warmer_changes_total", target="edge", action="copied") == copies
    assert {i for i in ids if i in edge_images(stack)} == held
    for image_id in ids:
        glance.delete_eventually(image_id)
