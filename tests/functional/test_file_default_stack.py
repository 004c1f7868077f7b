"""A stack whose Glance keeps images in a file store by default (not RBD at
all): every image reaches Cinder's clusters through Glance's HTTP API."""

from __future__ import annotations

import os
import shutil
import subprocess
import tempfile
from collections.abc import Iterator
from pathlib import Path

import pytest
from stackclient import Stack, ceph
from stackclient.daemon import Daemon
from stackclient.glance import Glance

from tests.functional.test_daemon import WARM

ROOT = Path(__file__).resolve().parents[2]
MiB = 1 << 20


@pytest.fixture(scope="module")
def file_stack() -> Iterator[Stack]:
    base = Path(tempfile.mkdtemp(prefix="wf-", dir="/tmp"))
    up = subprocess.run([str(ROOT / "tools" / "stack"), "up", str(base),
                         "--glance-default-store", "local"], capture_output=True, text=True)
    if up.returncode != 0:
        pytest.fail(f"tools/stack up failed:\n{up.stdout}\n{up.stderr}")
    yield Stack.load(base)
    subprocess.run([str(ROOT / "tools" / "stack"), "down", str(base)], check=True,
                   capture_output=True)
    if not os.environ.get("WARMER_KEEP_STACK"):
        shutil.rmtree(base, ignore_errors=True)


def test_images_in_a_file_store_default_become_cloneable_in_every_cluster(
        file_stack: Stack) -> None:
    glance = Glance(file_stack["GLANCE_URL"])
    assert file_stack["GLANCE_DEFAULT_STORE"] == "local"
    data = os.urandom(2 * MiB) + bytes(6 * MiB)
    image_id = glance.create("file-default", tags=["warmer-pin"])["id"]
    glance.upload(image_id, data)  # no store header: Glance's default
    assert [loc["metadata"]["store"] for loc in glance.get(image_id)["locations"]] == ["local"]
    d = Daemon(file_stack, name="filedefault").start()
    try:
        for target in ("central", "edge"):
            d.wait_until(lambda t=target: d.target_state(image_id, t) == WARM, 30, "warm")
        stores = {loc["metadata"]["store"]: loc["url"]
                  for loc in glance.get(image_id)["locations"]}
        assert set(stores) == {"local", "central", "edge"}
        for cluster in ("central", "edge"):
            assert stores[cluster] == f"rbd://{file_stack.fsid(cluster)}/images/{image_id}/snap"
            with ceph.connect(file_stack.ceph_conf(cluster), "cinder",
                              file_stack.keyring("cinder", cluster)) as c:
                assert ceph.read_all(c, "images", image_id, "snap") == data
        assert d.metric("warmer_copy_bytes_total", kind="zero") > 0  # zeroes not written
    finally:
        d.kill()
