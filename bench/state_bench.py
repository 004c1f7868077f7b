"""Micro-benchmark: demand folded into the shared state, and read back.

In-process, with no cluster: the in-memory store, and the RADOS store on
tests/unit/fake_rbd.py's in-memory rados (through the real CephClient and
its thread pool, with the real page size and write batch). For each:

1. load: 100,000 images get one demand event each, spread over three
   daemons' writers, and are written (so every shard holds a third);
2. fold: 20,000 demand events on random images among them, random
   daemons, then one write per daemon: events/s counts both, and the
   in-memory part (``DemandWriter.add``) is shown alone too;
3. read: a fresh reader reads all totals (``read_demand``: every shard, in
   pages) and turns them into scores; the result is checked against one
   writer that saw every event (1e-9 relative).

Medians of ``--repeat`` runs.

  .venv/bin/python bench/state_bench.py [--images 100000] [--events 20000] [--repeat 3]
"""

from __future__ import annotations

import argparse
import asyncio
import concurrent.futures
import contextlib
import random
import resource
import statistics
import sys
import time
import uuid
from collections.abc import Iterator
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from tests.unit import fake_rbd  # noqa: E402
from warmer.ceph import bindings, client  # noqa: E402
from warmer.ceph.client import CephClient, ClusterConfig  # noqa: E402
from warmer.state import rados as rados_state  # noqa: E402
from warmer.state.demand import DemandWriter  # noqa: E402
from warmer.state.memory import MemoryStore  # noqa: E402
from warmer.state.rados import RadosStore  # noqa: E402
from warmer.state.store import StateStore  # noqa: E402

HALF_LIFE = 86400.0
DAEMONS = 3


@contextlib.contextmanager
def fake_rados() -> Iterator[None]:
    saved = [(m, m.modules) for m in (bindings, client, rados_state)]
    for module, _ in saved:
        module.modules = fake_rbd.modules  # type: ignore[assignment]
    try:
        yield
    finally:
        for module, original in saved:
            module.modules = original  # type: ignore[assignment]


def make(kind: str, executor: concurrent.futures.Executor) -> StateStore:
    if kind == "memory":
        return MemoryStore()
    fake_rbd.FakeCluster("bench.conf", "fsid-bench")
    return RadosStore(CephClient(ClusterConfig("bench.conf", "warmer"), executor),
                      "images", "warmer")


def reader_of(kind: str, store: StateStore, executor: concurrent.futures.Executor
              ) -> StateStore:
    if kind == "memory":
        return store  # one process: the same object
    # A second connection to the same (fake) cluster, as another daemon has.
    return RadosStore(CephClient(ClusterConfig("bench.conf", "warmer"), executor),
                      "images", "warmer")


async def one_run(kind: str, images: int, events: int, seed: int,
                  executor: concurrent.futures.Executor) -> dict[str, float]:
    rng = random.Random(seed)
    ids = [str(uuid.UUID(int=rng.getrandbits(128), version=4)) for _ in range(images)]
    now = time.time()
    store = make(kind, executor)
    writers = [DemandWriter(store, f"ctl-{n}", half_life=HALF_LIFE, flush_interval=5.0)
               for n in range(DAEMONS)]
    single = DemandWriter(MemoryStore(), "solo", half_life=HALF_LIFE, flush_interval=5.0)
    for w in [*writers, single]:
        await w.start()

    started = time.perf_counter()
    for n, image in enumerate(ids):
        at = now - rng.uniform(0, 3 * HALF_LIFE)
        writers[n % DAEMONS].add(image, 1.0, at)
        single.add(image, 1.0, at)
    for w in writers:
        await w.flush()
    load = time.perf_counter() - started

    stream = [(rng.choice(ids), rng.choice((1.0, 0.5)), now - rng.uniform(0, HALF_LIFE),
               rng.randrange(DAEMONS)) for _ in range(events)]
    started = time.perf_counter()
    for image, weight, at, daemon in stream:
        writers[daemon].add(image, weight, at)
    added = time.perf_counter() - started
    for w in writers:
        await w.flush()
    folded = time.perf_counter() - started
    for image, weight, at, _ in stream:
        single.add(image, weight, at)

    reader = reader_of(kind, store, executor)
    started = time.perf_counter()
    totals = await reader.read_demand(HALF_LIFE)
    scores = totals.scores(now)
    read = time.perf_counter() - started

    await single.flush()
    whole = (await single.store.read_demand(HALF_LIFE)).scores(now)
    assert len(scores) == images, (len(scores), images)
    worst = max(abs(scores[i] - whole[i]) / whole[i] for i in ids)
    assert worst <= 1e-9, worst
    return {"load_s": load, "add_per_s": events / added, "fold_per_s": events / folded,
            "fold_s": folded, "read_s": read, "worst_rel": worst}


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--images", type=int, default=100_000)
    parser.add_argument("--events", type=int, default=20_000)
    parser.add_argument("--repeat", type=int, default=3)
    args = parser.parse_args()
    executor = concurrent.futures.ThreadPoolExecutor(8, thread_name_prefix="ceph")
    print(f"{args.images} images, {args.events} events, {DAEMONS} daemons, "
          f"median of {args.repeat}")
    print(f"{'store':10} {'load':>8} {'add ev/s':>11} {'fold ev/s':>11} {'fold':>8} "
          f"{'read all':>9} {'worst rel':>10}")
    with fake_rados():
        for kind in ("memory", "rados"):
            runs = [asyncio.run(one_run(kind, args.images, args.events, seed, executor))
                    for seed in range(args.repeat)]

            def median(key: str, runs: list[dict[str, float]] = runs) -> float:
                return statistics.median(r[key] for r in runs)
            worst = max(r["worst_rel"] for r in runs)
            print(f"{kind if kind == 'memory' else 'fake-rados':10} "
                  f"{median('load_s'):7.2f}s {median('add_per_s'):11,.0f} "
                  f"{median('fold_per_s'):11,.0f} {median('fold_s'):7.3f}s "
                  f"{median('read_s'):8.3f}s {worst if worst else 0.0:10.1e}")
    executor.shutdown()
    rss = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024
    print(f"peak RSS of the whole run: {rss:.0f} MiB")
    return 0


if __name__ == "__main__":
    sys.exit(main())
