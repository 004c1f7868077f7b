"""Removing a temporary image that this very connection still writes, on
the real stack's edge cluster. Removal breaks the writer's exclusive lock
(librbd blocklists that client instance), which is right for a writer that
died or lost its lease; librbd refuses it for its own instance (EINVAL),
and that error used to stop a clean-up's pass over its other entries. Now
it is "still in use", and the connection keeps working."""

from __future__ import annotations

import asyncio
import concurrent.futures
import uuid
from collections.abc import Iterator

import pytest
from stackclient import Stack

from warmer.ceph import images as rbd_images
from warmer.ceph.client import CephClient, ClusterConfig

POOL = "images"


@pytest.fixture
def client(stack: Stack) -> Iterator[CephClient]:
    executor = concurrent.futures.ThreadPoolExecutor(4)
    c = CephClient(ClusterConfig(stack.ceph_conf("edge"), "warmer",
                                 stack.keyring("warmer", "edge"), 10, 10, 10), executor)
    yield c
    executor.shutdown(wait=True)
    c.close()


def test_removing_a_temporary_image_this_connection_writes_says_in_use(
        client: CephClient) -> None:
    image_id = str(uuid.uuid4())

    async def scenario() -> None:
        handle = await client.run("create", lambda c: rbd_images.create_temp(
            c, POOL, image_id, 4 << 20, "test", "fencing-test"))
        try:
            # The first write takes the image's exclusive lock.
            await client.offload(lambda: handle.image.write(b"x" * 4096, 0))
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
