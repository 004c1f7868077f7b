"""Benchmark: warmer's cross-cluster copy against Ceph's native tools.

On the local stack (tools/stack), with the same 1 GiB RAW images in the
same run:

* warmer: its own pipeline (bench/copy_one.py, in a fresh process so peak
  RSS is its own), RBD source in cluster central, target pool in cluster
  edge, sha512 verification included: the first copy of a snapshot;
* warmer verified: the same, for a snapshot an earlier copy verified (the
  record in the shared state, read inside the measured time): a later copy,
  which hashes nothing;
* ``rbd export-diff - | rbd import-diff -`` (central -> edge), the fastest
  native pipeline: the floor;
* ``rbd export - | rbd import -`` (central -> edge);
* ``rbd deep cp`` (central -> central: it works within one cluster only).

Images: "dense" (every byte random) and "sparse" (10% allocated: 1 MiB of
data every 10 MiB, holes between). Each measurement is repeated and the
median reported, with ratios to the floor, since this machine is noisy.

  .venv/bin/python bench/copy_bench.py [--stack DIR] [--repeat 3] [--size-mib 1024]

The verified snapshots are recorded in the state pool of the stack
(central, ``images``) under a namespace of the run's own, removed at the end.
"""

from __future__ import annotations

import argparse
import contextlib
import hashlib
import json
import os
import statistics
import subprocess
import sys
import tempfile
import time
import uuid
from collections.abc import Iterator
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT / "tools"))

import rados  # noqa: E402
import rbd  # noqa: E402
from stackclient import Stack, ceph  # noqa: E402

MiB = 1 << 20
# As systemd/warmer.service runs the daemon: transparent huge pages for the
# copy's mmapped 4 MiB buffers.
DAEMON_TUNABLES = "glibc.malloc.hugetlb=1"


