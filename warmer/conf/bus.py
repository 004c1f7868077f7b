"""[bus]: where the notifications come from and how they are consumed.

The transport itself is oslo.messaging's ``[DEFAULT] transport_url`` (or
``[oslo_messaging_notifications] transport_url``), with its
``[oslo_messaging_rabbit]`` options (``rabbit_qos_prefetch_count`` among
them); one thread consumes (:mod:`warmer.bus.listener`). The rabbit
driver declares warmer's exchanges and pool queue with those options
(``amqp_durable_queues``, ``amqp_auto_delete``, ``rabbit_quorum_queue``
and its limits, ``rabbit_ha_queues``), exactly as for any OpenStack
service: they must match the deployment's, or the declare is refused.
tests/functional/test_bus_faults.py checks durable and quorum queues.
"""

from __future__ import annotations

from oslo_config import cfg

GROUP = cfg.OptGroup(
    "bus", title="Notification bus",
    help="The Glance and Cinder notifications warmer listens to. The connection "
         "is oslo.messaging's: [DEFAULT] transport_url (or "
         "[oslo_messaging_notifications] transport_url) and the "
         "[oslo_messaging_rabbit] options, which apply to warmer's own "
         "exchanges and pool queue as they do to any OpenStack service: set "
         "amqp_durable_queues = true (durable exchanges and queues; messages "
         "survive a broker restart) or rabbit_quorum_queue = true (quorum "
         "queues, durable too) as the deployment's services do, or RabbitMQ "
         "refuses the declare (inequivalent arg 'durable' or "
         "'x-queue-type') and warmer does not start. While the listener's "
         "connection is down, /readyz fails and warmer_dependency_up{"
         "dependency=\"bus\"} is 0; the driver reconnects by itself "
         "(rabbit_retry_interval, rabbit_retry_backoff, rabbit_interval_max).")

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
                 help="Seconds the listener waits for the event loop to take a "
                      "batch of events. Past it the batch is requeued."),
    cfg.IntOpt("batch_size", default=256, min=1, max=10_000,
               help="At most this many notifications are handed to the event "
                    "loop at once, and acked together once it took them (at "
                    "most half of [oslo_messaging_rabbit] "
                    "rabbit_qos_prefetch_count). When that prefetch is 0 "
                    "(oslo.messaging's default: no limit, the broker would push "
                    "a whole backlog into one daemon of the pool), warmer's "
                    "listening connection uses twice batch_size instead. A "
                    "batch is whatever arrived in the meantime: under a light "
                    "load, one message."),
    cfg.FloatOpt("batch_linger", default=0.05, min=0.0, max=5.0,
                 help="Seconds a notification waits at most for its batch to "
                      "fill while more keep arriving; a batch is handed off at "
                      "once when nothing more is waiting."),
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
