"""Open and close one RBD snapshot read-only, over and over.

librbd 16.2 (Debian 12's 16.2.15) corrupts its memory when an image is
opened read-only *at* a snapshot (``rbd.Image(ioctx, name, snapshot=S,
read_only=True)``, i.e. ``rbd_open_read_only`` with a snapshot name): the
process aborts (``std::system_error: Invalid argument``), segfaults or
hangs after some hundreds or thousands of such opens. warmer opens at the
head and then sets the snapshot instead (:func:`warmer.ceph.bindings.
set_snapshot`). This tool shows both (``docs/ceph-bugs.md``):

  .venv/bin/python tools/snapshot_open_soak.py --conf C --user cinder \\
      --keyring K --pool images --image NAME --cycles 4000 [--librbd-open]

By default the cycles are warmer's own readability check
(``CephClient.check_snapshot_readable``, Cinder's user's view of a
published copy), ``--tasks`` of them at once on one client's threads, as
the daemon runs them. ``--librbd-open`` is one thread opening the faulty
way. It prints the number of cycles done and exits 0 when all were and
every check found the snapshot cloneable; a crash is the process dying by
a signal.
"""

from __future__ import annotations

import argparse
import asyncio
import concurrent.futures
import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from warmer.ceph.bindings import modules
from warmer.ceph.client import CephClient, ClusterConfig


def librbd_open(args: argparse.Namespace) -> int:
    """The faulty open, in one thread: returns the cycles done."""
    rados, rbd = modules()
    cluster = rados.Rados(conffile=args.conf, name=f"client.{args.user}",
                          conf={"keyring": args.keyring, "rbd_cache": "false"})
    cluster.connect(timeout=30)
    done = 0
    try:
        for _ in range(args.cycles):
            ioctx = cluster.open_ioctx(args.pool)
            try:
                with rbd.Image(ioctx, args.image, snapshot=args.snapshot, read_only=True) as img:
                    img.is_protected_snap(args.snapshot)
            finally:
                ioctx.close()
            done += 1
    finally:
        print(f"{done} cycles", flush=True)
        cluster.shutdown()
    return done


async def warmer_checks(args: argparse.Namespace) -> int:
    """warmer's check, ``args.tasks`` at once: returns the cycles done."""
    executor = concurrent.futures.ThreadPoolExecutor(max(4, args.tasks))
    client = CephClient(ClusterConfig(args.conf, args.user, keyring=args.keyring), executor)
    done = 0
    problems: list[str] = []

    async def worker(count: int) -> None:
        nonlocal done
        for _ in range(count):
            problem = await client.check_snapshot_readable(args.pool, args.image, args.snapshot)
            if problem is not None:
                problems.append(problem)
            done += 1
    try:
        share, rest = divmod(args.cycles, args.tasks)
        await asyncio.gather(*(worker(share + (n < rest)) for n in range(args.tasks)))
    finally:
        print(f"{done} cycles", flush=True)
        if problems:
            print(f"not cloneable {len(problems)} times: {sorted(set(problems))}", flush=True)
        client.close()
        executor.shutdown(wait=True)
    return done if not problems else -1


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--conf", required=True)
    parser.add_argument("--user", required=True)
    parser.add_argument("--keyring", required=True)
    parser.add_argument("--pool", required=True)
    parser.add_argument("--image", required=True)
    parser.add_argument("--snapshot", default="snap")
    parser.add_argument("--cycles", type=int, default=4000)
    parser.add_argument("--tasks", type=int, default=2,
                        help="warmer's checks running at once (default 2)")
    parser.add_argument("--librbd-open", action="store_true",
                        help="open at the snapshot (the form that crashes), not warmer's way")
    args = parser.parse_args()
    if args.librbd_open:
        done = librbd_open(args)
    else:
        done = asyncio.run(warmer_checks(args))
    return 0 if done == args.cycles else 1


if __name__ == "__main__":
    sys.exit(main())
