"""[http]: the metrics, health and admin endpoint."""

from __future__ import annotations

from oslo_config import cfg

GROUP = cfg.OptGroup("http", title="HTTP endpoint",
                     help="Prometheus metrics, /healthz, /readyz and the admin API.")

OPTS = [
    cfg.HostAddressOpt("host", default="127.0.0.1",
                       help="Address to bind. Loopback by default: the admin "
                            "API has no authentication of its own."),
    cfg.PortOpt("port", default=9797, help="Port to bind (0 picks a free one)."),
    cfg.IntOpt("admin_max_queue", default=1000, min=1,
               help="POST /v1/images/{id}/evaluate is refused with 429 while the work "
                    "queue holds this many images. Work from notifications and "
                    "reconciliation is not limited by it."),
]


def register_opts(conf: cfg.ConfigOpts) -> None:
    conf.register_group(GROUP)
    conf.register_opts(OPTS, group=GROUP)


def list_opts() -> list[tuple[cfg.OptGroup, list[cfg.Opt]]]:
    return [(GROUP, OPTS)]
