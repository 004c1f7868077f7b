"""[state]: where warmer's shared state lives in RADOS, and how often it is written.

Every daemon of a fleet must point at the same cluster, pool and
namespace. The layout of the objects is in docs/state.md.
"""

from __future__ import annotations

from oslo_config import cfg

GROUP = cfg.OptGroup(
    "state", title="Shared state",
    help="warmer's shared state: demand, pins set through warmer, tombstones and "
         "what each copy cost, kept as small JSON values in the omap of a few "
         "RADOS objects, so that every daemon of a fleet sees the same. Every "
         "daemon must name the same cluster, pool and namespace here. Each daemon "
         "writes its demand only into its own object, named after [DEFAULT] host, "
         "so host must differ between daemons. The half-life of shared demand is "
         "[popularity] half_life as it was when the state was first written; it "
         "is recorded there, and a daemon configured with another value warns "
         "and uses the recorded one. The cephx user needs read and write access "
         "to the pool (docs/cephx.md): 'profile rbd pool=images' already covers "
         "the default pool and namespace.")

OPTS = [
    cfg.BoolOpt("enabled", default=True,
                help="Keep demand, and the tombstones of deleted images, in RADOS as "
                     "described here, so that a restarted daemon keeps its scores and "
                     "daemons sharing the bus pool see the whole fleet's demand. False: "
                     "the same code runs on an in-memory store, so a single daemon works "
                     "without a state cluster, and a restart forgets demand."),
    cfg.StrOpt("ceph_conf", default="/etc/ceph/ceph.conf",
               help="ceph.conf of the cluster that holds the state."),
    cfg.StrOpt("rados_user", default="warmer",
               help="cephx user for the state (without 'client.')."),
    cfg.StrOpt("keyring", help="Keyring of rados_user; default: what ceph_conf says."),
    cfg.StrOpt("pool", default="images",
               help="Pool that holds the state objects. The default is the Glance "
                    "store's pool, where warmer's user already has the rbd profile; "
                    "but Glance's user can write there too (its pool cap covers every "
                    "namespace), and with [warming] trust_verified_snapshots a record "
                    "in the state makes warmer copy a snapshot unhashed: then use a "
                    "pool only warmer's user can write (docs/cephx.md)."),
    cfg.StrOpt("namespace", default="warmer",
               help="RADOS namespace of the state objects in that pool, which keeps "
                    "them apart from RBD's own objects. Empty: the default namespace. "
                    "The demand of each site (target) lives in its own namespace, "
                    "'<namespace>.demand.<target>' ('demand.<target>' when empty); a "
                    "cephx cap restricted to namespaces must allow all of them, e.g. "
                    "'namespace=warmer*'."),
    cfg.IntOpt("connect_timeout", default=10, min=1, max=600,
               help="Seconds for connecting to the cluster."),
    cfg.FloatOpt("flush_interval", default=5.0, min=0.1, max=300.0,
                 help="Seconds between writes of this daemon's demand to the state. "
                      "Demand waits in memory until then, and on a clean stop it is "
                      "written at once: a kill -9 loses at most this window of this "
                      "daemon's own demand, nothing another daemon counted."),
    cfg.FloatOpt("refresh_interval", default=10.0, min=0.5, max=3600.0,
                 help="Seconds between reads of the other daemons' demand (and of the "
                      "tombstones). A daemon's scores include what the others counted "
                      "up to their last write and this daemon's last read: at most "
                      "flush_interval + refresh_interval seconds behind. A failed read "
                      "is logged, counted in warmer_state_errors_total, and retried "
                      "at the next interval."),
    cfg.FloatOpt("tombstone_ttl", default=7 * 86400.0, min=3600.0,
                 help="Seconds a tombstone (an image delete the engine confirmed with "
                      "Glance) stays in the shared state. Every daemon applies it at "
                      "its next refresh, and a daemon that starts later at its start; "
                      "older ones are removed, so that the tombstones do not grow "
                      "without end. A daemon down for longer than this may count its "
                      "own old demand for a deleted image again: Glance then answers "
                      "404, which is never taken for a delete, and the image is "
                      "forgotten once cold. At least an hour: the daemons' wall "
                      "clocks are compared."),
    cfg.FloatOpt("demand_floor", default=0.001, min=0.0, max=1000.0,
                 help="A daemon drops an image from its own demand once that image's "
                      "decayed demand there falls below this (in units of event "
                      "weight), so that cold images do not stay in the state "
                      "forever. Each daemon then forgets less than this much per "
                      "image. 0: never drop."),
]


def register_opts(conf: cfg.ConfigOpts) -> None:
    conf.register_group(GROUP)
    conf.register_opts(OPTS, group=GROUP)


def list_opts() -> list[tuple[cfg.OptGroup, list[cfg.Opt]]]:
    return [(GROUP, OPTS)]
