"""Site-local demand on the real stack: demand counts at the target whose
Cinder backend it came from ([<target>] demand_backends), and nowhere else.
Glance's default store is central, so central holds every image already and
edge only gets what warmer copies there."""

from __future__ import annotations

import os
from collections.abc import Iterator
from pathlib import Path

import pytest
from stackclient import Stack, ceph
from stackclient.cinder import CinderNotifier
from stackclient.daemon import Daemon
from stackclient.glance import Glance

from tests.functional.test_copies import cinder_clone_image, edge_images
from tests.functional.test_daemon import WARM, demand

MiB = 1 << 20


@pytest.fixture
def site_daemon(stack: Stack) -> Iterator[Daemon]:
    d = Daemon(stack, name="sites", overrides=(
        "[warming]\nreconcile_interval = 5\nunmapped_demand = central\n"
        "[central]\ndemand_backends = ceph-central\n"
        "[edge]\ndemand_backends = ceph-edge\n")).start()
    yield d
    d.kill()


@pytest.fixture
def at_site(stack: Stack) -> Iterator[dict[str, CinderNotifier]]:
    notifiers = {site: CinderNotifier(stack["TRANSPORT_URL"], host=f"cinder-{site}",
                                      backend=f"ceph-{site}") for site in ("central", "edge")}
    yield notifiers
    for notifier in notifiers.values():
        notifier.close()


def test_demand_at_central_leaves_edge_untouched_and_edge_demand_warms_edge(
        stack: Stack, site_daemon: Daemon, glance: Glance, at_site: dict[str, CinderNotifier],
        cinder_python: Path) -> None:
    d = site_daemon
    image_id = glance.create("site-local")["id"]
    glance.upload(image_id, os.urandom(2 * MiB))
    demand(at_site["central"], glance, image_id, n=5)
    d.wait_until(lambda: d.target_state(image_id, "central") == WARM, 30, "warm on central")
    assert d.target_state(image_id, "edge") == ("not_wanted", "below_threshold")
    # Two more reconciliations: still nothing on edge.
    reconciled = d.metric("warmer_reconciliations_total", outcome="ok")
    d.wait_until(lambda: d.metric("warmer_reconciliations_total", outcome="ok")
                 >= reconciled + 2, 30, "two more reconciliations")
    assert image_id not in edge_images(stack)
    view = d.image(image_id)
    assert view is not None
    assert view["demand"]["central"]["score"] > 0 and view["demand"]["edge"]["score"] == 0
    assert cinder_clone_image(cinder_python, stack, image_id)["cloned"] is False

    demand(at_site["edge"], glance, image_id, n=3)
    d.wait_until(lambda: d.target_state(image_id, "edge") == WARM, 30, "warm on edge")
    assert image_id in edge_images(stack)
    cloned = cinder_clone_image(cinder_python, stack, image_id)
    assert cloned["cloned"] is True, cloned
    with ceph.connect(stack.ceph_conf("edge"), "cinder", stack.keyring("cinder", "edge")) as c:
        ceph.remove(c, "volumes", cloned["volume"])
    glance.delete_eventually(image_id)
