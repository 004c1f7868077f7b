"""The HTTP surface: the work queue bound, request sizes and image ids.
Real aiohttp servers on 127.0.0.1, an engine with fakes behind it (its
workers do not run, so what is queued stays queued)."""

from __future__ import annotations

import asyncio
import uuid
from collections.abc import Awaitable, Callable
from typing import Any, TypeVar

import pytest
from aiohttp.test_utils import TestClient, TestServer

from tests.unit.fakes import FakeCeph, FakeGlance
from warmer.http_api.app import make_app
from warmer.metrics import Metrics
from warmer.popularity import Policy
from warmer.tracker import Tracker, Weights
from warmer.warming.engine import Engine
from warmer.warming.target import Target, TargetConfig

T = TypeVar("T")


def build_engine() -> Engine:
    tracker = Tracker(half_life=3600, weights=Weights(), policy=Policy(), threshold=2.0,
                      top_k=0, dedup_window=100)
    target = Target(TargetConfig("central", "volumes", "central", True, copy_images=False),
                    FakeCeph())  # type: ignore[arg-type]
    return Engine(tracker, FakeGlance(), [target], Metrics(),  # type: ignore[arg-type]
                  workers=1, reconcile_interval=3600, retry_delay=1)


def app_for(engine: Engine, max_queue: int = 1000) -> Any:
    return make_app(engine, engine.metrics, lambda: {"bus": True}, lambda: 0.0,
                    max_queue=max_queue)


def with_client(app: Any, fn: Callable[[TestClient[Any, Any]], Awaitable[T]]) -> T:
    async def main() -> T:
        async with TestClient(TestServer(app, host="127.0.0.1")) as client:
            return await fn(client)
    return asyncio.run(main())


def evaluate_path(image_id: str | None = None) -> str:
    return f"/v1/images/{uuid.uuid4() if image_id is None else image_id}/evaluate"


# -- the work queue bound ---------------------------------------------------------------

def test_evaluate_beyond_the_queue_bound_is_429_and_the_queue_stays_bounded() -> None:
    engine = build_engine()
    bound, posts = 100, 20_000

    async def go(client: TestClient[Any, Any]) -> dict[int, int]:
        counts: dict[int, int] = {}
        sem = asyncio.Semaphore(32)

        async def one() -> None:
            async with sem:
                resp = await client.post(evaluate_path())
                counts[resp.status] = counts.get(resp.status, 0) + 1
                if resp.status == 429:
                    assert "work queue full" in await resp.text()
                else:
                    await resp.read()
        await asyncio.gather(*(one() for _ in range(posts)))
        return counts

    counts = with_client(app_for(engine, max_queue=bound), go)
    assert counts == {202: bound, 429: posts - bound}
    assert engine._queue.qsize() == bound


def test_image_already_queued_is_accepted_without_growing_a_full_queue() -> None:
    engine = build_engine()
    queued = str(uuid.uuid4())
    assert engine.request(queued, 2) and engine.request(str(uuid.uuid4()), 2)
    assert not engine.request(str(uuid.uuid4()), 2)
    assert engine.request(queued, 2)
    assert engine._queue.qsize() == 2
    engine.enqueue(str(uuid.uuid4()))  # events and reconciliation are not bounded
    assert engine._queue.qsize() == 3


def test_evaluate_while_stopping_is_503() -> None:
    engine = build_engine()
    engine.accepting = False

    async def go(client: TestClient[Any, Any]) -> int:
        return (await client.post(evaluate_path())).status

    assert with_client(app_for(engine), go) == 503
    assert engine._queue.qsize() == 0


# -- request sizes and ids --------------------------------------------------------------

def test_oversize_body_is_413() -> None:
    engine = build_engine()

    async def go(client: TestClient[Any, Any]) -> list[int]:
        big = b"x" * (64 * 1024 + 1)  # the documented limit, plus one

        async def chunked() -> Any:
            for i in range(0, len(big), 4096):
                yield big[i:i + 4096]

        return [(await client.post(evaluate_path(), data=big)).status,
                (await client.post(evaluate_path(), data=chunked())).status,
                (await client.get("/healthz", data=big)).status,
                (await client.post(evaluate_path(), data=b"{}")).status]

    assert with_client(app_for(engine), go) == [413, 413, 413, 202]
    assert engine._queue.qsize() == 1


NON_CANONICAL = [
    f"volume-{uuid.UUID(int=1)}", f"warmer-tmp.{uuid.UUID(int=1)}", "a..b",
    str(uuid.UUID(int=0xABCDEF)).upper(), f"{{{uuid.UUID(int=2)}}}", uuid.UUID(int=3).hex,
    f"urn:uuid:{uuid.UUID(int=4)}", "x" * 300, " ",
]


@pytest.mark.parametrize("bad", NON_CANONICAL)
def test_non_canonical_image_ids_are_400(bad: str) -> None:
    engine = build_engine()

    async def go(client: TestClient[Any, Any]) -> list[int]:
        return [(await client.get(f"/v1/images/{bad}")).status,
                (await client.post(evaluate_path(bad))).status]

    assert with_client(app_for(engine), go) == [400, 400]
    assert engine._queue.qsize() == 0
