"""Crashes and eviction, each test with its own daemon and settings."""

from __future__ import annotations

import os
import time
import uuid

from stackclient import Stack, ceph
from stackclient.cinder import CinderNotifier
from stackclient.daemon import Daemon
from stackclient.glance import Glance, GlanceError

from tests.functional.conftest import record_timing
from tests.functional.test_copies import edge_images, edge_url, locations
from tests.functional.test_daemon import WARM, demand

MiB = 1 << 20


def test_kill_9_mid_copy_publishes_nothing_and_restart_cleans_up(
        stack: Stack, glance: Glance, cinder: CinderNotifier) -> None:
    slow = ("[central]\ncopy_images = false\n[edge]\ncopy_window = 1\ncopy_lock_seconds = 15\n"
            "[warming]\nreconcile_interval = 5\n[state]\nflush_interval = 0.2\n")
    d = Daemon(stack, name="crash", overrides=slow).start()
    image_id = glance.create("big")["id"]
    glance.upload(image_id, os.urandom(192 * MiB))
    try:
        demand(cinder, glance, image_id)
        sent = time.monotonic()
        progress = d.wait_until(lambda: ((d.image(image_id) or {}).get("copying") or {})
                                .get("edge"), 60, "copy under way", interval=0.01)
        time.sleep(max(0.0, sent + 0.5 - time.monotonic()))  # the demand is flushed
        d.kill()  # SIGKILL, mid-copy
        assert progress["done_bytes"] < progress["size_bytes"]
        assert f"warmer-tmp.{image_id}" in edge_images(stack), "not killed mid-copy"
        assert edge_url(stack, image_id) not in locations(glance, image_id)
        assert image_id not in edge_images(stack)

        # Same name: once its old lease ran out (copy_lock_seconds), it removes
        # the leftover (the dead writer's watch may linger up to the OSD's
        # 30 s watch timeout) and copies again. No new notification: the
        # restarted daemon knows the image and its demand from the shared
        # state, and its reconciliation and retries do the rest.
        restarted = time.monotonic()
        d.start()
        view = d.image(image_id)
        assert view is not None and view["score"] >= 2.9, view  # 3 volumes, before any event
        d.wait_until(lambda: f"warmer-tmp.{image_id}" not in edge_images(stack)
                     or d.target_state(image_id, "edge") == WARM, 60, "leftover removed")
        d.wait_until(lambda: d.target_state(image_id, "edge") == WARM, 120, "warm")
        record_timing("kill -9 mid-copy: restart to warm, no new demand",
                      time.monotonic() - restarted)
        assert locations(glance, image_id)[edge_url(stack, image_id)] == "edge"
    finally:
        d.kill()


def test_eviction_never_removes_a_snapshot_that_has_a_clone(
        stack: Stack, glance: Glance, cinder: CinderNotifier) -> None:
    budget = "[central]\ncopy_images = false\n[edge]\ncapacity_images = 1\n"
    # Copies left by earlier tests would count against the budget: delete
    # their Glance images; the daemon's first reconciliation purges the copies.
    def copies() -> list[str]:
        return [n for n in edge_images(stack) if n.count("-") == 4 and "." not in n
                and not n.startswith("volume-")]
    # Listening before Glance deletes: its image.delete notifications are
    # what lets warmer remove the copies (a bare 404 proves nothing).
    d = Daemon(stack, name="evict", overrides=budget).start()
    for name in copies():
        try:
            glance.delete(name)
        except GlanceError:
            pass  # already gone
    try:
        d.wait_until(lambda: not copies(), 30, "edge pool empty of copies")
        first = glance.create("first")["id"]
        glance.upload(first, os.urandom(2 * MiB))
        demand(cinder, glance, first)
        d.wait_until(lambda: d.target_state(first, "edge") == WARM, 30, "first warm")
        clone = f"volume-{uuid.uuid4()}"
        with ceph.connect(stack.ceph_conf("edge"), "cinder",
                          stack.keyring("cinder", "edge")) as c:
            ceph.clone_v1(c, "images", first, "snap", "volumes", clone)

        second = glance.create("second")["id"]
        glance.upload(second, os.urandom(2 * MiB))
        demand(cinder, glance, second, n=6)  # worth more than the first
        d.wait_until(lambda: d.target_state(second, "edge") == ("cold", "over_budget"), 30,
                     "no room while the first has a clone")
        assert d.metric("warmer_evictions_total", target="edge", result="has_children") >= 1
        with ceph.connect(stack.ceph_conf("edge"), "cinder",
                          stack.keyring("cinder", "edge")) as c:
            assert ceph.snapshot_state(c, "images", first) == "protected"
            assert edge_url(stack, first) in locations(glance, first)
            ceph.remove(c, "volumes", clone)  # the clone goes (or is flattened)

        demand(cinder, glance, second)
        d.wait_until(lambda: d.target_state(second, "edge") == WARM, 30, "second warm")
        assert first not in edge_images(stack)
        assert edge_url(stack, first) not in locations(glance, first)
        assert d.metric("warmer_evictions_total", target="edge", result="removed") >= 1
    finally:
        d.kill()


def test_two_daemons_never_copy_the_same_image_into_the_same_target_at_once(
        stack: Stack, glance: Glance) -> None:
    # Each daemon on its own pool queue sees every notification, so both
    # want the image at the same moment; the copy lease lets only one copy.
    slow = "[central]\ncopy_images = false\n[edge]\ncopy_window = 1\n"
    a = Daemon(stack, name="twin-a", overrides=f"[DEFAULT]\nhost = twin-a\n{slow}").start()
    b = Daemon(stack, name="twin-b", overrides=f"[DEFAULT]\nhost = twin-b\n{slow}").start()
    try:
        image_id = glance.create("twins", tags=["warmer-pin"])["id"]
        glance.upload(image_id, os.urandom(64 * MiB))
        for d in (a, b):
            d.wait_until(lambda d=d: d.target_state(image_id, "edge") == WARM, 60, "warm")
        copies = sum(d.metric("warmer_changes_total", target="edge", action="copied")
                     for d in (a, b))
        assert copies == 1
        busy = sum(d.metric("warmer_warm_duration_seconds_count", target="edge",
                            outcome="busy") for d in (a, b))
        assert busy >= 1, "the two daemons never overlapped; the test proved nothing"
        assert list(locations(glance, image_id)).count(edge_url(stack, image_id)) == 1
    finally:
        a.kill()
        b.kill()
