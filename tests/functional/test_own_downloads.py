"""Invariant 9 on the real stack: warmer's own downloads are not demand.

A copy out of Glance's file store reads ``GET /v2/images/{id}/file``, and
Glance then sends ``image.send`` with warmer's user as the receiver. The
stack's Glance makes every request the user ``stack-admin``, which the
stack's warmer config lists in ``[popularity] ignored_download_users``.
"""

from __future__ import annotations

import pytest
from stackclient import Stack
from stackclient.daemon import Daemon
from stackclient.glance import Glance

from tests.functional.test_copies import MiB, sparse
from tests.functional.test_daemon import WARM


def sends(daemon: Daemon, outcome: str) -> float:
    return daemon.metric("warmer_notifications_total", event_type="image.send",
                         outcome=outcome)


def score(daemon: Daemon, image_id: str) -> float:
    view = daemon.image(image_id)
    assert view is not None
    return float(view["score"])


def test_warmers_own_http_copy_does_not_raise_the_score_but_a_tenants_download_does(
        stack: Stack, daemon: Daemon, glance: Glance) -> None:
    own_before, handled_before = sends(daemon, "own_download"), sends(daemon, "handled")
    data = sparse(8 * MiB, data_every=2)
    image_id = glance.create("own-download", tags=["warmer-pin"])["id"]  # wanted, no demand
    glance.upload(image_id, data, store=stack["GLANCE_FILE_STORE"])
    daemon.wait_until(lambda: (v := daemon.image(image_id)) and len(v["targets"]) == 2 and
                      all((t["state"], t["reason"]) == WARM for t in v["targets"]),
                      30, "copied over HTTP into both clusters")
    # Glance sends image.send once a download is complete, which can be
    # after warmer published its copy.
    daemon.wait_until(lambda: sends(daemon, "own_download") > own_before, 15,
                      "warmer's own image.send seen")
    assert sends(daemon, "handled") == handled_before
    assert score(daemon, image_id) == 0.0

    # The same kind of notification for someone else's download is demand.
    assert glance.download(image_id, as_user="tenant-user") == data
    daemon.wait_until(lambda: sends(daemon, "handled") >= handled_before + 1, 15,
                      "a tenant's image.send counted")
    assert score(daemon, image_id) == pytest.approx(0.5, abs=0.01)  # weight_image_send
