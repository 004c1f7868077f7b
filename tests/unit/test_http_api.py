"""The HTTP surface: who may use the admin API on which listener, the work
queue bound, request sizes and image ids. Real aiohttp servers on
127.0.0.1 and on a unix socket, an engine with fakes behind it (its
workers do not run, so what is queued stays queued)."""

from __future__ import annotations

import asyncio
import logging
import os
import shutil
import socket
import stat
import tempfile
import uuid
from collections.abc import Awaitable, Callable, Iterator
from pathlib import Path
from types import SimpleNamespace
from typing import Any, TypeVar

import aiohttp
import pytest
from aiohttp.test_utils import TestClient, TestServer

from tests.unit.fakes import FakeCeph, FakeGlance
from warmer.http_api.app import Listener, make_app
from warmer.http_api.server import ListenerError, serve
from warmer.metrics import Metrics
from warmer.popularity import Policy
from warmer.tracker import Tracker, Weights
from warmer.warming.engine import Engine
from warmer.warming.target import Target, TargetConfig

TOKEN = "s3cret-admin-token"
T = TypeVar("T")


def build_engine() -> Engine:
    tracker = Tracker(half_life=3600, weights=Weights(), policy=Policy(), threshold=2.0,
                      top_k=0, dedup_window=100)
    target = Target(TargetConfig("central", "volumes", "central", True, copy_images=False),
                    FakeCeph())  # type: ignore[arg-type]
    return Engine(tracker, FakeGlance(), [target], Metrics(),  # type: ignore[arg-type]
                  workers=1, reconcile_interval=3600, retry_delay=1)


def app_for(engine: Engine, listener: Listener = Listener.TCP, token: str | None = None,
            max_queue: int = 1000) -> Any:
    return make_app(engine, engine.metrics, lambda: {"bus": True}, lambda: 0.0,
                    listener=listener, token=token, max_queue=max_queue)


def with_client(app: Any, fn: Callable[[TestClient[Any, Any]], Awaitable[T]]) -> T:
    async def main() -> T:
        async with TestClient(TestServer(app, host="127.0.0.1")) as client:
            return await fn(client)
    return asyncio.run(main())


def evaluate_path(image_id: str | None = None) -> str:
    return f"/v1/images/{uuid.uuid4() if image_id is None else image_id}/evaluate"


def bearer(token: str) -> dict[str, str]:
    return {"Authorization": f"Bearer {token}"}


# -- TCP: the bearer token ---------------------------------------------------------------

def test_tcp_post_is_refused_when_no_token_is_configured() -> None:
    engine = build_engine()

    async def go(client: TestClient[Any, Any]) -> tuple[int, str]:
        resp = await client.post(evaluate_path(), headers=bearer("anything"))
        return resp.status, await resp.text()

    status, body = with_client(app_for(engine, token=None), go)
    assert status == 403
    assert "admin_token" in body and "admin socket" in body
    assert engine.scheduler.depth() == 0


@pytest.mark.parametrize("headers", [{}, bearer("wrong-token"), {"Authorization": TOKEN},
                                     {"Authorization": f"Basic {TOKEN}"}, bearer(""),
                                     bearer(TOKEN + "x"), bearer("é" + TOKEN)],
                         ids=["none", "wrong", "no-scheme", "basic", "empty", "longer",
                              "non-ascii"])
def test_tcp_post_without_the_right_token_is_refused(headers: dict[str, str]) -> None:
    engine = build_engine()

    async def go(client: TestClient[Any, Any]) -> int:
        return (await client.post(evaluate_path(), headers=headers)).status

    assert with_client(app_for(engine, token=TOKEN), go) == 403
    assert engine.scheduler.depth() == 0


def test_tcp_post_with_the_right_token_is_accepted_and_queued() -> None:
    engine = build_engine()
    image_id = str(uuid.uuid4())

    async def go(client: TestClient[Any, Any]) -> tuple[int, Any]:
        resp = await client.post(evaluate_path(image_id),
                                 headers={"Authorization": f"bearer  {TOKEN} "})
        return resp.status, await resp.json()

    assert with_client(app_for(engine, token=TOKEN), go) == (202, {"queued": image_id})
    assert engine.scheduler.depth() == 1


def test_other_write_methods_need_the_token_too() -> None:
    async def go(client: TestClient[Any, Any]) -> list[int]:
        return [(await client.request(m, "/v1/images")).status
                for m in ("PUT", "DELETE", "PATCH")]

    assert with_client(app_for(build_engine(), token=TOKEN), go) == [403, 403, 403]
    assert with_client(app_for(build_engine(), token=None), go) == [403, 403, 403]


