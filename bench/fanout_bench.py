"""Benchmark: fan-out, one image copied into several targets at once.

On the local stack (tools/stack), with the same 1 GiB RAW images in the
same run, central's snapshot copied into 4 targets, which are 4 extra pools
of the edge cluster (``fanbench-0`` .. ``fanbench-3``; the stack has two
clusters, and a target is a pool to write, so 4 pools of one cluster stand
for 4 sites):

* warmer fan-out x4: the daemon's own code (bench/fanout_one.py: Fanout,
  copy_into, one CephClient and thread pool per target), one read and one
  sha512 of the source, written into the 4 pools; also x2 and x1, for the
  RSS whatever the fan-out;
* warmer fan-out x4 of a verified snapshot: the same, for a snapshot an
  earlier copy hashed and recorded (verify each snapshot once): nothing
  hashed;
* warmer x4 without sharing (``fanout_wait = 0``): the 4 targets at once,
  each reading and hashing on its own, as the daemon did before fan-out;
* 4 x ``rbd export-diff - | rbd import-diff -`` (central -> edge), one
  after the other, into the same 4 pools: the issue's reference.

Images: "dense" (every byte random) and "sparse" (10% allocated: 1 MiB of
data every 10 MiB). Runs are round-robin, in a rotated order, repeated;
medians are reported. A warmer run is a fresh process: its RSS growth is
its own. Each run is a first copy (a new image id: hashed).

  .venv/bin/python bench/fanout_bench.py [--stack DIR] [--repeat 3] [--size-mib 1024]

With ``--stack``, the 4 pools are left in edge (the stack's monitor does
not allow removing pools); a stack the benchmark starts itself is stopped.
"""

from __future__ import annotations

import argparse
import json
import os
import resource
import statistics
import subprocess
import sys
import uuid
from pathlib import Path
from typing import Any

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "tools"))

import copy_bench  # bench/copy_bench.py: the same stack helpers
from copy_bench import (
    MiB,
    make_source,
    rbd_cmd,
    remove,
    timed_shell,
)
from stackclient import Stack, ceph

POOLS = [f"fanbench-{i}" for i in range(4)]
TOOLS = ("fan-out x4", "fan-out x2", "fan-out x1", "fan-out x4 verified", "no sharing x4",
         "4 x export-diff|import-diff")


def admin(stack: Stack, cluster: str, *args: str) -> str:
    return subprocess.run(["ceph", "--conf", stack.ceph_conf(cluster), "--name", "client.admin",
                           "--keyring", stack.keyring("admin", cluster), *args],
                          check=True, capture_output=True, text=True).stdout


def make_pools(stack: Stack) -> None:
    """The 4 target pools in edge, each written once (the first write into
    a fresh pool costs ~2 s once)."""
    existing = admin(stack, "edge", "osd", "pool", "ls").split()
    with ceph.connect(stack.ceph_conf("edge"), "admin", stack.keyring("admin", "edge")) as c:
        for pool in POOLS:
            if pool not in existing:
                admin(stack, "edge", "osd", "pool", "create", pool, "8")
                subprocess.run(f"{rbd_cmd(stack, 'edge')} pool init {pool}", shell=True,
                               check=True)
            name = f"warm-up-{uuid.uuid4().hex[:6]}"
            ceph.write_image(c, pool, name, os.urandom(8 * MiB), snapshot=None)
            ceph.remove(c, pool, name)


