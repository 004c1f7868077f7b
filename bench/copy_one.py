"""Copy one RBD snapshot into another cluster with warmer's own pipeline
(the code the daemon runs: OpenSnapshot, RbdSource, copy(), Verifier,
CopyRecords, create_temp and finish), and print a JSON line: seconds,
bytes written and skipped, how the copy was checked, and the RSS growth of
this process during the copy. Run by bench/copy_bench.py in a fresh
process each time, so that RSS is measured cleanly.

With ``--state-namespace``, the verified snapshots are kept in the shared
state (source cluster, pool ``images``, that namespace) as the daemon keeps
them: the first copy of a snapshot (for ``--image-id``) hashes and records
it, a later one finds the record and hashes nothing. The state's read and
write are inside the measured time."""

from __future__ import annotations

import argparse
import asyncio
import concurrent.futures
import json
import resource
import time

from warmer import memory
from warmer.ceph import images as rbd_images
from warmer.ceph.client import CephClient, ClusterConfig
from warmer.events import ImageInfo
from warmer.state.rados import RadosStore
from warmer.state.store import SourceSnapshot
from warmer.warming.copy import RbdSource, Verifier, copy
from warmer.warming.records import CopyRecords


def rss_kib() -> int:
    with open("/proc/self/status") as f:
        for line in f:
            if line.startswith("VmRSS:"):
                return int(line.split()[1])
    return 0


# Where warmer keeps copies: the pool of the edge cluster's Glance store.
COPY_POOL = "images"


async def main(args: argparse.Namespace) -> dict[str, object]:
    pool = concurrent.futures.ThreadPoolExecutor(args.threads)
    src = CephClient(ClusterConfig(args.src_conf, "warmer", args.src_keyring), pool)
    dst = CephClient(ClusterConfig(args.dst_conf, "warmer", args.dst_keyring), pool)
    await src.connect()
    await dst.connect()
    info = ImageInfo(id=args.image_id, status="active", disk_format="raw",
                     os_hash_algo="sha512", os_hash_value=args.sha512)
    records = None
    if args.state_namespace:
        records = CopyRecords(RadosStore(src, "images", args.state_namespace), "bench")
    rss_before = rss_kib()
    started = time.monotonic()
    handle = await src.run("open", lambda c: rbd_images.OpenSnapshot(
        c, "images", args.source, "snap"))
    source = await src.run("extents", lambda c: RbdSource.open(handle, pool, "bench",
                                                                max(1, args.window // 2)))
    verifier = Verifier(info)
    snapshot = SourceSnapshot(args.image_id, src.fsid or "", "images", args.source,
                              handle.snap_id, handle.rbd_id)
    digest = verifier.digest or ""
    if records is not None and await records.trusted(snapshot, digest, source.size):
        verifier.trust()
    target = await dst.run("create", lambda c: rbd_images.create_temp(
        c, COPY_POOL, args.image_id, source.size, "bench", "bench"))
    stats = await copy(source, target.image.write, verifier, pool, window=args.window)
    verified = verifier.verify()
    if records is not None and verifier.outcome == "verified":
        await records.verified(snapshot, verified, source.size)
    await dst.run("finish", lambda c: rbd_images.finish(c, target, COPY_POOL, args.image_id,
                                                        "bench", verified))
    seconds = time.monotonic() - started
    handle.close()
    peak = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
    src.close()
    dst.close()
    pool.shutdown()
    return {"seconds": seconds, "written": stats.written, "holes": stats.skipped_holes,
            "zeros": stats.skipped_zeros, "check": verifier.outcome,
            "rss_growth_mib": (peak - rss_before) / 1024}


if __name__ == "__main__":
    p = argparse.ArgumentParser()
    for name in ("src_conf", "src_keyring", "dst_conf", "dst_keyring", "source", "image_id",
                 "sha512"):
        p.add_argument(f"--{name.replace('_', '-')}", required=True)
    p.add_argument("--window", type=int, default=4)
    p.add_argument("--threads", type=int, default=8)
    p.add_argument("--state-namespace", help="keep verified snapshots in the shared state")
    memory.pin_mmap_threshold()  # as warmer-daemon does
    print(json.dumps(asyncio.run(main(p.parse_args()))))
