#!/usr/bin/env python3
"""How warmer's in-memory model scales with the catalogue (issue 7), in-process.

What it measures, with N tracked images (default 100,000):

* intake: 20,000 Cinder ``volume.create.end`` events folded into the
  tracker (parse excluded: the bus bridge's cost is bench/intake work), the
  same path the bus hand-off runs on the event loop;
* planning: one pass deciding, for every image, whether it is wanted
  (``Tracker.verdicts``; today's verdicts are global, the same for every
  target, so the number of targets does not change it yet);
* one evaluation's verdict (``Tracker.verdict``) with N images tracked;
* the process's peak RSS.

No Ceph and no Glance: this is the model's own cost. Goals from issue 7:
planning pass <= 1 s, RSS <= 300 MiB, >= 20k events/s with 100k images.

    .venv/bin/python bench/scale_bench.py [--images N] [--targets T] [--events E]
"""

from __future__ import annotations

import argparse
import datetime as dt
import json
import resource
import time
import uuid

from warmer.events import ImageInfo, VolumeCreatedFromImage
from warmer.popularity import Policy
from warmer.tracker import Tracker, Weights


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--images", type=int, default=100_000)
    parser.add_argument("--targets", type=int, default=20)
    parser.add_argument("--events", type=int, default=20_000)
    parser.add_argument("--top-k", type=int, default=0)
    args = parser.parse_args()

    tracker = Tracker(half_life=3600, weights=Weights(), policy=Policy(), threshold=2.0,
                      top_k=args.top_k, dedup_window=100_000)
    ids = [str(uuid.uuid4()) for _ in range(args.images)]
    started = time.perf_counter()
    for image_id in ids:
        tracker.observe(ImageInfo(image_id, "active", "raw", 1 << 30, "public"),
                        authoritative=True)
    load = time.perf_counter() - started

    now = dt.datetime.now(dt.UTC)
    events = [VolumeCreatedFromImage(str(uuid.uuid4()), ids[(i * 7919) % len(ids)], "h@b#p",
                                     "raw", 1 << 30, now) for i in range(args.events)]
    started = time.perf_counter()
    for event in events:
        tracker.apply(event)
    intake = time.perf_counter() - started

    clock = time.time()
    started = time.perf_counter()
    verdicts = tracker.verdicts(clock)
    one_pass = time.perf_counter() - started
    wanted = sum(1 for v in verdicts.values() if v.wanted)

    samples = 20
    started = time.perf_counter()
    for image_id in ids[:samples]:
        tracker.verdict(image_id, clock)
    one_verdict = (time.perf_counter() - started) / samples

    result = {
        "images": args.images, "targets": args.targets, "events": args.events,
        "top_k": args.top_k, "wanted": wanted,
        "load_seconds": round(load, 3),
        "intake_events_per_second": round(args.events / intake),
        "planning_pass_seconds": round(one_pass, 3),
        "one_verdict_seconds": round(one_verdict, 4),
        # Today every evaluation computes verdicts anew: a reconciliation
        # that evaluates every image costs images x one verdict.
        "reconciliation_estimate_seconds": round(one_verdict * args.images, 1),
        "peak_rss_mib": round(resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024),
    }
    print(json.dumps(result, indent=2))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
