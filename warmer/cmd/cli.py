"""``warmer``: the operator's CLI, a thin client of the daemon's admin API.

  warmer [--url URL] status          every tracked image, one line each
  warmer [--url URL] show IMAGE_ID   one image, in full (JSON)
  warmer [--url URL] evaluate IMAGE_ID
                                      ask the daemon to evaluate it now
"""

from __future__ import annotations

import argparse
import json
import sys
import urllib.error
import urllib.request
from typing import Any

DEFAULT_URL = "http://127.0.0.1:9797"


def _call(url: str, method: str = "GET") -> Any:
    req = urllib.request.Request(url, method=method, data=b"" if method == "POST" else None)
    with urllib.request.urlopen(req, timeout=10) as resp:
        return json.load(resp)


def _status_lines(images: list[dict[str, Any]]) -> list[str]:
    lines = [f"{'IMAGE':36}  {'FORMAT':6}  {'SCORE':>7}  {'WANTED':25}  TARGET STATES"]
    for img in images:
        wanted = ("yes: " if img["wanted"] else "no: ") + img["why"]
        states = ", ".join(f"{t['target']}={t['state']}({t['reason']})"
                           for t in img["targets"]) or "-"
        lines.append(f"{img['id']:36}  {img['disk_format'] or '?':6}  {img['score']:7.2f}  "
                     f"{wanted:25}  {states}")
    return lines


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="warmer", description=__doc__,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--url", default=DEFAULT_URL, help="the daemon's HTTP endpoint")
    sub = parser.add_subparsers(dest="command", required=True)
    sub.add_parser("status")
    for name in ("show", "evaluate"):
        sub.add_parser(name).add_argument("image_id")
    args = parser.parse_args(argv)
    base = args.url.rstrip("/")
    try:
        if args.command == "status":
            print("\n".join(_status_lines(_call(f"{base}/v1/images")["images"])))
        elif args.command == "show":
            print(json.dumps(_call(f"{base}/v1/images/{args.image_id}"), indent=2))
        else:
            print(json.dumps(_call(f"{base}/v1/images/{args.image_id}/evaluate", "POST")))
    except urllib.error.HTTPError as exc:
        print(f"warmer: {exc.code} {exc.read().decode().strip()}", file=sys.stderr)
        return 1
    except (urllib.error.URLError, OSError) as exc:
        print(f"warmer: cannot reach the daemon at {base}: {exc}", file=sys.stderr)
        return 2
    return 0


if __name__ == "__main__":
    sys.exit(main())
