"""warmer never touches what is not its own, and a 404 is not a delete, on
the real stack: Glance and Cinder with the Ceph guide's caps, warmer with
read-only caps on Cinder's pool, copies in the Glance store's pool."""

from __future__ import annotations

import http.server
import os
import threading
import urllib.error
import urllib.request
import uuid
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
import rbd
from stackclient import Stack, ceph
from stackclient.cinder import CinderNotifier, GlanceNotifier
from stackclient.daemon import Daemon
from stackclient.glance import Glance, GlanceError

from tests.functional.edge import empty_edge, registry
from tests.functional.test_copies import cinder_clone_image, edge_images, edge_url, locations
from tests.functional.test_daemon import WARM, demand

MiB = 1 << 20


@pytest.fixture
def budget_daemon(stack: Stack, glance: Glance) -> Iterator[Daemon]:
    """A daemon that reconciles every 5 s and holds one copy on edge, which
    starts empty: earlier tests' copies would fill edge's one slot, and
    their pinned images would take it."""
    empty_edge(stack, glance)
    d = Daemon(stack, name="owner", overrides=(
        "[warming]\nreconcile_interval = 5\nretry_delay = 1\n"
        "[central]\ncopy_images = false\n[edge]\ncapacity_images = 1\n")).start()
    yield d
    d.kill()


@pytest.mark.parametrize("flatten", [False, True], ids=["clone", "flattened_clone"])
def test_a_cinder_clone_of_a_warmer_copy_survives_every_path(
        stack: Stack, budget_daemon: Daemon, glance: Glance, cinder: CinderNotifier,
        glance_bus: GlanceNotifier, flatten: bool) -> None:
    d = budget_daemon
    data = os.urandom(2 * MiB) + bytes(2 * MiB)
    image_id = glance.create(f"owned-{flatten}")["id"]
    glance.upload(image_id, data)
    demand(cinder, glance, image_id, n=3)
    d.wait_until(lambda: d.target_state(image_id, "edge") == WARM, 30, "copy on edge")
    volume = f"volume-{uuid.uuid4()}"
    with ceph.connect(stack.ceph_conf("edge"), "cinder", stack.keyring("cinder", "edge")) as c:
        ceph.clone_v1(c, "images", image_id, "snap", "volumes", volume)
        if flatten:
            with c.open_ioctx("volumes") as ioctx, rbd.Image(ioctx, volume) as img:
                img.flatten()
                assert dict(img.metadata_list())["warmer.owner"] == "warmer"  # inherited

    # 1. Bus messages naming the volume, the way an attacker or a bug would.
    for fake_id in (volume, volume.removeprefix("volume-"), f"warmer-tmp.{image_id}"):
        glance_bus.send("image.delete", {"id": fake_id, "status": "deleted"})
        cinder.volume_created({"id": fake_id, "disk_format": "raw", "size": 1})
    # 2. The admin API, with the same names.
    for fake_id in (volume, f"warmer-tmp.{image_id}"):
        try:
            urllib.request.urlopen(urllib.request.Request(
                f"{d.url}/v1/images/{fake_id}/evaluate", data=b"", method="POST"), timeout=5)
        except urllib.error.HTTPError:
            pass  # refused is fine; what matters is what happens to the volume
    # 3. Eviction: a hotter image wants the only slot on edge.
    hot = glance.create("owned-hot")["id"]
    glance.upload(hot, os.urandom(MiB))
    demand(cinder, glance, hot, n=9)
    if flatten:
        # Nothing depends on the copy any more: it may go, the volume stays.
        d.wait_until(lambda: d.target_state(hot, "edge") == WARM, 30, "hot image copied")
        assert image_id not in edge_images(stack)
    else:
        d.wait_until(lambda: d.target_state(hot, "edge") == ("cold", "over_budget"), 30,
                     "no room while the copy has a clone")
        assert d.metric("warmer_evictions_total", target="edge", result="has_children") >= 1
        # 4. Glance deletes the image: Glance itself stops at the clone (409).
        with pytest.raises(GlanceError):
            glance.delete(image_id)
    # 5. Reconciliations run (every 5 s) over all of it.
    reconciled = d.metric("warmer_reconciliations_total", outcome="ok")
    d.wait_until(lambda: d.metric("warmer_reconciliations_total", outcome="ok")
                 >= reconciled + 2, 30, "two more reconciliations")

    with ceph.connect(stack.ceph_conf("edge"), "cinder", stack.keyring("cinder", "edge")) as c:
        assert ceph.read_all(c, "volumes", volume) == data  # the volume is whole
        if not flatten:
            assert ceph.snapshot_state(c, "images", image_id) == "protected"
            assert edge_url(stack, image_id) in locations(glance, image_id)
        ceph.remove(c, "volumes", volume)
    assert d.proc is not None and d.proc.poll() is None
    # Tidy up for the next case: Glance deletes both images (and their data
    # at every location); warmer forgets its copies, registry and leases.
    for gone in (image_id, hot):
        glance.delete_eventually(gone)
    d.wait_until(lambda: not {image_id, hot} & set(registry(stack)), 30,
                 "both forgotten in edge's registry")
    assert not [n for n in edge_images(stack) if n in (image_id, hot)
                or n.startswith("warmer-tmp.")]


