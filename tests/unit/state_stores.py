"""Both state stores, ready for a test: the in-memory one, and the RADOS one
on tests/unit/fake_rbd.py's in-memory rados through the real CephClient.
Also a store wrapper that fails writes on demand, before or after applying
them (a timeout after the OSD committed)."""

from __future__ import annotations

import concurrent.futures
import contextlib
from collections.abc import Collection, Iterator, Mapping
from typing import Any

import pytest

from tests.unit import fake_rbd
from tests.unit.fake_rbd import FakeCluster
from warmer.ceph import bindings, client
from warmer.ceph.client import CephClient, ClusterConfig
from warmer.state import rados as rados_state
from warmer.state.memory import MemoryStore
from warmer.state.rados import RadosStore
from warmer.state.store import Contribution, StateStore, StateUnavailable

STORES = ["memory", "rados"]
STATE_CONF = "state.conf"


@contextlib.contextmanager
def fake_rados_modules() -> Iterator[None]:
    with pytest.MonkeyPatch.context() as mp:
        for module in (bindings, client, rados_state):
            mp.setattr(module, "modules", fake_rbd.modules)
        yield


def make_store(kind: str, executor: concurrent.futures.Executor, *, page_size: int = 7,
               write_batch: int = 5, namespace: str = "warmer") -> StateStore:
    """A fresh, empty store. Small pages and batches, so that every read
    and write of a few keys already goes in several steps."""
    if kind == "memory":
        return MemoryStore()
    FakeCluster(STATE_CONF, "fsid-state")
    ceph = CephClient(ClusterConfig(STATE_CONF, "warmer"), executor)
    return RadosStore(ceph, "images", namespace, page_size=page_size, write_batch=write_batch)


class FlakyStore:
    """Passes everything to ``inner``, except that ``write_shard`` fails
    while ``fail`` holds modes: ``before`` (nothing applied) or ``after``
    (applied, then the reply is lost)."""

    def __init__(self, inner: StateStore) -> None:
        self.inner = inner
        self.fail: list[str] = []

    async def write_shard(self, daemon: str, instance: str, put: Mapping[str, Contribution],
                          remove: Collection[str]) -> None:
        mode = self.fail.pop(0) if self.fail else "ok"
        if mode == "before":
            raise StateUnavailable("injected: not applied")
        await self.inner.write_shard(daemon, instance, put, remove)
        if mode == "after":
            raise StateUnavailable("injected: applied, reply lost")

    def __getattr__(self, name: str) -> Any:
        return getattr(self.inner, name)


class Clock:
    """A clock that says what the test sets (``now``)."""

    def __init__(self, now: float) -> None:
        self.now = now

    def __call__(self) -> float:
        return self.now