def ceph_cpu(stack: Stack) -> float:
    """CPU seconds the stack's Ceph daemons (mons and OSDs) used so far."""
    total = 0.0
    for line in (stack.dir / "pids").read_text().splitlines():
        name, pid = line.split()[:2]
        if name.startswith("ceph-"):
            fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
            total += (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")
    return total


def client_cpu() -> float:
    """CPU seconds of the processes this one ran and waited for, so far."""
    usage = resource.getrusage(resource.RUSAGE_CHILDREN)
    return usage.ru_utime + usage.ru_stime


def run_fanout(stack: Stack, source: str, sha: str, namespace: str, pools: list[str],
               wait: float, image_id: str | None = None,
               check: str = "verified") -> dict[str, Any]:
    """One fan-out run. A new ``image_id`` each time (the default) has no
    verified record: a first copy, hashed. ``check`` is how the copies
    must have been checked (else the run is not what it claims)."""
    image_id = image_id or str(uuid.uuid4())
    # As client.admin: warmer's user has no caps on the extra pools.
    result = copy_bench.run_one(
        stack, "fanout_one.py", "admin", "--source", source, "--image-id", image_id,
        "--sha512", sha, "--pools", ",".join(pools), "--wait", str(wait),
        "--state-namespace", namespace)
    for pool in pools:
        remove(stack, "edge", pool, image_id)
    expected_reads = 1 if wait > 0 else len(pools)
    if result["checks"] != [check] or result["reads"] != expected_reads:
        raise RuntimeError(f"not what the run claims: {result}")
    return result


def run_natives(stack: Stack, source: str, size: int) -> tuple[float, float]:
    """4 x export-diff | import-diff, one after the other: total seconds and
    the highest peak RSS of any of the 8 processes. The 4 copies are kept
    until all 4 are made, as a fan-out's are (a memstore OSD holding 4
    copies at once is not one holding one at a time)."""
    total, peak = 0.0, 0.0
    central, edge = rbd_cmd(stack, "central"), rbd_cmd(stack, "edge")
    t = "/usr/bin/time -a -o RSS -f"
    made = []
    for pool in POOLS:
        dst = f"bench-{uuid.uuid4().hex[:8]}"
        subprocess.run(f"{edge} create --size {size // MiB} {pool}/{dst}", shell=True,
                       check=True)
        made.append((pool, dst))
        seconds, peaks = timed_shell(
            f"{t} 'export-diff %M' {central} export-diff --no-progress images/{source}@snap - "
            f"| {t} 'import-diff %M' {edge} import-diff --no-progress - {pool}/{dst}")
        total += seconds
        peak = max(peak, *peaks.values())
    for pool, dst in made:
        remove(stack, "edge", pool, dst)
    return total, peak


def main() -> int:
    args = copy_bench.arguments(__doc__ or "")
    with copy_bench.bench_stack(args.stack) as stack:
        return run(stack, args)


def run(stack: Stack, args: argparse.Namespace) -> int:
    size = args.size_mib * MiB
    namespace = f"bench-{uuid.uuid4().hex[:8]}"
    results: dict[str, dict[str, Any]] = {}
    try:
        copy_bench.warm_up(stack)
        make_pools(stack)
        for kind, every in (("dense", 1), ("sparse", 10)):
            source = f"bench-src-{kind}-{uuid.uuid4().hex[:6]}"
            sha, allocated = make_source(stack, source, size, every)
            print(f"\n{kind}: {args.size_mib} MiB, {allocated // MiB} MiB allocated, "
                  f"into {len(POOLS)} pools of edge", flush=True)
            # Not measured: the edge OSD grows to hold 4 copies once (a
            # memstore OSD's first growth costs page faults, every tool's
            # later runs reuse that memory); and the snapshot is recorded as
            # verified under this id, for the "verified" runs.
            verified_id = str(uuid.uuid4())
            run_fanout(stack, source, sha, namespace, POOLS, 5.0, verified_id)
            seconds: dict[str, list[float]] = {t: [] for t in TOOLS}
            rss: dict[str, list[float]] = {t: [] for t in TOOLS}
            # CPU seconds per run: the copying processes', and Ceph's (2 cores
            # for everything: where the time goes when the CPU is the limit).
            cpu: dict[str, list[tuple[float, float]]] = {t: [] for t in TOOLS}
            for rep in range(args.repeat):
                for tool in TOOLS[rep % len(TOOLS):] + TOOLS[:rep % len(TOOLS)]:
                    before = client_cpu(), ceph_cpu(stack)
                    if tool.startswith("4 x"):
                        s, peak = run_natives(stack, source, size)
                        seconds[tool].append(s)
                        rss[tool].append(peak)
                    else:
                        n = int(tool.split(" x")[1][0])  # "fan-out x4 ..." -> 4
                        r = (run_fanout(stack, source, sha, namespace, POOLS[:n], 5.0,
                                        verified_id, "skipped_verified")
                             if tool.endswith("verified") else
                             run_fanout(stack, source, sha, namespace, POOLS[:n],
                                        0.0 if tool.startswith("no sharing") else 5.0))
                        seconds[tool].append(float(r["seconds"]))
                        rss[tool].append(float(r["rss_growth_mib"]))
                    # (includes removing the copies: the same for every tool)
                    cpu[tool].append((client_cpu() - before[0], ceph_cpu(stack) - before[1]))
            floor = statistics.median(seconds["4 x export-diff|import-diff"])
            rows: dict[str, Any] = {}
            for tool in TOOLS:
                median = statistics.median(seconds[tool])
                client = statistics.median(c for c, _ in cpu[tool])
                cluster = statistics.median(c for _, c in cpu[tool])
                rows[tool] = {"median_s": median, "runs_s": seconds[tool],
                              "rss_mib": max(rss[tool]), "ratio": median / floor,
                              "client_cpu_s": client, "ceph_cpu_s": cluster}
                what = "peak RSS" if tool.startswith("4 x") else "RSS growth"
                print(f"  {tool:28} median {median:6.2f} s  runs "
                      f"{', '.join(f'{s:.2f}' for s in seconds[tool])}  "
                      f"ratio {median / floor:.2f}x  {what} {max(rss[tool]):.0f} MiB  "
                      f"CPU {client:.1f} s client + {cluster:.1f} s Ceph", flush=True)
            results[kind] = rows
            remove(stack, "central", "images", source)
    finally:
        copy_bench.forget_records(stack, namespace)
    if args.json:
        args.json.write_text(json.dumps(results, indent=2) + "\n")
    return 0


if __name__ == "__main__":
    sys.exit(main())