def make_source(stack: Stack, name: str, size: int, every: int) -> tuple[str, int]:
    """Write ``images/<name>`` in central: 1 MiB of random data every
    ``every`` MiB (1: dense). Returns its sha512 and allocated bytes."""
    block = os.urandom(16 * MiB)
    digest = hashlib.sha512()
    allocated = 0
    zero = bytes(MiB)
    with ceph.connect(stack.ceph_conf(), "admin", stack.keyring("admin")) as c, \
            c.open_ioctx("images") as ioctx:
        rbd.RBD().create(ioctx, name, size, old_format=False)
        with rbd.Image(ioctx, name) as img:
            for i in range(size // MiB):
                if i % every == 0:
                    off = (i * MiB) % (15 * MiB)
                    data = block[off:off + MiB - 8] + i.to_bytes(8, "little")
                    img.write(data, i * MiB)
                    allocated += MiB
                else:
                    data = zero
                digest.update(data)
            img.create_snap("snap")
            img.protect_snap("snap")
    return digest.hexdigest(), allocated


def remove(stack: Stack, cluster: str, pool: str, name: str) -> None:
    with ceph.connect(stack.ceph_conf(cluster), "admin", stack.keyring("admin", cluster)) as c, \
            c.open_ioctx(pool) as ioctx:
        with rbd.Image(ioctx, name) as img:
            for snap in img.list_snaps():
                if img.is_protected_snap(snap["name"]):
                    img.unprotect_snap(snap["name"])
                img.remove_snap(snap["name"])
        rbd.RBD().remove(ioctx, name)


def rbd_cmd(stack: Stack, cluster: str) -> str:
    return (f"rbd --conf {stack.ceph_conf(cluster)} --name client.admin "
            f"--keyring {stack.keyring('admin', cluster)}")


def timed_shell(script: str) -> tuple[float, dict[str, float]]:
    """Run a bash pipeline; return wall seconds and each tool's peak RSS (MiB)."""
    with tempfile.NamedTemporaryFile("r", suffix=".rss") as rss:
        started = time.monotonic()
        subprocess.run(["bash", "-o", "pipefail", "-c", script.replace("RSS", rss.name)],
                       check=True, stdout=subprocess.DEVNULL)
        seconds = time.monotonic() - started
        peaks = {}
        for line in Path(rss.name).read_text().split("\n"):
            if line.strip():
                tool, kib = line.split()
                peaks[tool] = int(kib) / 1024
    return seconds, peaks


def warm_up(stack: Stack) -> None:
    """The first writes into a fresh pool of a fresh cluster cost ~2 s once;
    pay that before measuring anything."""
    for cluster, pool in (("central", "images"), ("edge", "images")):
        with ceph.connect(stack.ceph_conf(cluster), "admin", stack.keyring("admin", cluster)) as c:
            name = f"warm-up-{uuid.uuid4().hex[:6]}"
            ceph.write_image(c, pool, name, os.urandom(8 * MiB), snapshot=None)
            ceph.remove(c, pool, name)


def run_one(stack: Stack, script: str, dst_user: str, *args: str) -> dict[str, Any]:
    """``bench/<script>`` in a fresh process (its RSS is its own), with the
    daemon's malloc tunables, reading central as warmer and writing edge as
    ``dst_user``; the JSON line it printed last."""
    out = subprocess.run(
        [sys.executable, str(ROOT / "bench" / script),
         "--src-conf", stack.ceph_conf("central"),
         "--src-keyring", stack.keyring("warmer", "central"),
         "--dst-conf", stack.ceph_conf("edge"), "--dst-keyring", stack.keyring(dst_user, "edge"),
         *args],
        check=True, capture_output=True, text=True,
        env={**os.environ, "GLIBC_TUNABLES": DAEMON_TUNABLES}).stdout
    result: dict[str, Any] = json.loads(out.strip().splitlines()[-1])
    return result


def run_warmer(stack: Stack, source: str, sha: str, namespace: str,
               image_id: str | None = None, check: str = "verified") -> dict[str, Any]:
    """One copy by warmer's pipeline. A new ``image_id`` each time (the
    default) has no verified record: a first copy. ``check`` is how the
    copy must have been checked (else the run is not what it claims)."""
    image_id = image_id or str(uuid.uuid4())
    result = run_one(stack, "copy_one.py", "warmer", "--source", source, "--image-id",
                     image_id, "--sha512", sha, "--state-namespace", namespace)
    remove(stack, "edge", "images", image_id)
    if result["check"] != check:
        raise RuntimeError(f"a copy expected {check} was {result['check']}")
    return result


def forget_records(stack: Stack, namespace: str) -> None:
    with ceph.connect(stack.ceph_conf("central"), "admin", stack.keyring("admin")) as c, \
            c.open_ioctx("images") as ioctx:
        ioctx.set_namespace(namespace)
        for obj in ("warmer.verified", "warmer.mismatched"):
            with contextlib.suppress(rados.ObjectNotFound):
                ioctx.remove_object(obj)


def run_native(stack: Stack, tool: str, source: str, size: int) -> tuple[float, dict[str, float]]:
    dst = f"bench-{uuid.uuid4().hex[:8]}"
    t = "/usr/bin/time -a -o RSS -f"
    central, edge = rbd_cmd(stack, "central"), rbd_cmd(stack, "edge")
    if tool == "export-diff|import-diff":
        subprocess.run(f"{edge} create --size {size // MiB} images/{dst}", shell=True, check=True)
        script = (f"{t} 'export-diff %M' {central} export-diff --no-progress "
                  f"images/{source}@snap - "
                  f"| {t} 'import-diff %M' {edge} import-diff --no-progress - images/{dst}")
        cluster, pool = "edge", "images"
    elif tool == "export|import":
        script = (f"{t} 'export %M' {central} export --no-progress images/{source}@snap - "
                  f"| {t} 'import %M' {edge} import --no-progress - images/{dst}")
        cluster, pool = "edge", "images"
    else:
        script = (f"{t} 'deep-cp %M' {central} deep cp --no-progress images/{source}@snap "
                  f"images/{dst}")
        cluster, pool = "central", "images"
    result = timed_shell(script)
    remove(stack, cluster, pool, dst)
    return result


def arguments(doc: str) -> argparse.Namespace:
    """The copy benchmarks' command line (``doc``: the script's docstring)."""
    parser = argparse.ArgumentParser(description=doc,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--stack", type=Path, help="an existing stack (default: start one)")
    parser.add_argument("--repeat", type=int, default=3)
    parser.add_argument("--size-mib", type=int, default=1024)
    parser.add_argument("--json", type=Path, help="also write the results here")
    return parser.parse_args()


@contextlib.contextmanager
def bench_stack(path: Path | None) -> Iterator[Stack]:
    """The stack at ``path``; None: one started here, and stopped after."""
    base = path or Path(tempfile.mkdtemp(prefix="wb-", dir="/tmp"))
    if path is None:
        subprocess.run([str(ROOT / "tools" / "stack"), "up", str(base)], check=True)
    try:
        yield Stack.load(base)
    finally:
        if path is None:
            subprocess.run([str(ROOT / "tools" / "stack"), "down", str(base)], check=True,
                           stdout=subprocess.DEVNULL)


def main() -> int:
    args = arguments(__doc__ or "")
    with bench_stack(args.stack) as stack:
        return run(stack, args)


def run(stack: Stack, args: argparse.Namespace) -> int:
    size = args.size_mib * MiB
    results: dict[str, dict[str, object]] = {}
    tools = ("warmer", "warmer verified", "export-diff|import-diff", "export|import",
             "deep cp")
    namespace = f"bench-{uuid.uuid4().hex[:8]}"  # the verified snapshots of this run only
    try:
        warm_up(stack)
        for kind, every in (("dense", 1), ("sparse", 10)):
            source = f"bench-src-{kind}-{uuid.uuid4().hex[:6]}"
            sha, allocated = make_source(stack, source, size, every)
            print(f"\n{kind}: {args.size_mib} MiB, {allocated // MiB} MiB allocated", flush=True)
            # The first copy of this snapshot under this id (not measured):
            # the "warmer verified" runs find its record.
            verified_id = str(uuid.uuid4())
            run_warmer(stack, source, sha, namespace, verified_id)
            seconds: dict[str, list[float]] = {t: [] for t in tools}
            rss: dict[str, list[float]] = {t: [] for t in tools}
            for rep in range(args.repeat):
                # Round-robin, rotated each time: no tool always goes first.
                for tool in tools[rep % len(tools):] + tools[:rep % len(tools)]:
                    if tool.startswith("warmer"):
                        r = (run_warmer(stack, source, sha, namespace) if tool == "warmer" else
                             run_warmer(stack, source, sha, namespace, verified_id,
                                        "skipped_verified"))
                        seconds[tool].append(float(r["seconds"]))
                        rss[tool].append(float(r["rss_growth_mib"]))
                    else:
                        s, peaks = run_native(stack, tool, source, size)
                        seconds[tool].append(s)
                        rss[tool].append(max(peaks.values()) if peaks else 0.0)
            rows: dict[str, object] = {}
            for tool in tools:
                rows[tool] = {"median_s": statistics.median(seconds[tool]),
                              "runs_s": seconds[tool], "rss_mib": max(rss[tool])}
                print(f"  {tool:26} median {statistics.median(seconds[tool]):6.2f} s  "
                      f"runs {', '.join(f'{s:.2f}' for s in seconds[tool])}  "
                      f"{'RSS growth' if tool.startswith('warmer') else 'peak RSS'} "
                      f"{max(rss[tool]):.0f} MiB", flush=True)
            floor = rows["export-diff|import-diff"]["median_s"]  # type: ignore[index]
            fastest = min(rows[t]["median_s"]  # type: ignore[index]
                          for t in ("export-diff|import-diff", "export|import"))
            for row in rows.values():
                row["ratio_to_floor"] = row["median_s"] / floor  # type: ignore[index,operator]
                row["ratio_to_fastest_cross_cluster"] = (
                    row["median_s"] / fastest)  # type: ignore[index,operator]
            print("  ratios to export-diff|import-diff: " + ", ".join(
                f"{t} {r['ratio_to_floor']:.2f}x" for t, r in rows.items()))  # type: ignore[index]
            first, later = (rows[t]["ratio_to_fastest_cross_cluster"]  # type: ignore[index]
                            for t in ("warmer", "warmer verified"))
            print(f"  warmer / fastest cross-cluster native tool: {first:.2f}x first copy, "
                  f"{later:.2f}x verified snapshot")
            results[kind] = rows
            remove(stack, "central", "images", source)
    finally:
        forget_records(stack, namespace)
    if args.json:
        args.json.write_text(json.dumps(results, indent=2) + "\n")
    return 0


if __name__ == "__main__":
    sys.exit(main())
