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
  messages that were not requeued is appended to PATH, one line each.

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


def _install(faults: dict[str, Any]) -> None:
    from warmer.bus import listener

    runs: list[int] = []
    real_run = listener.Bridge._run

    def run(self: listener.Bridge, job: Any) -> None:
        runs.append(1)
        first = len(runs) == 1
        if first and "block_handoff" in faults:
            Path(faults["marker"]).write_text(str(len(job.batch)))
            time.sleep(faults["block_handoff"])
        real_run(self, job)
        if "folded" in faults and job.started:
            with open(faults["folded"], "a") as out:
                out.write(f"{sum(o != listener.REQUEUE for o in job.outcomes)}\n")
        if first and "stall_loop" in faults:
            asyncio.get_running_loop().call_soon(_stall, faults["stall_loop"],
                                                 faults["marker"])

    listener.Bridge._run = run  # type: ignore[method-assign]

    if "fail_dispatch" in faults:
        real_prepare = listener.prepare_batch
        calls: list[int] = []

        def prepare_batch(*args: Any) -> Any:
            calls.append(1)
            if len(calls) <= faults["fail_dispatch"]:
                raise RuntimeError("injected fault: the hand-off failed")
            return real_prepare(*args)

        listener.prepare_batch = prepare_batch


_spec = os.environ.get("WARMER_TEST_FAULTS")
if _spec:
    _install(json.loads(_spec))
