"""[DEFAULT] options about this daemon itself."""

from __future__ import annotations

import socket

from oslo_config import cfg

OPTS: list[cfg.Opt] = [
    cfg.HostnameOpt("host", default=socket.gethostname(), sample_default="<hostname>",
                    help="Name of this warmer daemon: its demand shard, its copy "
                         "leases and its leadership carry it. Daemons sharing the "
                         "work need different names. A restarted daemon waits for "
                         "the leases of its previous life to run out; none is ever "
                         "broken, since another live process may use the same name."),
]


def register_opts(conf: cfg.ConfigOpts) -> None:
    conf.register_opts(OPTS)


def list_opts() -> list[tuple[str | None, list[cfg.Opt]]]:
    return [(None, OPTS)]
