"""[leader]: the one daemon of a fleet that runs the fleet-wide work."""

from __future__ import annotations

from oslo_config import cfg

GROUP = cfg.OptGroup(
    "leader", title="Leadership",
    help="Of the daemons that share a [state] pool and namespace, exactly one, the "
         "leader, runs the periodic reconciliation (pin discovery, clean-up of what "
         "crashed copies left, budget enforcement). Every daemon still consumes "
         "notifications and copies under the per-image leases, and checks budgets "
         "when a new copy needs room. The leader holds an exclusive RADOS lock with a "
         "lease on the object 'warmer.leader' in the [state] pool and namespace, and "
         "renews it every third of the lease; the others try to take it as often. "
         "Each daemon is named by [DEFAULT] host, which must differ between daemons.")

OPTS: list[cfg.Opt] = [
    cfg.IntOpt("lease_seconds", default=30, min=3, max=600,
               help="Lease of the leader's lock, in seconds. The leader renews it "
                    "every lease/3 and steps down on its own lease/5 before the lock "
                    "could expire in Ceph, counted from the start of its last "
                    "successful renewal: a leader that cannot reach Ceph stops "
                    "acting as leader before anyone else can take over. When the "
                    "leader dies (kill -9, host loss), another daemon leads and "
                    "reconciles within 2x the lease (at most lease + lease/3 plus "
                    "one Ceph round trip); a leader that stops cleanly releases the "
                    "lock and another takes over within lease/3. Its calls to Ceph "
                    "are bounded by lease/3 too."),
]


def register_opts(conf: cfg.ConfigOpts) -> None:
    conf.register_group(GROUP)
    conf.register_opts(OPTS, group=GROUP)


def list_opts() -> list[tuple[cfg.OptGroup, list[cfg.Opt]]]:
    return [(GROUP, OPTS)]
