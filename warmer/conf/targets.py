"""Targets: the Cinder RBD backends warmer keeps images cloneable for.

Like cinder.conf's ``enabled_backends``, ``[DEFAULT] enabled_targets``
names config groups, one per target, each with the options below.
"""

from __future__ import annotations

from oslo_config import cfg

DEFAULT_OPTS: list[cfg.Opt] = [
    cfg.ListOpt("enabled_targets", default=[],
                help="Names of the config groups that describe the Ceph clusters "
                     "and pools where Cinder needs images cloneable."),
]

# Documented in the sample config under [target_example]; registered at run
# time on each group that enabled_targets names.
TARGET_OPTS: list[cfg.Opt] = [
    cfg.StrOpt("ceph_conf", default="/etc/ceph/ceph.conf",
               help="ceph.conf of the cluster Cinder's backend uses."),
    cfg.StrOpt("rados_user", default="warmer",
               help="warmer's cephx user in that cluster (without 'client.')."),
    cfg.StrOpt("keyring", help="Keyring of rados_user; default: what ceph_conf says."),
    cfg.StrOpt("pool", default="volumes",
               help="Cinder's pool in that cluster (rbd_pool in cinder.conf). "
                    "warmer never writes it: it needs at most read-only access "
                    "there, to list the clones of its copies before it evicts "
                    "them."),
    cfg.StrOpt("glance_store",
               help="Glance store id (enabled_backends) that stands for this "
                    "cluster; default: the group name."),
    cfg.StrOpt("copy_pool",
               help="Pool for warmer's copies in this cluster. Default: the pool "
                    "of the Glance RBD store glance_store, as Glance's "
                    "GET /v2/info/stores/detail gives it, which is where Glance's "
                    "own copy-image writes; the Ceph-guide caps of Glance and "
                    "Cinder then work unchanged. Setting it to Cinder's pool is "
                    "the old layout: it needs Glance's user to have the rbd "
                    "profile on that pool and warmer write access to every "
                    "Cinder volume (docs/cephx.md); not recommended."),
    cfg.BoolOpt("repair_glance_snapshots", default=True,
                help="Create or protect the snapshot that a Glance image's own "
                     "RBD location names, when it is missing or unprotected. "
                     "Needs the rbd profile on Glance's pool; without it warmer "
                     "only reports."),
    cfg.StrOpt("cinder_user",
               help="Cinder's rbd_user. When set, cloneability is checked by "
                    "opening the snapshot read-only as this user, as Cinder does."),
    cfg.StrOpt("cinder_keyring", help="Keyring of cinder_user."),
    cfg.IntOpt("connect_timeout", default=10, min=1, max=600,
               help="Seconds for connecting to the cluster (librados' "
                    "client_mount_timeout on warmer's connections)."),
    cfg.IntOpt("rados_osd_op_timeout", default=30, min=1, max=3600,
               help="Seconds before an OSD operation (reads, writes, locks, "
                    "snapshots' header updates) that gets no answer fails with "
                    "ETIMEDOUT. Set on every connection warmer makes to this "
                    "cluster, as warmer's and as Cinder's user: without it a "
                    "call to a sick cluster can block forever. After a timeout "
                    "warmer reconnects, reports the target as ceph_unavailable "
                    "and retries later."),
    cfg.IntOpt("rados_mon_op_timeout", default=30, min=1, max=3600,
               help="Seconds before a monitor operation (cluster stats, pool "
                    "and snapshot id operations, blocklist) that gets no answer "
                    "fails with ETIMEDOUT. Set on every connection warmer makes "
                    "to this cluster, like rados_osd_op_timeout."),
    cfg.BoolOpt("copy_images", default=True,
                help="Copy images that have no location in this cluster (another "
                     "cluster, or a store that is not RBD) into the pool, verify "
                     "them, and publish the copy as a Glance location. Needs the "
                     "rbd profile on the pool."),
    cfg.IntOpt("copy_window", default=4, min=1, max=64,
               help="Chunks (4 MiB) of one copy being hashed or written at once, "
                    "with half as many more being read ahead: a copy holds about "
                    "1.5 x window x 4 MiB."),
    cfg.IntOpt("copy_lock_seconds", default=120, min=10, max=3600,
               help="Lease of the per-image copy lock. A daemon that dies "
                    "mid-copy blocks that image's copy for at most this long."),
    cfg.IntOpt("capacity_bytes", default=0, min=0,
               help="Budget for warmer's copies in this pool, in bytes of image "
                    "size. When a copy would exceed it, lower-scored copies are "
                    "evicted first; pinned ones never are. 0: no limit."),
    cfg.IntOpt("capacity_images", default=0, min=0,
               help="Budget for the number of warmer's copies in this pool. "
                    "0: no limit."),
    cfg.BoolOpt("allow_unverified_copies", default=False,
                help="Publish copies of images for which Glance records no "
                     "checksum. Off: such images are reported as "
                     "no_glance_checksum and never published."),
    # Where demand happens (warmer.sites, docs/sites.md).
    cfg.ListOpt("demand_backends", default=[],
                help="Cinder backends whose demand counts for this target: "
                     "fnmatch patterns (*, ?, [...]), case-sensitive, matched "
                     "against the host string host@backend#pool of "
                     "volume.create.end (payload host, else its publisher id) and "
                     "of the image-volume cache events (payload host). A pattern "
                     "without '@' is matched against the backend name alone "
                     "(ceph-edge), one with '@' but no '#' against host@backend "
                     "(*@ceph-edge), one with both against the whole string "
                     "(*@ceph-edge#*). Demand that no target's patterns match goes "
                     "to [warming] unmapped_demand."),
    cfg.ListOpt("demand_hosts", default=[],
                help="Cinder volume hosts whose demand counts for this target: "
                     "fnmatch patterns, case-sensitive, matched against the host "
                     "before '@' in host@backend#pool (edge1.*). No '@' or '#'."),
    cfg.ListOpt("demand_zones", default=[],
                help="Availability zones whose demand counts for this target: "
                     "fnmatch patterns, case-sensitive, matched against "
                     "volume.create.end's availability_zone. The cache events "
                     "carry no zone: match their backend too, with demand_backends "
                     "or demand_hosts."),
    cfg.BoolOpt("wanted_anywhere", default=False,
                help="This target wants every image that any target's demand "
                     "wants, whatever its own demand (e.g. a central site that "
                     "should hold everything). Pins and policy apply as usual."),
]

EXAMPLE_GROUP = "target_example"


def register_opts(conf: cfg.ConfigOpts) -> None:
    conf.register_opts(DEFAULT_OPTS)


def register_target_groups(conf: cfg.ConfigOpts) -> None:
    for name in conf.enabled_targets:
        conf.register_opts(TARGET_OPTS, group=name)


def list_opts() -> list[tuple[str | None, list[cfg.Opt]]]:
    return [(None, DEFAULT_OPTS), (EXAMPLE_GROUP, TARGET_OPTS)]
