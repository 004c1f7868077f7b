"""The edge cluster's copy pool as the tests see it: warmer's registry of
copies there, and a way to empty it before a test that needs edge's whole
budget (earlier tests leave copies, and pinned images worth any slot)."""

from __future__ import annotations

import rados
from stackclient import Stack, ceph
from stackclient.daemon import Daemon
from stackclient.glance import Glance

COPY_POOL = "images"


def registry(stack: Stack, cluster: str = "edge") -> dict[str, bytes]:
    """warmer's registry of its copies in ``cluster``'s copy pool."""
    with ceph.connect(stack.ceph_conf(cluster), "admin", stack.keyring("admin", cluster)) as c, \
            c.open_ioctx(COPY_POOL) as ioctx, rados.ReadOpCtx() as op:
        values, _ = ioctx.get_omap_vals(op, "", "", 10_000)
        try:
            ioctx.operate_read_op(op, "warmer.registry")
        except rados.ObjectNotFound:
            return {}
        return dict(values)


def empty_edge(stack: Stack, glance: Glance, timeout: float = 120) -> None:
    """Unpin every image, let Glance delete every image warmer copied to
    edge, and wait until warmer has forgotten those copies. A daemon of its
    own does the forgetting (image.delete, then reconciliations every 5 s),
    with no budget pressure: one that evicts while Glance deletes meets a
    changing location list and keeps hands off the image until the next
    reconciliation, which is slower. It is stopped cleanly (leases
    released) before the caller starts its own daemon."""
    for pinned in glance.ids(tag="warmer-pin"):
        glance.remove_tag(pinned, "warmer-pin")
    janitor = Daemon(stack, name="janitor", overrides=(
        "[warming]\nreconcile_interval = 5\nretry_delay = 1\n"
        "[central]\ncopy_images = false\n")).start()
    try:
        for leftover in registry(stack):
            glance.delete_eventually(leftover)

        def empty() -> bool:
            left = registry(stack)
            if left:
                last_seen[:] = [f"{k}={v.decode(errors='replace')}" for k, v in left.items()]
            return not left
        last_seen: list[str] = []
        try:
            janitor.wait_until(empty, timeout, "edge registry empty")
        except TimeoutError as exc:
            raise TimeoutError(f"{exc}\nstill in edge's registry: {last_seen}") from None
    finally:
        try:
            assert janitor.terminate() == 0, "the janitor did not stop cleanly"
        finally:
            janitor.kill()  # if it did not stop in time (a no-op once it exited)
