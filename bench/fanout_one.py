"""Copy one RBD snapshot into several pools with warmer's own fan-out (the
code the daemon runs: Fanout, copy_into, Writer, Verifier, CopyRecords,
OpenSnapshot, RbdSource, create_temp and finish), as the targets of one
evaluation do, and print a JSON line: seconds, each target's outcome, how
many reads of the source there were, and the RSS growth of this process.
Run by bench/fanout_bench.py in a fresh process each time, so that RSS is
measured cleanly.

Each destination pool is a target with its own CephClient and its own
thread pool (``[warming] ceph_threads``), as the daemon gives each target.
``--wait 0`` is fan-out off (each target reads and hashes on its own, all
at once: the daemon before fan-out)."""

from __future__ import annotations

import argparse
import asyncio
import concurrent.futures
import functools
import json
import resource
import time

from copy_one import rss_kib  # bench/copy_one.py, beside this script

from warmer import memory
from warmer.ceph import images as rbd_images
from warmer.ceph.client import CephClient, ClusterConfig
from warmer.events import ImageInfo
from warmer.state.rados import RadosStore
from warmer.state.store import SourceSnapshot
from warmer.warming.copy import CopyStats, RbdSource, Writer
from warmer.warming.fanout import Fanout, OpenedSource
from warmer.warming.records import CopyRecords


async def main(args: argparse.Namespace) -> dict[str, object]:
    src_pool = concurrent.futures.ThreadPoolExecutor(args.threads)
    src = CephClient(ClusterConfig(args.src_conf, "warmer", args.src_keyring), src_pool)
    await src.connect()
    dsts: list[tuple[str, CephClient]] = []
    for pool in args.pools.split(","):
        executor = concurrent.futures.ThreadPoolExecutor(args.threads)
        dst = CephClient(ClusterConfig(args.dst_conf, args.dst_user, args.dst_keyring), executor)
        await dst.connect()
        dsts.append((pool, dst))
    info = ImageInfo(id=args.image_id, status="active", disk_format="raw",
                     os_hash_algo="sha512", os_hash_value=args.sha512)
    records = None
    if args.state_namespace:
        records = CopyRecords(RadosStore(src, "images", args.state_namespace), "bench")
    opened: list[str] = []

    async def open_source() -> OpenedSource:
        handle = await src.run("open", lambda c: rbd_images.OpenSnapshot(
            c, "images", args.source, "snap"))
        source = await src.run("extents", lambda c: RbdSource.open(
            handle, src_pool, f"rbd images/{args.source}@snap", max(1, args.window // 2)))
        opened.append(source.description)
        return OpenedSource(source, SourceSnapshot(args.image_id, src.fsid or "", "images",
                                                   args.source, handle.snap_id, handle.rbd_id),
                            functools.partial(src.offload, handle.close))

    async def target(fanout: Fanout, pool: str, dst: CephClient) -> tuple[CopyStats, str]:
        source = await fanout.source(pool, open_source, records)
        handle = await dst.run("create", lambda c: rbd_images.create_temp(
            c, pool, args.image_id, source.size, "bench", "bench"))
        try:
            copied = await fanout.copy(pool, Writer(dst.guarded(handle.image.write),
                                                    dst.executor))
            await dst.run("finish", lambda c: rbd_images.finish(
                c, handle, pool, args.image_id, "bench", copied.stamp))
        finally:
            await dst.offload(handle.close)
        return copied.stats, copied.outcome

    rss_before = rss_kib()
    started = time.monotonic()
    async with Fanout(info, [p for p, _ in dsts], window=args.window, wait=args.wait) as fanout:
        done = await asyncio.gather(*(target(fanout, pool, dst) for pool, dst in dsts))
    seconds = time.monotonic() - started
    peak = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
    src.close()
    for _, dst in dsts:
        dst.close()
    return {"seconds": seconds, "targets": len(dsts), "reads": len(opened),
            "checks": sorted({outcome for _, outcome in done}),
            "fanout": [stats.fanout for stats, _ in done],
            "written": done[0][0].written, "rss_growth_mib": (peak - rss_before) / 1024}


if __name__ == "__main__":
    p = argparse.ArgumentParser()
    for name in ("src_conf", "src_keyring", "dst_conf", "dst_keyring", "source", "image_id",
                 "sha512", "pools"):
        p.add_argument(f"--{name.replace('_', '-')}", required=True)
    p.add_argument("--dst-user", default="admin")
    p.add_argument("--window", type=int, default=4)
    p.add_argument("--threads", type=int, default=8)
    p.add_argument("--wait", type=float, default=5.0, help="[warming] fanout_wait; 0: off")
    p.add_argument("--state-namespace", help="keep verified snapshots in the shared state")
    memory.pin_mmap_threshold()  # as warmer-daemon does
    print(json.dumps(asyncio.run(main(p.parse_args()))))
