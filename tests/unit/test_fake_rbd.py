"""The in-memory librbd (tests/unit/fake_rbd.py) fails what real librbd
would: a call on a closed image, and a close under a running call, which
every unit test's fixture turns into a failure (tests/unit/conftest.py)."""

from __future__ import annotations

import threading
import time

import pytest

from tests.unit import fake_rbd
from tests.unit.fake_rbd import FakeCluster


def open_image(cluster: FakeCluster) -> fake_rbd.Image:
    cluster.put_image("images", "img", b"\1" * 4096, snapshot=None)
    return fake_rbd.Image(fake_rbd.Rados(cluster.conffile).open_ioctx("images"), "img")


def test_a_call_on_a_closed_image_raises_as_python_rbd_does(
        clusters: tuple[FakeCluster, FakeCluster]) -> None:
    image = open_image(clusters[1])
    image.close()
    image.close()  # again: nothing
    for call in (lambda: image.write(b"x", 0), lambda: image.read(0, 1), image.size):
        with pytest.raises(fake_rbd.InvalidArgument, match="image is closed"):
            call()
    assert fake_rbd.closed_under_calls == []


def test_a_close_under_a_running_write_is_recorded(
        clusters: tuple[FakeCluster, FakeCluster]) -> None:
    edge = clusters[1]
    image = open_image(edge)
    edge.write_delay = 0.5  # the write is running while it sleeps
    thread = threading.Thread(target=image.write, args=(b"x", 0))
    thread.start()
    while "write" not in edge.log:
        time.sleep(0.005)
    image.close()
    thread.join()
    assert len(fake_rbd.closed_under_calls) == 1
    assert "images/img closed under running {'write': 1}" in fake_rbd.closed_under_calls[0]
    fake_rbd.closed_under_calls.clear()  # seen: the fixture need not fail this test
