"""Faults for warmer-daemon in functional tests, and nothing else.

Python imports this module at start-up when its directory is on
``PYTHONPATH`` (tests/functional/test_bus_acks.py puts it there for the
daemons it starts). ``WARMER_TEST_FAULTS`` (JSON) says which faults:

* ``"stall_loop": S``: right after the first batch is folded, the event loop
  is blocked for S seconds, so the hand-offs that follow cannot start;
* ``"block_handoff": S``: the first hand-off blocks the loop for S seconds
  before it starts folding; the size of that batch is written first to the
  file ``"marker"`` names;
* ``"fail_dispatch": N``: the first N batches raise in the hand-off;
* ``"folded": PATH``: after each batch the loop folded, the number of its
  messages that were not requeued is appended to PATH, one line each;
* ``"bad_ack_at": N``: the hand-off that brings the notifications handed
  off to N or more has the broker close the consumer channel: once that
  batch is submitted, the consumer thread acks :data:`BAD_TAG`, a delivery
  tag the broker never issued on the channel, and RabbitMQ closes it with
  406 PRECONDITION_FAILED "unknown delivery tag". The loop holds that batch
  for ``"hold_fold"`` seconds (default 0) before folding it, so that it is
  still on the loop when the consumer thread reads the broker's close and
  py-amqp reopens the channel in place. The last delivery tag of the batch
  is written first to the file ``"marker"`` names, and `` released`` is
  appended to it once the loop stops holding the batch.

Without ``WARMER_TEST_FAULTS`` it does nothing.
"""

from __future__ import annotations

import asyncio
import json
import os
import time
from pathlib import Path
from typing import Any


def _stall(seconds: float, marker: str) -> None:
    Path(marker).write_text("stalled")
    time.sleep(seconds)


#: The delivery tag of ``bad_ack_at``: a billion deliveries on one channel
#: would be needed for the broker to have issued it.
BAD_TAG = 999_999_999


def _install(faults: dict[str, Any]) -> None:
    from warmer.bus import listener

    runs: list[int] = []
    real_run = listener.Bridge._run

    held: list[list[Any]] = []  # the events of the batch bad_ack_at holds

    def run(self: listener.Bridge, job: Any) -> None:
        runs.append(1)
        first = len(runs) == 1
        if first and "block_handoff" in faults:
            Path(faults["marker"]).write_text(str(len(job.batch)))
            time.sleep(faults["block_handoff"])
        if held and job.batch is held[0]:
            time.sleep(faults.get("hold_fold", 0))
            with open(faults["marker"], "a") as out:
                out.write(" released")
        real_run(self, job)
        if "folded" in faults and job.started:
            with open(faults["folded"], "a") as out:
                out.write(f"{sum(o != listener.REQUEUE for o in job.outcomes)}\n")
        if first and "stall_loop" in faults:
            asyncio.get_running_loop().call_soon(_stall, faults["stall_loop"],
                                                 faults["marker"])

    listener.Bridge._run = run  # type: ignore[method-assign]

    if "bad_ack_at" in faults:
        _bad_ack_at(listener, faults, held)

    if "fail_dispatch" in faults:
        real_prepare = listener.prepare_batch
        calls: list[int] = []

        def prepare_batch(*args: Any) -> Any:
            calls.append(1)
            if len(calls) <= faults["fail_dispatch"]:
                raise RuntimeError("injected fault: the hand-off failed")
            return real_prepare(*args)

        listener.prepare_batch = prepare_batch


def _bad_ack_at(listener: Any, faults: dict[str, Any], held: list[list[Any]]) -> None:
    """Both halves run in the consumer thread, the only one that uses the
    channel: :meth:`BusListener._hand_off` decides, :meth:`Bridge.submit`
    marks the batch for the loop to hold before the loop can see it."""
    handed: list[int] = []
    arming: list[bool] = []
    real_hand_off = listener.BusListener._hand_off
    real_submit = listener.Bridge.submit

    def submit(self: Any, batch: Any) -> None:
        if arming:
            held.append(batch.events)
        real_submit(self, batch)

    def hand_off(self: Any) -> None:
        size = min(len(self._pending), self._batch)
        fire = not held and sum(handed) + size >= faults["bad_ack_at"]
        handed.append(size)
        if fire:
            arming.append(True)
        try:
            real_hand_off(self)
        finally:
            arming.clear()
        if fire and held and self._inflight is not None:
            Path(faults["marker"]).write_text(str(self._inflight.messages[-1].delivery_tag))
            self._conn.channel.basic_ack(BAD_TAG)

    listener.Bridge.submit = submit
    listener.BusListener._hand_off = hand_off


_spec = os.environ.get("WARMER_TEST_FAULTS")
if _spec:
    _install(json.loads(_spec))
