"""Open and close one RBD snapshot read-only, over and over, in one thread.

librbd 16.2 (Debian 12's 16.2.15) corrupts its memory when an image is
opened read-only *at* a snapshot (``rbd.Image(ioctx, name, snapshot=S,
read_only=True)``, i.e. ``rbd_open_read_only`` with a snapshot name): the
process aborts (``std::system_error: Invalid argument``) or segfaults
after some hundreds or thousands of such opens. warmer opens at the head
and then sets the snapshot instead (:func:`warmer.ceph.bindings.
open_snapshot`). This tool shows both (``docs/ceph-bugs.md``):

  .venv/bin/python tools/snapshot_open_soak.py --conf C --user cinder \\
      --keyring K --pool images --image NAME --cycles 4000 [--librbd-open]

It prints the number of cycles done and exits 0 when all were; a crash
is the process dying by a signal.
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from warmer.ceph.bindings import modules, open_snapshot


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--conf", required=True)
    parser.add_argument("--user", required=True)
    parser.add_argument("--keyring", required=True)
    parser.add_argument("--pool", required=True)
    parser.add_argument("--image", required=True)
    parser.add_argument("--snapshot", default="snap")
    parser.add_argument("--cycles", type=int, default=4000)
    parser.add_argument("--librbd-open", action="store_true",
                        help="open at the snapshot (the form that crashes), not warmer's way")
    args = parser.parse_args()
    rados, rbd = modules()
    cluster = rados.Rados(conffile=args.conf, name=f"client.{args.user}",
                          conf={"keyring": args.keyring, "rbd_cache": "false"})
    cluster.connect(timeout=30)
    done = 0
    try:
        for _ in range(args.cycles):
            ioctx = cluster.open_ioctx(args.pool)
            try:
                if args.librbd_open:
                    img = rbd.Image(ioctx, args.image, snapshot=args.snapshot, read_only=True)
                else:
                    img, _ = open_snapshot(ioctx, args.image, args.snapshot)
                with img:
                    img.is_protected_snap(args.snapshot)
            finally:
                ioctx.close()
            done += 1
    finally:
        print(f"{done} cycles", flush=True)
        cluster.shutdown()
    return 0


if __name__ == "__main__":
    sys.exit(main())
