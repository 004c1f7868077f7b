"""[http]: the metrics, health and admin endpoints."""

from __future__ import annotations

from oslo_config import cfg

GROUP = cfg.OptGroup("http", title="HTTP endpoints",
                     help="Prometheus metrics, /healthz, /readyz and the admin API. "
                          "Admin requests that change state (POST) are accepted on "
                          "the admin socket, or over TCP with the bearer token "
                          "admin_token.")

OPTS = [
    cfg.HostAddressOpt("host", default="127.0.0.1",
                       help="Address of the TCP listener: metrics, health and the "
                            "admin API. Over TCP, admin POSTs need admin_token, and "
                            "admin GETs need it too once it is set."),
    cfg.PortOpt("port", default=9797, help="Port of the TCP listener (0 picks a free one)."),
    cfg.StrOpt("admin_socket", default="/run/warmer/admin.sock",
               help="Unix socket serving the admin API and the metrics without a "
                    "token. It is created with mode 0660, so its owner and group "
                    "(the daemon's) are who may use it: add operators to that group. "
                    "The directory must exist (systemd's RuntimeDirectory=warmer). "
                    "Empty: no socket."),
    cfg.StrOpt("admin_token", secret=True,
               help="Bearer token for the admin API over TCP (header "
                    "'Authorization: Bearer <token>'). Unset: admin POSTs over TCP "
                    "are refused (403) and admin GETs need no token. Set: both need "
                    "it. /metrics, /healthz and /readyz never need it."),
    cfg.HostAddressOpt("metrics_host",
                       help="Address of a separate listener that serves only /metrics, "
                            "/healthz and /readyz (the admin API is not there), e.g. "
                            "for a remote Prometheus. Defaults to host. Used only with "
                            "metrics_port."),
    cfg.PortOpt("metrics_port",
                help="Port of that separate metrics listener. Unset: no separate "
                     "listener (host:port serves the metrics)."),
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
