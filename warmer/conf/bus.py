"""[bus]: where the notifications come from and how they are consumed.

The transport itself is oslo.messaging's ``[DEFAULT] transport_url`` (or
``[oslo_messaging_notifications] transport_url``), with its
``[oslo_messaging_rabbit]`` options for queue types and
``[DEFAULT] executor_thread_pool_size`` for the listener's threads.
"""

from __future__ import annotations

from oslo_config import cfg

GROUP = cfg.OptGroup("bus", title="Notification bus",
                     help="The Glance and Cinder notifications warmer listens to.")

OPTS = [
    cfg.StrOpt("glance_exchange", default="glance",
               help="Exchange Glance publishes notifications on."),
    cfg.StrOpt("cinder_exchange", default="openstack",
               help="Exchange Cinder publishes on. Cinder never sets its own, "
                    "so this is oslo.messaging's control_exchange (openstack)."),
    cfg.ListOpt("topics", default=["notifications"],
                help="Notification topics to listen on, on both exchanges. "
                     "Must match the services' [oslo_messaging_notifications] topics."),
    cfg.StrOpt("pool", default="warmer",
               help="Listener pool name. warmer gets its own queue per topic "
                    "and priority, named after the pool, with a copy of every "
                    "notification; several warmer daemons in the same pool "
                    "compete for the messages of that queue."),
    cfg.FloatOpt("handoff_timeout", default=10.0, min=0.1, max=300.0,
                 help="Seconds a listener thread waits for the event loop to "
                      "take an event. Past it the message is requeued."),
    cfg.IntOpt("max_payload_bytes", default=1 << 20, min=1024, max=1 << 30,
               help="Payloads larger than this (as JSON) are rejected as "
                    "malformed, logged, counted and dropped."),
    cfg.IntOpt("dedup_window", default=100_000, min=0, max=10_000_000,
               help="How many recent demand events (by volume id or message "
                    "id) are remembered so that a redelivered notification "
                    "is not counted twice."),
]


def register_opts(conf: cfg.ConfigOpts) -> None:
    conf.register_group(GROUP)
    conf.register_opts(OPTS, group=GROUP)


def list_opts() -> list[tuple[cfg.OptGroup, list[cfg.Opt]]]:
    return [(GROUP, OPTS)]
