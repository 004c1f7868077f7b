"""Glance's stores, as ``GET /v2/info/stores/detail`` describes them.

Two uses:

* **Where copies go.** A target's copies live in the pool of that cluster's
  Glance RBD store, where Glance's own ``copy-image`` writes (DESIGN.md §4,
  invariant 7). The store's ``pool`` and ``fsid`` say which pool, and that
  the store really is the target's cluster.
* **Knowing the endpoint is right.** A 404 is not a delete (invariant 8):
  before warmer takes a 404 as "the image is gone", a known-good request
  must show that it talks to the right Glance. The stores answering with the
  targets' fsids is such a request: a proxy's 404 page, a wrong endpoint or
  another region's Glance cannot pass it.
"""

from __future__ import annotations

import logging
import time
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

from warmer.glance.client import GlanceClient

LOG = logging.getLogger(__name__)


@dataclass(frozen=True)
class Store:
    id: str
    type: str
    pool: str | None = None
    fsid: str | None = None


def parse_stores(raw: list[dict[str, Any]]) -> dict[str, Store]:
    stores = {}
    for item in raw:
        store_id, kind = item.get("id"), item.get("type")
        if not isinstance(store_id, str) or not isinstance(kind, str):
            continue
        props = item.get("properties")
        props = props if isinstance(props, dict) else {}
        pool, fsid = props.get("pool"), props.get("fsid")
        stores[store_id] = Store(store_id, kind, pool if isinstance(pool, str) else None,
                                 fsid if isinstance(fsid, str) else None)
    return stores


# A confirmed endpoint stays confirmed this long: a burst of 404s asks once.
_CONFIRMED_FOR = 30.0


class StoreCatalog:
    """Glance's stores, cached for ``ttl`` seconds. Raises GlanceUnavailable
    when Glance cannot be asked; ``None`` answers mean Glance does not
    offer the stores API (a single-store Glance, or no admin role)."""

    def __init__(self, glance: GlanceClient, *, ttl: float = 300.0,
                 clock: Callable[[], float] = time.monotonic) -> None:
        self._glance = glance
        self._ttl = ttl
        self._clock = clock
        self._stores: dict[str, Store] | None = None
        self._fetched_at = float("-inf")
        self._confirmed_at = float("-inf")

    async def stores(self, *, fresh: bool = False) -> dict[str, Store] | None:
        if fresh or self._clock() - self._fetched_at > self._ttl:
            raw = await self._glance.stores_detail()
            self._stores = None if raw is None else parse_stores(raw)
            self._fetched_at = self._clock()
        return self._stores

    async def store(self, store_id: str) -> Store | None:
        stores = await self.stores()
        return None if stores is None else stores.get(store_id)

    async def endpoint_is_right(self, expected: dict[str, str]) -> bool:
        """A known-good request: Glance lists each RBD store in ``expected``
        (store id -> cluster fsid) with that fsid. Without the stores API,
        an image listing in Glance's shape has to do."""
        now = self._clock()
        if now - self._confirmed_at < _CONFIRMED_FOR:
            return True
        stores = await self.stores(fresh=True)
        if stores is None:
            right = await self._glance.answers_image_list()
        else:
            right = any(s.type == "rbd" for s in stores.values())
            for store_id, fsid in expected.items():
                store = stores.get(store_id)
                if store is None or (store.fsid is not None and store.fsid != fsid):
                    LOG.error("Glance's store %s is %s, expected fsid %s: is [glance] "
                              "pointing at the right Glance?", store_id, store, fsid)
                    right = False
        if right:
            self._confirmed_at = now
        return right
