"""The operator's commands of the ``warmer`` CLI (issue 8):

  warmer warm IMAGE_ID [--target T] [--wait [--timeout S]]
                        warm now, whatever the score (eligibility and budgets
                        still apply); --wait shows the copy's progress and
                        ends warm (exit 0) or with the final state and its
                        reason (exit 1)
  warmer pin IMAGE_ID [--reason TEXT]
                        wanted in every target by every daemon of the fleet
  warmer unpin IMAGE_ID
  warmer evict IMAGE_ID --target T
                        take warmer's copy out of T now (never one with
                        clones), and hold it out until new demand

Each talks to the daemon's admin API (``/v1/images/{id}/warm``, ``/pin``,
``/evict``); what they mean is in :mod:`warmer.warming.operator` and the
README. Every failure is one line on stderr and a non-zero exit: 1 when the
daemon refused or the image did not end warm, 2 when the daemon could not
be reached.
"""

from __future__ import annotations

import argparse
import sys
import time
import urllib.parse
from collections.abc import Callable
from typing import Any, Protocol

POLL_INTERVAL = 0.5  # seconds between two looks at the image while --wait
BAR_WIDTH = 24
MiB = 1 << 20
COMMANDS = frozenset({"warm", "pin", "unpin", "evict"})


class OpsFailure(Exception):
    """One line for stderr, and the exit code."""

    def __init__(self, message: str, code: int = 1) -> None:
        super().__init__(message)
        self.code = code


class Daemon(Protocol):
    def call(self, path: str, method: str = "GET") -> Any: ...


def add_commands(sub: Any) -> None:
    """Add the operator's subcommands to the CLI's subparsers."""
    warm = sub.add_parser("warm", help="warm an image now, whatever its score")
    warm.add_argument("image_id")
    warm.add_argument("--target", help="only this target (default: every target)")
    warm.add_argument("--wait", action="store_true",
                      help="show progress; exit 0 once warm, 1 with the reason otherwise")
    warm.add_argument("--timeout", type=float, default=3600.0,
                      help="seconds --wait waits at most (default 3600)")
    pin = sub.add_parser("pin", help="keep an image warm in every target, fleet-wide")
    pin.add_argument("image_id")
    pin.add_argument("--reason", default="", help="why, for the record")
    sub.add_parser("unpin", help="remove a pin set with 'warmer pin'").add_argument("image_id")
    evict = sub.add_parser("evict", help="take warmer's copy out of one target now")
    evict.add_argument("image_id")
    evict.add_argument("--target", required=True, help="the target to evict it from")


def progress_bar(done: int, size: int, width: int = BAR_WIDTH) -> str:
    """``[#########...............]  37%  12.0/32.0 MiB``"""
    fraction = min(max(done / size, 0.0), 1.0) if size > 0 else 0.0
    filled = int(fraction * width)
    return (f"[{'#' * filled}{'.' * (width - filled)}] {fraction * 100:3.0f}%  "
            f"{done / MiB:.1f}/{size / MiB:.1f} MiB")


def _image_path(image_id: str, action: str = "", **query: str) -> str:
    path = f"/v1/images/{urllib.parse.quote(image_id, safe='')}"
    if action:
        path += f"/{action}"
    if query:
        path += "?" + urllib.parse.urlencode(query)
    return path


def run(args: argparse.Namespace, daemon: Daemon,
        out: Callable[[str], None] = print) -> int:
    """Run one of :data:`COMMANDS`; raises :class:`OpsFailure` (or the
    CLI's own error, from ``daemon.call``)."""
    if args.command == "warm":
        return warm(daemon, args.image_id, args.target, args.wait, args.timeout, out)
    if args.command == "pin":
        query = {"reason": args.reason} if args.reason else {}
        answer = daemon.call(_image_path(args.image_id, "pin", **query), "PUT")
        line = f"pinned {args.image_id} (fleet-wide, by {answer.get('by')})"
        why = answer.get("ineligible_reason")
        if why:
            line += f"; not eligible now ({why}): warmed once it is"
        out(line)
    elif args.command == "unpin":
        daemon.call(_image_path(args.image_id, "pin"), "DELETE")
        out(f"unpinned {args.image_id}")
    else:
        daemon.call(_image_path(args.image_id, "evict", target=args.target), "POST")
        out(f"evicted {args.image_id} from {args.target} (held out until new demand)")
    return 0


def warm(daemon: Daemon, image_id: str, target: str | None, wait: bool, timeout: float,
         out: Callable[[str], None] = print) -> int:
    query = {"target": target} if target else {}
    request = daemon.call(_image_path(image_id, "warm", **query), "POST")
    targets = list(request["targets"])
    if not wait:
        out(f"warming {image_id} in {', '.join(targets)} (queued)")
        return 0
    deadline = time.monotonic() + timeout
    shown: dict[str, int] = {}
    tty = sys.stdout.isatty()
    while True:
        view = daemon.call(_image_path(image_id))
        for name, copy in sorted((view.get("copying") or {}).items()):
            if name not in targets:
                continue
            done, size = copy["done_bytes"], copy["size_bytes"]
            cells = done * BAR_WIDTH // size if size > 0 else 0
            if shown.get(name) == cells:
                continue  # shown once per cell of the bar
            shown[name] = cells
            bar = f"{name}: copying {progress_bar(done, size)}"
            if tty:
                sys.stdout.write("\r" + bar)
                sys.stdout.flush()
            else:
                out(bar)
        answered = view.get("warm_request")
        if answered and answered["at"] >= request["at"] and answered["done_at"] is not None:
            break
        if time.monotonic() >= deadline:
            raise OpsFailure(f"image {image_id}: not answered within {timeout:.0f}s "
                             "(still queued or copying; see 'warmer status')")
        time.sleep(POLL_INTERVAL)
    if tty and shown:
        sys.stdout.write("\n")
    rows = {row["target"]: row for row in view["targets"]}
    cold = []
    for name in targets:
        row = rows.get(name)
        if row is None or row["state"] != "warm":
            cold.append(f"{name}={row['state']}({row['reason']})" if row else f"{name}=unknown")
    if cold:
        raise OpsFailure(f"image {image_id} is not warm: {', '.join(cold)}")
    out(f"{image_id} is warm in {', '.join(targets)}")
    return 0


def target_states(image: dict[str, Any]) -> str:
    """The TARGET STATES column of ``warmer status``: copies under way as
    progress bars."""
    copying = image.get("copying") or {}
    parts = []
    for t in image["targets"]:
        copy = copying.get(t["target"])
        if copy is not None:
            parts.append(f"{t['target']}=copying "
                         f"{progress_bar(copy['done_bytes'], copy['size_bytes'])}")
        else:
            parts.append(f"{t['target']}={t['state']}({t['reason']})")
    return ", ".join(parts) or "-"