def test_tcp_reads_need_the_token_once_one_is_configured() -> None:
    async def go(client: TestClient[Any, Any]) -> list[int]:
        return [(await client.get("/v1/images")).status,
                (await client.get("/v1/images", headers=bearer("wrong"))).status,
                (await client.get("/v1/images", headers=bearer(TOKEN))).status,
                (await client.get(f"/v1/images/{uuid.uuid4()}", headers=bearer(TOKEN))).status]

    assert with_client(app_for(build_engine(), token=TOKEN), go) == [403, 403, 200, 404]
    assert with_client(app_for(build_engine(), token=None), go)[:1] == [200]


@pytest.mark.parametrize("token", [None, TOKEN])
def test_metrics_and_health_never_need_a_token(token: str | None) -> None:
    async def go(client: TestClient[Any, Any]) -> list[int]:
        return [(await client.get(p)).status for p in ("/metrics", "/healthz", "/readyz")]

    assert with_client(app_for(build_engine(), token=token), go) == [200, 200, 200]


def test_the_token_is_never_logged(caplog: pytest.LogCaptureFixture) -> None:
    caplog.set_level(logging.DEBUG)

    async def go(client: TestClient[Any, Any]) -> list[int]:
        return [(await client.post(evaluate_path(), headers=bearer("guess-" + TOKEN))).status,
                (await client.post(evaluate_path(), headers=bearer(TOKEN))).status]

    assert with_client(app_for(build_engine(), token=TOKEN), go) == [403, 202]
    assert "refused POST" in caplog.text
    assert TOKEN not in caplog.text


# -- the work queue bound ---------------------------------------------------------------

def test_evaluate_beyond_the_queue_bound_is_429_and_the_queue_stays_bounded() -> None:
    engine = build_engine()
    bound, posts = 100, 20_000

    async def go(client: TestClient[Any, Any]) -> dict[int, int]:
        counts: dict[int, int] = {}
        sem = asyncio.Semaphore(32)

        async def one() -> None:
            async with sem:
                resp = await client.post(evaluate_path(), headers=bearer(TOKEN))
                counts[resp.status] = counts.get(resp.status, 0) + 1
                if resp.status == 429:
                    assert "work queue full" in await resp.text()
                else:
                    await resp.read()
        await asyncio.gather(*(one() for _ in range(posts)))
        return counts

    counts = with_client(app_for(engine, token=TOKEN, max_queue=bound), go)
    assert counts == {202: bound, 429: posts - bound}
    assert engine.scheduler.depth() == bound


def test_image_already_queued_is_accepted_without_growing_a_full_queue() -> None:
    engine = build_engine()
    queued = str(uuid.uuid4())
    assert engine.request(queued, 2) and engine.request(str(uuid.uuid4()), 2)
    assert not engine.request(str(uuid.uuid4()), 2)
    assert engine.request(queued, 2)
    assert engine.scheduler.depth() == 2
    engine.enqueue(str(uuid.uuid4()))  # events and reconciliation are not bounded
    assert engine.scheduler.depth() == 3


def test_evaluate_while_stopping_is_503() -> None:
    engine = build_engine()
    engine.stop_intake()

    async def go(client: TestClient[Any, Any]) -> int:
        return (await client.post(evaluate_path(), headers=bearer(TOKEN))).status

    assert with_client(app_for(engine, token=TOKEN), go) == 503
    assert engine.scheduler.depth() == 0


# -- request sizes and ids --------------------------------------------------------------

@pytest.mark.parametrize("token", [None, TOKEN])
def test_oversize_body_is_413(token: str | None) -> None:
    engine = build_engine()

    async def go(client: TestClient[Any, Any]) -> list[int]:
        big = b"x" * (64 * 1024 + 1)  # the documented limit, plus one

        async def chunked() -> Any:
            for i in range(0, len(big), 4096):
                yield big[i:i + 4096]

        return [(await client.post(evaluate_path(), data=big, headers=bearer(TOKEN))).status,
                (await client.post(evaluate_path(), data=chunked(),
                                   headers=bearer(TOKEN))).status,
                (await client.get("/healthz", data=big)).status,
                (await client.post(evaluate_path(), data=b"{}",
                                   headers=bearer(TOKEN))).status]

    statuses = with_client(app_for(engine, token=token), go)
    if token:
        assert statuses == [413, 413, 413, 202]
        assert engine.scheduler.depth() == 1
    else:  # refused before anyone reads a body, unless it declares its size
        assert statuses == [413, 403, 413, 403]


