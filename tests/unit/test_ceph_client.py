"""CephClient's connection handling, with fake rados/rbd modules shaped like
the real bindings (rados and rbd share no base exception class)."""

from __future__ import annotations

import asyncio
import concurrent.futures
import errno
import gc
import threading
from typing import Any

import pytest

from tests.unit.fake_bindings import FakeRados
from warmer.ceph.client import CephClient, CephUnavailable, ClusterConfig


def client(**config: Any) -> CephClient:
    executor = concurrent.futures.ThreadPoolExecutor(2)
    return CephClient(ClusterConfig("/etc/ceph/edge.conf", "warmer", **config), executor)


def test_every_connection_is_made_with_osd_and_mon_op_timeouts(bindings: Any) -> None:
    c = client(osd_op_timeout=7, mon_op_timeout=9)
    asyncio.run(c.probe())
    [cluster] = FakeRados.made
    assert cluster.conf["rados_osd_op_timeout"] == "7"
    assert cluster.conf["rados_mon_op_timeout"] == "9"


def test_connecting_is_bounded_by_connect_timeout(bindings: Any) -> None:
    """The bindings ignore connect(timeout=...); librados' own
    client_mount_timeout (300 s by default) is what bounds a connect to a
    cluster whose mons do not answer."""
    c = client(connect_timeout=4)
    asyncio.run(c.probe())
    assert FakeRados.made[0].conf["client_mount_timeout"] == "4"


def test_timeouts_default_to_thirty_seconds(bindings: Any) -> None:
    c = client()
    asyncio.run(c.probe())
    assert FakeRados.made[0].conf["rados_osd_op_timeout"] == "30"
    assert FakeRados.made[0].conf["rados_mon_op_timeout"] == "30"


async def unavailable(c: CephClient, make: Any) -> bool:
    """Whether an operation failing with ``make()`` raises CephUnavailable.

    Not pytest.raises: its ExceptionInfo keeps the traceback, and with it
    the frame that held the connection, alive until the test ends. A
    traceback in a reference cycle lives until Python's cyclic collector
    runs, which the daemon's allocations trigger soon enough, and the loop
    drops the finished future's wake-up within a few turns: both are done here
    so that the next call sees the connection unused at once."""
    try:
        await c.run("op", raising(make))
    except CephUnavailable:
        await settle()
        return True
    return False


async def settle() -> None:
    for _ in range(3):
        await asyncio.sleep(0)
    gc.collect()


def test_a_probe_given_a_pool_needs_an_osd_to_answer(bindings: Any) -> None:
    """A mon alone answers while every OSD is down: the probe also stats an
    object of the pool (one that need not exist)."""
    rados, _ = bindings
    c = client()
    asyncio.run(c.probe("volumes"))  # ObjectNotFound: the OSD answered

    def osd_down(conffile: str) -> None:
        raise rados.TimedOut("RADOS timed out", errno=errno.ETIMEDOUT)
    asyncio.run(c.probe())  # no pool: the mon is enough
    FakeRados.on_call = osd_down
    with pytest.raises(CephUnavailable):
        asyncio.run(c.probe("volumes"))


def raising(make: Any) -> Any:
    """An operation that fails with ``make()`` (made inside, so that the
    exception's traceback does not keep a reference cycle alive)."""
    def fn(cluster: Any) -> None:
        raise make()
    return fn


@pytest.mark.parametrize("make", [
    lambda rados, rbd: rbd.ConnectionShutdown("blocklisted", errno=errno.ESHUTDOWN),
    lambda rados, rbd: rbd.Timeout("RBD operation timeout", errno=errno.ETIMEDOUT),
    lambda rados, rbd: rbd.OSError("not connected", errno=errno.ENOTCONN),
    lambda rados, rbd: rbd.OSError("blocklisted", errno=108),  # EBLOCKLISTED
    lambda rados, rbd: rbd.OSError("timed out", errno=errno.ETIMEDOUT),
    lambda rados, rbd: rados.ConnectionShutdown("shut down", errno=errno.ESHUTDOWN),
    lambda rados, rbd: rados.TimedOut("RADOS timed out", errno=errno.ETIMEDOUT),
    lambda rados, rbd: rados.OSError("not connected", errno=errno.ENOTCONN),
], ids=["rbd.ConnectionShutdown", "rbd.Timeout", "rbd ENOTCONN", "rbd EBLOCKLISTED",
        "rbd ETIMEDOUT", "rados.ConnectionShutdown", "rados.TimedOut", "rados ENOTCONN"])
