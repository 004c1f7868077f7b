"""The copy pipeline when a write fails in the middle of a copy (a target
OSD timing out, then coming back): the copy must fail, never finish with a
chunk missing. Its hash covers what was read, not what was written, so a
lost write would otherwise be verified and published."""

from __future__ import annotations

import asyncio
import concurrent.futures
import hashlib
import os
import time

import pytest

from tests.unit.test_copy import CH, ListSource, expected_bytes, image_for
from warmer.warming.copy import Verifier, copy


class Timeout(Exception):
    """Stands for rbd.Timeout: one write timed out, the next ones worked."""


@pytest.mark.parametrize("window", [1, 2, 4])
@pytest.mark.parametrize("failing_chunk", [0, 1, 5])
def test_one_failed_write_in_the_middle_fails_the_whole_copy(window: int,
                                                             failing_chunk: int) -> None:
    chunks: list[bytes | None] = [os.urandom(CH) for _ in range(8)]
    written: dict[int, bytes] = {}

    def write(data: bytes, offset: int) -> int:
        time.sleep(0.005)
        if offset == failing_chunk * CH:
            raise Timeout("error writing: RBD operation timeout")
        written[offset] = data
        return len(data)

    verifier = Verifier(image_for(expected_bytes(chunks)))

    async def go() -> None:
        with concurrent.futures.ThreadPoolExecutor(4) as pool:
            await copy(ListSource(chunks), write, verifier, pool, window=window,
                       chunk_size=CH)
    with pytest.raises(Timeout):
        asyncio.run(go())
    assert failing_chunk * CH not in written


def test_a_completed_copy_has_every_chunk_written() -> None:
    """The positive half: when copy() returns, what was written hashes to
    what Glance recorded."""
    chunks: list[bytes | None] = [os.urandom(CH) for _ in range(8)]
    written: dict[int, bytes] = {}

    def write(data: bytes, offset: int) -> int:
        time.sleep(0.002)
        written[offset] = data
        return len(data)

    info = image_for(expected_bytes(chunks))

    async def go() -> None:
        with concurrent.futures.ThreadPoolExecutor(4) as pool:
            await copy(ListSource(chunks), write, Verifier(info), pool, window=2,
                       chunk_size=CH)
    asyncio.run(go())
    rebuilt = b"".join(written[i * CH] for i in range(len(chunks)))
    assert hashlib.sha512(rebuilt).hexdigest() == info.os_hash_value


def test_a_step_that_must_run_to_its_end_outlives_a_cancellation() -> None:
    """The copy's finish step uses the open image on a thread: a stop that
    cancels the copy meanwhile waits for it, and only then is cancelled
    (the clean-up that follows closes that image)."""
    from warmer.warming.target import _to_the_end
    events: list[str] = []

    async def step() -> str:
        await asyncio.sleep(0.2)
        events.append("step ended")
        return "done"

    async def scenario() -> None:
        async def copy_task() -> None:
            try:
                await _to_the_end(step())
            except asyncio.CancelledError:
                events.append("cancelled")
                raise
        task = asyncio.create_task(copy_task())
        await asyncio.sleep(0.05)
        task.cancel()
        with pytest.raises(asyncio.CancelledError):
            await task
    asyncio.run(scenario())
    assert events == ["step ended", "cancelled"]
