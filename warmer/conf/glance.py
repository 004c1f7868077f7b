"""[glance]: how warmer reaches Glance's API."""

from __future__ import annotations

from oslo_config import cfg

GROUP = cfg.OptGroup("glance", title="Glance API",
                     help="Glance's image API, used for image details and locations.")

OPTS = [
    cfg.URIOpt("endpoint", default="http://127.0.0.1:9292", schemes=["http", "https"],
               help="Glance API endpoint (without /v2)."),
    cfg.FloatOpt("timeout", default=30.0, min=1.0, max=600.0,
                 help="Seconds for one Glance API request."),
    cfg.IntOpt("max_connections", default=8, min=1, max=256,
               help="Concurrent connections to Glance."),
]


def register_opts(conf: cfg.ConfigOpts) -> None:
    conf.register_group(GROUP)
    conf.register_opts(OPTS, group=GROUP)


def list_opts() -> list[tuple[cfg.OptGroup, list[cfg.Opt]]]:
    return [(GROUP, OPTS)]