def test_a_wrong_glance_endpoint_removes_nothing(
        stack: Stack, daemon: Daemon, glance: Glance, cinder: CinderNotifier,
        tmp_path: Path) -> None:
    image_id = glance.create("wrong-endpoint")["id"]
    glance.upload(image_id, os.urandom(MiB))
    demand(cinder, glance, image_id)
    daemon.wait_until(lambda: daemon.target_state(image_id, "edge") == WARM, 30, "copy on edge")
    with not_found_server() as url:
        wrong = Daemon(stack, name="wrong", overrides=(
            f"[glance]\nendpoint = {url}\n[warming]\nreconcile_interval = 5\n"
            "retry_delay = 1\n")).start()
        try:
            demand(cinder, glance, image_id)  # its own pool queue gets these
            wrong.wait_until(lambda: wrong.metric("warmer_glance_refusals_total",
                                                  kind="unconfirmed_404") >= 1,
                             30, "404 not believed")
            reconciled = wrong.metric("warmer_reconciliations_total", outcome="ok")
            wrong.wait_until(lambda: wrong.metric("warmer_reconciliations_total",
                                                  outcome="ok") >= reconciled + 1, 30,
                             "a reconciliation with the wrong endpoint")
            assert wrong.metric("warmer_glance_refusals_total", kind="unconfirmed_404") >= 1
            assert wrong.metric("warmer_dependency_up", dependency="glance") == 0
            assert daemon.metric("warmer_dependency_up", dependency="glance") == 1
        finally:
            wrong.kill()
    assert image_id in edge_images(stack)
    assert edge_url(stack, image_id) in locations(glance, image_id)
    assert image_id in registry(stack)


def test_cinder_clones_a_file_store_copy_with_the_guides_caps(
        stack: Stack, daemon: Daemon, glance: Glance, cinder_python: Path) -> None:
    image_id = glance.create("file-guide-caps", tags=["warmer-pin"])["id"]
    glance.upload(image_id, os.urandom(2 * MiB), store=stack["GLANCE_FILE_STORE"])
    daemon.wait_until(lambda: daemon.target_state(image_id, "edge") == WARM, 30, "copy on edge")
    result = cinder_clone_image(cinder_python, stack, image_id)
    assert result["cloned"] is True, result
    with ceph.connect(stack.ceph_conf("edge"), "cinder", stack.keyring("cinder", "edge")) as c:
        ceph.remove(c, "volumes", result["volume"])


class _NotFound(http.server.BaseHTTPRequestHandler):
    def do_GET(self) -> None:
        self.send_response(404)
        self.send_header("Content-Type", "text/html")
        self.end_headers()
        self.wfile.write(b"<html><body>404 Not Found</body></html>")

    do_PATCH = do_DELETE = do_POST = do_GET

    def log_message(self, *args: Any) -> None:
        pass


class not_found_server:
    """A proxy that answers 404 to everything, on 127.0.0.1."""

    def __enter__(self) -> str:
        self.server = http.server.ThreadingHTTPServer(("127.0.0.1", 0), _NotFound)
        threading.Thread(target=self.server.serve_forever, daemon=True).start()
        return f"http://127.0.0.1:{self.server.server_address[1]}"

    def __exit__(self, *exc: object) -> None:
        self.server.shutdown()
        self.server.server_close()
