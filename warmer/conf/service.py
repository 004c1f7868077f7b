"""[DEFAULT] options about this daemon itself."""

from __future__ import annotations

import socket

from oslo_config import cfg

OPTS: list[cfg.Opt] = [
    cfg.HostnameOpt("host", default=socket.gethostname(), sample_default="<hostname>",
                    help="Name of this warmer daemon. It owns the copy leases it "
                         "takes, so a daemon restarted under the same name takes "
                         "over its own stale leases at once; daemons sharing the "
                         "work need different names."),
]


def register_opts(conf: cfg.ConfigOpts) -> None:
    conf.register_opts(OPTS)


def list_opts() -> list[tuple[str | None, list[cfg.Opt]]]:
    return [(None, OPTS)]