NON_CANONICAL = [
    f"volume-{uuid.UUID(int=1)}", f"warmer-tmp.{uuid.UUID(int=1)}", "a..b",
    str(uuid.UUID(int=0xABCDEF)).upper(), f"{{{uuid.UUID(int=2)}}}", uuid.UUID(int=3).hex,
    f"urn:uuid:{uuid.UUID(int=4)}", "x" * 300, " ",
]


@pytest.mark.parametrize("bad", NON_CANONICAL)
def test_non_canonical_image_ids_are_400(bad: str) -> None:
    engine = build_engine()

    async def go(client: TestClient[Any, Any]) -> list[int]:
        return [(await client.get(f"/v1/images/{bad}", headers=bearer(TOKEN))).status,
                (await client.post(evaluate_path(bad), headers=bearer(TOKEN))).status]

    assert with_client(app_for(engine, token=TOKEN), go) == [400, 400]
    assert engine.scheduler.depth() == 0


# -- the listeners: admin socket, metrics-only --------------------------------------------

@pytest.fixture
def sockdir() -> Iterator[Path]:
    # A short directory: a unix socket path must fit in 108 bytes.
    path = Path(tempfile.mkdtemp(prefix="wa-", dir="/tmp"))
    yield path
    shutil.rmtree(path, ignore_errors=True)


def http_opts(sockdir: Path | None, token: str | None = TOKEN, **over: Any) -> Any:
    opts: dict[str, Any] = dict(
        host="127.0.0.1", port=0, admin_token=token, metrics_host=None, metrics_port=0,
        admin_max_queue=1000, admin_socket=str(sockdir / "admin.sock") if sockdir else "")
    opts.update(over)
    return SimpleNamespace(**opts)


async def request(method: str, url: str, unix: str | None = None,
                  headers: dict[str, str] | None = None) -> tuple[int, str]:
    connector = aiohttp.UnixConnector(path=unix) if unix else None
    async with aiohttp.ClientSession(connector=connector) as session, \
            session.request(method, url, headers=headers) as resp:
        return resp.status, await resp.text()


def test_post_over_the_admin_socket_needs_no_token_and_the_socket_is_0660(
        sockdir: Path) -> None:
    engine = build_engine()
    image_id = str(uuid.uuid4())
    sock = str(sockdir / "admin.sock")

    async def go() -> list[tuple[int, str]]:
        surface = await serve(http_opts(sockdir), engine, engine.metrics, lambda: {},
                              lambda: 0.0)
        try:
            assert stat.S_IMODE(os.stat(sock).st_mode) == 0o660
            assert stat.S_ISSOCK(os.stat(sock).st_mode)
            tcp = f"http://127.0.0.1:{surface.port}"
            return [await request("POST", f"http://localhost{evaluate_path(image_id)}", sock),
                    await request("GET", "http://localhost/v1/images", sock),
                    await request("POST", f"{tcp}{evaluate_path()}")]
        finally:
            await surface.close()

    (unix_post, _), (unix_get, _), (tcp_post, _) = asyncio.run(go())
    assert (unix_post, unix_get, tcp_post) == (202, 200, 403)
    assert engine.scheduler.depth() == 1 and engine.scheduler.is_queued(image_id)
    assert not os.path.exists(sock), "the socket file is removed at shutdown"


def test_socket_mode_is_0660_whatever_the_umask(sockdir: Path) -> None:
    engine = build_engine()
    sock = str(sockdir / "admin.sock")

    async def go(umask: int) -> int:
        old = os.umask(umask)
        try:
            surface = await serve(http_opts(sockdir), engine, engine.metrics, lambda: {},
                                  lambda: 0.0)
        finally:
            os.umask(old)
        try:
            return stat.S_IMODE(os.stat(sock).st_mode)
        finally:
            await surface.close()

    assert [asyncio.run(go(m)) for m in (0o077, 0o022, 0o000)] == [0o660] * 3


