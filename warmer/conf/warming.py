"""[warming]: how much work warmer does at once and how often it reconciles."""

from __future__ import annotations

from oslo_config import cfg

GROUP = cfg.OptGroup("warming", title="Warming",
                     help="Workers, Ceph threads and reconciliation.")

OPTS = [
    cfg.IntOpt("workers", default=4, min=1, max=256,
               help="Images evaluated and warmed concurrently."),
    cfg.IntOpt("ceph_threads", default=8, min=1, max=256,
               help="Threads for blocking rados/rbd calls (never run on the event loop)."),
    cfg.FloatOpt("reconcile_interval", default=600.0, min=5.0, max=86400.0,
                 help="Seconds between full reconciliations of desired and actual "
                      "state, which repair what missed notifications leave behind."),
    cfg.FloatOpt("ceph_probe_interval", default=15.0, min=1.0, max=3600.0,
                 help="Seconds between Ceph and Glance reachability probes (for "
                      "/readyz and warmer_dependency_up). Scrapes never call Ceph "
                      "or Glance."),
    cfg.FloatOpt("retry_delay", default=30.0, min=0.1, max=3600.0,
                 help="Seconds before an image whose warming failed is tried again."),
    cfg.FloatOpt("glance_view_ttl", default=30.0, min=0.0, max=3600.0,
                 help="Seconds for which Glance's view of an image, once read (a "
                      "GET, or a page of a reconciliation's listing), is used again "
                      "instead of a new read: a burst of notifications for one image "
                      "then makes one Glance read, and a reconciliation lists the "
                      "images it will act on in pages instead of one GET each. A "
                      "notification about the image drops its view at once; every "
                      "change warmer makes to Glance re-reads the image anyway. 0: "
                      "read Glance for every evaluation."),
    cfg.FloatOpt("eviction_margin", default=0.25, min=0.0, max=10.0,
                 help="A new copy evicts a copy to make room only if it is worth "
                      "more than (1 + this) times as much: with scores that move "
                      "as events arrive, two images of about equal demand would "
                      "otherwise take turns, each eviction a copy made again. 0: "
                      "any higher score evicts."),
    cfg.FloatOpt("fanout_wait", default=5.0, min=0.0, max=600.0,
                 help="Seconds a copy that is ready to start waits for the other "
                      "targets the same evaluation copies the image into, so that "
                      "they all share one read and one hash of the source (each "
                      "target still writes, verifies and publishes its own copy). "
                      "The read starts as soon as every such target is ready or "
                      "has gone its own way (already warm, busy, over budget, "
                      "failed); a target not ready by then reads on its own, "
                      "with a window (copy_window chunks) of memory of its own. "
                      "One read goes at the pace of its slowest target. 0: "
                      "never wait, every target reads and hashes on its own."),
    cfg.BoolOpt("trust_verified_snapshots", default=True,
                help="Verify each source snapshot once. An RBD snapshot never "
                     "changes: once warmer has hashed every byte of one and matched "
                     "Glance's os_hash_value (or checksum), it records that in the "
                     "shared state ([state]), keyed by the snapshot's cluster, pool, "
                     "image and snapshot id. A later copy of the same snapshot, while "
                     "Glance records the same digest, then hashes nothing and relies "
                     "on librbd's acknowledged reads and writes, as 'rbd import' "
                     "does. A re-created snapshot (a new id) or a state that cannot "
                     "be read means hash. False: hash every copy (records are still "
                     "written for daemons that trust them). True makes the state part "
                     "of the trust boundary: whoever can write [state] can make warmer "
                     "skip the hash. Keep the state in a pool only warmer's user can "
                     "write (by default it is in Glance's pool, which Glance's user "
                     "can write, every namespace of it: docs/cephx.md); 'warmer "
                     "doctor' warns (state_pool_shared_with_glance)."),
    cfg.ListOpt("unmapped_demand",
                help="Targets where demand counts when it matches no target's "
                     "demand_backends, demand_hosts or demand_zones, or says "
                     "nothing about where it happened (Glance's image.send, a "
                     "volume of unknown host, a cache event under zone-only "
                     "patterns): target names from [DEFAULT] enabled_targets, "
                     "'*' alone for every target, or empty for none. Unset (the "
                     "default): the targets that have no demand_* patterns (every "
                     "target while none has any, as without sites; none once all "
                     "have): a download at one site must not make every site want "
                     "the image, and patterns can be added one site at a time. "
                     "See docs/sites.md."),
]


def register_opts(conf: cfg.ConfigOpts) -> None:
    conf.register_group(GROUP)
    conf.register_opts(OPTS, group=GROUP)


def list_opts() -> list[tuple[cfg.OptGroup, list[cfg.Opt]]]:
    return [(GROUP, OPTS)]
