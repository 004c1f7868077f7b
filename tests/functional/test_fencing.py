"""warmer never fences itself, on the real stack's edge cluster: removing a
temporary image breaks its writer's exclusive lock (librbd then blocklists
that writer), which is right for a writer that died or lost its lease, and
fatal when the writer is this very process: every connection of the
daemon to that cluster would be cut, leases and leadership included."""

from __future__ import annotations

import asyncio
import concurrent.futures
import uuid
from collections.abc import Iterator

import pytest
from stackclient import Stack

from warmer.ceph import images as rbd_images
from warmer.ceph.client import CephClient, ClusterConfig, own_addresses

POOL = "images"


@pytest.fixture
def client(stack: Stack) -> Iterator[CephClient]:
    executor = concurrent.futures.ThreadPoolExecutor(4)
    c = CephClient(ClusterConfig(stack.ceph_conf("edge"), "warmer",
                                 stack.keyring("warmer", "edge"), 10, 10, 10), executor)
    yield c
    executor.shutdown(wait=True)
    c.close()


def test_removing_a_temporary_image_this_process_writes_never_fences_it(
        client: CephClient) -> None:
    image_id = str(uuid.uuid4())

    async def scenario() -> None:
        handle = await client.run("create", lambda c: rbd_images.create_temp(
            c, POOL, image_id, 4 << 20, "test", "fencing-test"))
        try:
            # The first write takes the image's exclusive lock.
            await client.offload(lambda: handle.image.write(b"x" * 4096, 0))
            assert own_addresses(), "the connection's address is known"
            removed = await client.run("remove_temp", lambda c: rbd_images.remove_temp(
                c, POOL, image_id))
            assert removed is False  # ours: left alone
            # Not blocklisted: the same handle and connection still work.
            await client.offload(lambda: handle.image.write(b"y" * 4096, 4096))
            await client.probe(POOL)
        finally:
            await client.offload(handle.close)
        # Closed: nothing of ours holds it any more, and it goes.
        assert await client.run("remove_temp", lambda c: rbd_images.remove_temp(
            c, POOL, image_id)) is True
        await client.run("release", lambda c: rbd_images.release(c, POOL, image_id))

    asyncio.run(scenario())