def test_admin_routes_are_absent_on_the_metrics_listener(sockdir: Path) -> None:
    engine = build_engine()

    async def go() -> dict[str, int]:
        surface = await serve(http_opts(None), engine, engine.metrics, lambda: {"bus": True},
                              lambda: 0.0)
        assert surface.metrics_port and surface.metrics_port != surface.port
        base = f"http://127.0.0.1:{surface.metrics_port}"
        try:
            return {f"{m} {p}": (await request(m, base + p, headers=bearer(TOKEN)))[0]
                    for m, p in [("GET", "/metrics"), ("GET", "/healthz"), ("GET", "/readyz"),
                                 ("GET", "/v1/images"), ("GET", f"/v1/images/{uuid.uuid4()}"),
                                 ("POST", evaluate_path())]}
        finally:
            await surface.close()

    statuses = asyncio.run(go())
    assert statuses == {"GET /metrics": 200, "GET /healthz": 200, "GET /readyz": 200,
                        "GET /v1/images": 404, **{k: 404 for k in statuses if "/v1/images/" in k}}
    assert engine.scheduler.depth() == 0


def test_without_metrics_port_there_is_one_tcp_listener() -> None:
    engine = build_engine()

    async def go() -> tuple[int | None, int]:
        surface = await serve(http_opts(None, metrics_port=None), engine, engine.metrics,
                              lambda: {}, lambda: 0.0)
        try:
            status, _ = await request("GET", f"http://127.0.0.1:{surface.port}/metrics")
            return surface.metrics_port, status
        finally:
            await surface.close()

    assert asyncio.run(go()) == (None, 200)


def test_a_stale_socket_file_is_replaced_and_a_live_one_is_not(sockdir: Path) -> None:
    engine = build_engine()
    sock = str(sockdir / "admin.sock")
    with socket.socket(socket.AF_UNIX) as dead:  # bound, never listening: a dead daemon's
        dead.bind(sock)

    async def go() -> str:
        first = await serve(http_opts(sockdir), engine, engine.metrics, lambda: {},
                            lambda: 0.0)
        try:
            with pytest.raises(ListenerError) as err:
                await serve(http_opts(sockdir), engine, engine.metrics, lambda: {},
                            lambda: 0.0)
            assert stat.S_ISSOCK(os.stat(sock).st_mode), "a live daemon's socket stays"
            status, _ = await request("GET", "http://localhost/healthz", sock)
            assert status == 200
            return str(err.value)
        finally:
            await first.close()

    assert "another process is listening" in asyncio.run(go())


def test_an_admin_socket_that_cannot_be_bound_is_a_clear_error() -> None:
    engine = build_engine()

    async def go() -> str:
        with pytest.raises(ListenerError) as err:
            await serve(http_opts(None, admin_socket="/nonexistent-dir/admin.sock"), engine,
                        engine.metrics, lambda: {}, lambda: 0.0)
        return str(err.value)

    message = asyncio.run(go())
    assert "[http] admin_socket /nonexistent-dir/admin.sock" in message
    assert "No such file or directory" in message


def test_status_says_who_leads_behind_the_token() -> None:
    engine = build_engine()
    who = {"host": "ctl-b", "leader": {"name": "ctl-a", "since": 1.0, "self": False}}
    app = make_app(engine, engine.metrics, lambda: {"bus": True}, lambda: 0.0,
                   listener=Listener.TCP, token=TOKEN, status=lambda: who)

    async def fetch(client: TestClient[Any, Any]) -> tuple[int, int, Any]:
        refused = await client.get("/v1/status")
        resp = await client.get("/v1/status", headers=bearer(TOKEN))
        return refused.status, resp.status, await resp.json()
    assert with_client(app, fetch) == (403, 200, who)


def test_images_are_listed_in_pages_that_add_up_to_all() -> None:
    from warmer.events import ImageInfo
    engine = build_engine()
    for _ in range(5):
        engine.tracker.observe(ImageInfo(str(uuid.uuid4()), "active", "raw", 1, "public"))

    async def scenario(client: TestClient[Any, Any]) -> list[Any]:
        seen: list[str] = []
        marker: str | None = ""
        pages = 0
        while marker is not None:
            resp = await client.get(f"/v1/images?limit=2&marker={marker}",
                                    headers=bearer(TOKEN))
            body = await resp.json()
            seen += [i["id"] for i in body["images"]]
            marker, pages = body["next"], pages + 1
        bad = [(await client.get(f"/v1/images?limit={x}", headers=bearer(TOKEN))).status
               for x in ("0", "x", "10001")]
        return [seen, pages, bad]
    seen, pages, bad = with_client(app_for(engine, token=TOKEN), scenario)
    assert seen == sorted(engine.tracker.image_ids()) and len(seen) == 5 and pages == 3
    assert bad == [400, 400, 400]