def test_a_lost_connection_raises_unavailable_and_the_next_call_reconnects(
        bindings: Any, make: Any) -> None:
    rados, rbd = bindings
    c = client()

    async def scenario() -> None:
        await c.connect()
        assert await unavailable(c, lambda: make(rados, rbd))
        assert await c.connect() == "fsid"
    asyncio.run(scenario())
    first, second = FakeRados.made
    assert first.shut_down and not second.shut_down


def test_other_errors_keep_the_connection(bindings: Any) -> None:
    rados, rbd = bindings
    c = client()

    async def scenario() -> None:
        with pytest.raises(rbd.ImageNotFound):
            await c.run("op", raising(lambda: rbd.ImageNotFound("none", errno=errno.ENOENT)))
        with pytest.raises(rbd.OSError):
            await c.run("op", raising(lambda: rbd.OSError("bad msg", errno=errno.EBADMSG)))
        await c.connect()
    asyncio.run(scenario())
    assert len(FakeRados.made) == 1 and not FakeRados.made[0].shut_down


def test_a_dropped_connection_is_shut_down_only_once_nothing_uses_it(bindings: Any) -> None:
    """An image still open on the old connection (here: a handle that refers
    to it, as an ioctx does) keeps it alive; shutting it down under the
    handle would crash librados."""
    _, rbd = bindings
    c = client()
    held: list[Any] = []

    def open_handle(cluster: Any) -> None:
        held.append(cluster)  # an "ioctx" that outlives the call

    async def scenario() -> None:
        await c.run("open", open_handle)
        assert await unavailable(c, lambda: rbd.Timeout("timeout", errno=errno.ETIMEDOUT))
        await c.connect()  # a new connection; the old one is still held
        assert not FakeRados.made[0].shut_down
        held.clear()  # the handle is closed
        await settle()
        await c.connect()
    asyncio.run(scenario())
    assert FakeRados.made[0].shut_down and not FakeRados.made[1].shut_down
    c.close()
    assert FakeRados.made[1].shut_down


def test_a_call_running_on_the_old_connection_keeps_it_until_it_returns(
        bindings: Any) -> None:
    _, rbd = bindings
    c = client()
    started, release = threading.Event(), threading.Event()

    def slow(cluster: Any) -> str:
        started.set()
        release.wait(5)
        return "done"

    async def scenario() -> None:
        await c.connect()
        running = asyncio.ensure_future(c.run("slow", slow))
        await asyncio.to_thread(started.wait, 5)
        assert await unavailable(c, lambda: rbd.ConnectionShutdown("x", errno=errno.ESHUTDOWN))
        await c.connect()
        assert not FakeRados.made[0].shut_down  # slow() still runs on it
        release.set()
        assert await running == "done"
        await settle()
        await c.connect()
    asyncio.run(scenario())
    assert FakeRados.made[0].shut_down


def test_guarded_calls_map_a_lost_connection_like_run(bindings: Any) -> None:
    """A copy's writes run on the client's threads outside run(): a write
    that times out drops the connection and raises CephUnavailable too."""
    rados, rbd = bindings
    c = client()
    asyncio.run(c.connect())
    calls = []

    def write(data: bytes, offset: int) -> None:
        calls.append(offset)
        if offset:
            raise rbd.Timeout("RBD operation timeout (error writing)", errno=errno.ETIMEDOUT)
    guarded = c.guarded(write)
    guarded(b"x", 0)
    with pytest.raises(CephUnavailable, match="error writing"):
        guarded(b"x", 4096)
    with pytest.raises(rbd.ImageNotFound):
        c.guarded(raising(lambda: rbd.ImageNotFound("gone", errno=errno.ENOENT)))(None)
    assert calls == [0, 4096]
    asyncio.run(c.connect())
    assert len(FakeRados.made) == 2  # the next call reconnected


def test_offload_runs_on_the_clients_threads_without_connecting(bindings: Any) -> None:
    c = client()
    where = asyncio.run(c.offload(lambda: threading.current_thread().name))
    assert where != threading.main_thread().name
    assert FakeRados.made == []
