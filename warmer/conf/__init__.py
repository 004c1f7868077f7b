"""Configuration: one module per group, registered on a ConfigOpts we pass around."""

from __future__ import annotations

from oslo_config import cfg
from oslo_log import log

from warmer.conf import bus, glance, http, leader, popularity, service, state, targets, warming
from warmer.sites import SiteMap

_MODULES = (service, bus, glance, http, popularity, targets, warming, state, leader)


def register_opts(conf: cfg.ConfigOpts) -> None:
    for module in _MODULES:
        module.register_opts(conf)


def load(argv: list[str] | None = None, *,
         default_config_files: list[str] | None = None) -> cfg.ConfigOpts:
    """Build a fresh ConfigOpts, parse the command line and config files,
    and register the per-target groups that ``enabled_targets`` names.

    Raises :class:`warmer.sites.SiteConfigError` (a ``cfg.Error``) when the
    site mapping cannot be used: a pattern that can never match, or an
    ``unmapped_demand`` name that is not a target."""
    conf = cfg.ConfigOpts()
    log.register_options(conf)
    register_opts(conf)
    from warmer import __version__
    conf(argv, project="warmer", version=__version__,
         default_config_files=default_config_files)
    targets.register_target_groups(conf)
    SiteMap.from_conf(conf)  # fail at load, naming the option, not at first use
    return conf
