"""[glance]: how warmer reaches Glance's API.

Authentication is keystoneauth1's, loaded from this group the way Cinder
and Nova load theirs: ``auth_type`` (password, v3applicationcredential,
...) with its options, and the session options (``cafile``, ``insecure``,
``timeout``, ...). Without ``auth_type``, warmer sends no token and needs
``endpoint``: that is the local stack's case.
"""

from __future__ import annotations

from keystoneauth1 import loading as ks_loading
from oslo_config import cfg

GROUP = cfg.OptGroup("glance", title="Glance API",
                     help="Glance's image API, used for image details, data and locations. "
                          "keystoneauth1's options apply here too: auth_type (password, "
                          "v3applicationcredential, ...) and that plugin's options "
                          "(auth_url, username, ...), and the session's (cafile, "
                          "insecure, timeout, ...). Without auth_type no token is sent "
                          "and endpoint is required.")

OPTS: list[cfg.Opt] = [
    cfg.URIOpt("endpoint", schemes=["http", "https"],
               help="Glance API endpoint (without /v2). Default: from the service "
                    "catalog of the authenticated session."),
    cfg.StrOpt("service_type", default="image",
               help="Service type to look Glance up in the catalog."),
    cfg.StrOpt("interface", default="internal",
               choices=["public", "internal", "admin"],
               help="Catalog interface to use."),
    cfg.StrOpt("region_name", help="Catalog region to use."),
    cfg.IntOpt("max_connections", default=8, min=1, max=256,
               help="Concurrent connections to Glance."),
]

DEFAULT_TIMEOUT = 30


def register_opts(conf: cfg.ConfigOpts) -> None:
    # A group object of its own: keystoneauth registers the auth plugin's
    # options on it at load time, and a shared module-level OptGroup would
    # carry them into every other ConfigOpts.
    conf.register_group(cfg.OptGroup(GROUP.name, title=GROUP.title, help=GROUP.help))
    conf.register_opts(OPTS, group=GROUP.name)
    ks_loading.register_session_conf_options(conf, GROUP.name)
    ks_loading.register_auth_conf_options(conf, GROUP.name)


def list_opts() -> list[tuple[cfg.OptGroup, list[cfg.Opt]]]:
    # keystoneauth1's own options are documented by the group's help, not
    # listed: the sample would then change with every keystoneauth1 release.
    return [(GROUP, OPTS)]
