#!/usr/bin/env python3
"""How warmer's in-memory model scales with the catalogue (issue 7), in-process.

What it measures, with N tracked images (default 100,000) and T sites
(default 20, one per target):

* load: N images observed (eligible), each with one demand event in one or
  two sites, so that every site's ranking holds images;
* intake: E more Cinder ``volume.create.end`` events (default 100,000)
  folded into the tracker, each counting in one or two sites, on a skewed
  choice of images (a few hot, most cold), timestamps out of order over
  the last six hours (``--every-site``: in every site, the worst case, one
  placement per site and event). Parsing is excluded (the bus bridge's cost is
  bench/intake work): this is the path the bus hand-off runs on the loop;
* planning: one pass computing the wanted set of every site
  (``Tracker.wanted``);
* one evaluation's verdict (``Tracker.verdict``) with N images tracked;
* the peak RSS after those (the model's), and at the end (with the
  reference passes below);
* a sweep of cold images (O(N), periodic, not per event).

The reference, in the same run: the batch rule over all images
(``Tracker.verdicts``: every image scored, then ``decide()`` sorts them),
which is what one ``Tracker.verdict`` cost before the wanted sets were kept
incrementally, and what a planning pass would cost that way, once per
site.

No Ceph and no Glance: this is the model's own cost. Goals from issue 7:
planning pass <= 1 s, RSS <= 300 MiB, >= 20k events/s with 100k images.

    .venv/bin/python bench/scale_bench.py [--images N] [--targets T] [--events E]
"""

from __future__ import annotations

import argparse
import datetime as dt
import json
import random
import resource
import time
import uuid

from warmer.events import ImageInfo, VolumeCreatedFromImage
from warmer.popularity import Policy
from warmer.tracker import Tracker, Weights

HALF_LIFE = 86400.0  # [popularity] half_life's default


def peak_rss_mib() -> int:
    return round(resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024)


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--images", type=int, default=100_000)
    parser.add_argument("--targets", type=int, default=20)
    parser.add_argument("--events", type=int, default=100_000)
    # [popularity]'s defaults.
    parser.add_argument("--top-k", type=int, default=20)
    parser.add_argument("--threshold", type=float, default=3.0)
    parser.add_argument("--pinned", type=int, default=100)
    parser.add_argument("--seed", type=int, default=1)
    parser.add_argument("--every-site", action="store_true",
                        help="intake events count in every site (sites=None), the worst case")
    args = parser.parse_args()

    rng = random.Random(args.seed)
    sites = [f"site-{n:02d}" for n in range(args.targets)]
    tracker = Tracker(half_life=HALF_LIFE, weights=Weights(), policy=Policy(),
                      threshold=args.threshold, top_k=args.top_k, dedup_window=100_000,
                      sites=sites)
    ids = [str(uuid.uuid4()) for _ in range(args.images)]
    clock = time.time()

    def demand(image_id: str) -> tuple[VolumeCreatedFromImage, list[str]]:
        when = dt.datetime.fromtimestamp(clock - rng.uniform(0, 6 * 3600), dt.UTC)
        event = VolumeCreatedFromImage(str(uuid.uuid4()), image_id, "h@b#p", "raw",
                                       1 << 30, when)
        return event, rng.sample(sites, rng.randint(1, 2))

    started = time.perf_counter()
    for n, image_id in enumerate(ids):
        tags = frozenset({"warmer-pin"}) if n < args.pinned else frozenset()
        tracker.observe(ImageInfo(image_id, "active", "raw", 1 << 30, "public", tags=tags),
                        authoritative=True)
        event, where = demand(image_id)
        tracker.apply(event, sites=where)
    load = time.perf_counter() - started

    # Skewed: the lowest indexes are hot, most images get little or nothing.
    # Built in chunks, outside the timing, so that the benchmark's own
    # events do not weigh on the peak RSS.
    intake = 0.0
    for start in range(0, args.events, 10_000):
        events = [demand(ids[int(len(ids) * rng.random() ** 4)])
                  for _ in range(min(10_000, args.events - start))]
        started = time.perf_counter()
        for event, where in events:
            tracker.apply(event, sites=None if args.every_site else where)
        intake += time.perf_counter() - started
    del events

    started = time.perf_counter()
    wanted = {site: tracker.wanted(site, clock) for site in sites}
    one_pass = time.perf_counter() - started

    samples = 1000
    started = time.perf_counter()
    for n in range(samples):
        tracker.verdict(ids[n * 97 % len(ids)], clock, sites[n % len(sites)])
    one_verdict = (time.perf_counter() - started) / samples
    model_rss = peak_rss_mib()

    # The reference: the batch rule, as every verdict was computed before.
    reference_samples = 3
    started = time.perf_counter()
    for n in range(reference_samples):
        verdicts = tracker.verdicts(clock, sites[n])
    reference_verdict = (time.perf_counter() - started) / reference_samples
    for site in sites[:reference_samples]:
        batch = {i for i, v in tracker.verdicts(clock, site).items() if v.wanted}
        assert batch == set(wanted[site]), f"{site}: the wanted sets differ"
    del verdicts

    started = time.perf_counter()
    dropped = tracker.sweep(clock, 0.001, keep=lambda image_id: False)
    sweep = time.perf_counter() - started

    sizes = sorted(len(w) for w in wanted.values())
    result = {
        "images": args.images, "targets": args.targets, "events": args.events,
        "top_k": args.top_k, "threshold": args.threshold, "pinned": args.pinned,
        "sites_per_event": "all" if args.every_site else "1-2",
        "wanted_per_site_min_median_max": [sizes[0], sizes[len(sizes) // 2], sizes[-1]],
        "load_seconds": round(load, 3),
        "intake_events_per_second": round(args.events / intake),
        "planning_pass_seconds": round(one_pass, 4),
        "one_verdict_seconds": round(one_verdict, 7),
        "reconciliation_verdicts_seconds": round(one_verdict * args.images, 2),
        "peak_rss_mib_model": model_rss,
        "reference_one_verdict_seconds": round(reference_verdict, 4),
        "reference_planning_pass_seconds": round(reference_verdict * args.targets, 2),
        "verdict_speedup": round(reference_verdict / one_verdict),
        "sweep_seconds": round(sweep, 3), "swept": dropped,
        "peak_rss_mib_end": peak_rss_mib(),
    }
    print(json.dumps(result, indent=2))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
