"""Where demand happens: which targets a demand event counts for.

Cinder says where a volume was made in two ways (DESIGN.md §3): the
volume's host string ``host@backend#pool`` (``volume.create.end``'s
payload ``host``, or its publisher id; the cache events' payload ``host``)
and the volume's availability zone (``volume.create.end`` only). Each
target lists the patterns of the sites that feed it (:class:`SiteConfig`,
``demand_backends``, ``demand_hosts`` and ``demand_zones`` in its config
group). An event counts for every target with a pattern that matches it.

Patterns are :func:`fnmatch.fnmatchcase` patterns (``*``, ``?``,
``[...]``), case-sensitive as Cinder's host strings are, and each is
matched against the part of ``host@backend#pool`` it spells:

* ``demand_backends``: a pattern without ``@`` against the backend name
  alone (``ceph-edge``); one with ``@`` but no ``#`` against
  ``host@backend``; one with both against the whole ``host@backend#pool``.
  A host string without ``@`` names no backend: backend patterns do not
  match it (``demand_hosts`` still can).
* ``demand_hosts``: against the host, the part before ``@`` (or before
  ``#`` when there is no ``@``).
* ``demand_zones``: against the availability zone.

Demand that no pattern matches, and demand with no site at all (Glance's
``image.send``: a download has no Cinder backend; a volume whose host and
zone are unknown) counts for the ``unmapped`` targets: ``*`` (every target, the
default) or a list of names. With no patterns anywhere, every event is
unmapped and counts everywhere, which is what warmer did before sites.

A target with ``wanted_anywhere`` wants every image that any target's
demand wants (a central site that holds everything); the mapper only
names those targets, the tracker applies it.

The map is pure: no I/O, no clock. Results are cached per distinct host
string and per zone (bounded), so after the first event from a host an
event costs two dict lookups whatever the number of patterns.
"""

from __future__ import annotations

import fnmatch
import re
from collections.abc import Iterable, Sequence
from dataclasses import dataclass
from typing import Any

from oslo_config import cfg

from warmer.events import Event, ImageCacheUsed, ImageSent, VolumeCreatedFromImage

EVERY_TARGET = "*"
# The one site of a daemon whose demand counts in every target (no
# patterns): its shared-state namespace is <[state] namespace>.demand.all-targets.
SHARED_SITE = "all-targets"
CACHE_SIZE = 4096  # distinct host strings (and zones) remembered


class SiteConfigError(cfg.Error):
    """A site mapping that cannot be used. The message names the option."""


@dataclass(frozen=True)
class SiteConfig:
    """One target's demand patterns (its config group's ``demand_*``)."""

    name: str
    backends: tuple[str, ...] = ()
    hosts: tuple[str, ...] = ()
    zones: tuple[str, ...] = ()
    wanted_anywhere: bool = False


@dataclass(frozen=True)
class _HostParts:
    whole: str           # host@backend#pool
    host_backend: str    # host@backend
    host: str
    backend: str | None  # None: the string has no "@"


def _split(value: str) -> _HostParts:
    """Split like Cinder's ``extract_host``: the pool follows the first
    ``#``, the backend follows the first ``@`` before it."""
    host_backend = value.partition("#")[0]
    host, at, backend = host_backend.partition("@")
    return _HostParts(value, host_backend, host, backend if at else None)


class _Matcher:
    """The compiled patterns of one option of one target."""

    def __init__(self, patterns: Iterable[str]) -> None:
        patterns = list(patterns)
        self.regex = (re.compile("|".join(f"(?:{fnmatch.translate(p)})" for p in patterns))
                      if patterns else None)

    def __call__(self, value: str | None) -> bool:
        return bool(self.regex is not None and value is not None
                    and self.regex.match(value))


class _Target:
    def __init__(self, site: SiteConfig) -> None:
        self.name = site.name
        self.backend = _Matcher(p for p in site.backends if "@" not in p)
        self.host_backend = _Matcher(p for p in site.backends if "@" in p and "#" not in p)
        self.whole = _Matcher(p for p in site.backends if "@" in p and "#" in p)
        self.host = _Matcher(site.hosts)
        self.zone = _Matcher(site.zones)

    def matches_host(self, parts: _HostParts) -> bool:
        return (self.backend(parts.backend) or self.whole(parts.whole)
                or self.host_backend(parts.host_backend) or self.host(parts.host))


class SiteMap:
    """Which targets an event's demand counts for (see the module's doc).

    Raises :class:`SiteConfigError` for patterns that can never match, an
    unknown or duplicate target name, or ``*`` mixed with names in
    ``unmapped``.
    """

    def __init__(self, sites: Sequence[SiteConfig],
                 unmapped: Sequence[str] = (EVERY_TARGET,),
                 *, cache_size: int = CACHE_SIZE) -> None:
        names = [s.name for s in sites]
        duplicates = sorted({n for n in names if names.count(n) > 1})
        if duplicates:
            raise SiteConfigError(f"targets named twice: {', '.join(duplicates)}")
        for site in sites:
            _check_site(site)
        self.targets: tuple[str, ...] = tuple(names)
        self.unmapped: frozenset[str] = _check_unmapped(unmapped, self.targets)
        self._targets = [_Target(s) for s in sites]
        self._has_host_patterns = any(s.backends or s.hosts for s in sites)
        self._has_zone_patterns = any(s.zones for s in sites)
        self._anywhere = frozenset(s.name for s in sites if s.wanted_anywhere)
        self._cache_size = cache_size
        self._by_host: dict[str, frozenset[str]] = {}
        self._by_zone: dict[str, frozenset[str]] = {}

    @classmethod
    def from_conf(cls, conf: cfg.ConfigOpts) -> SiteMap:
        """Build the map from ``[DEFAULT] enabled_targets``, each target
        group's ``demand_*`` and ``wanted_anywhere``, and ``[warming]
        unmapped_demand``. The target groups must be registered
        (:func:`warmer.conf.load` does it)."""
        sites = [SiteConfig(name, tuple(conf[name].demand_backends),
                            tuple(conf[name].demand_hosts), tuple(conf[name].demand_zones),
                            bool(conf[name].wanted_anywhere))
                 for name in conf.enabled_targets]
        unmapped = conf.warming.unmapped_demand
        if unmapped is None:
            # The targets that say nothing of where their demand comes from:
            # every target while none does, and none once all do.
            unmapped = [s.name for s in sites if not (s.backends or s.hosts or s.zones)]
            if len(unmapped) == len(sites):
                unmapped = [EVERY_TARGET]
        return cls(sites, unmapped)

    @property
    def has_patterns(self) -> bool:
        return self._has_host_patterns or self._has_zone_patterns

    @property
    def counts_everywhere(self) -> bool:
        """Every demand event counts for every target (no patterns, and
        unmapped demand goes everywhere): one shared site does it all."""
        return not self.has_patterns and self.unmapped == frozenset(self.targets)

    def sites_of(self, event: Event) -> frozenset[str]:
        """The targets where this event's demand counts. Never empty unless
        ``unmapped`` is empty or there are no targets. An event that is not
        demand (``image.*`` other than ``image.send``) counts nowhere: empty."""
        if isinstance(event, VolumeCreatedFromImage):
            return self.sites_of_host(event.backend_host, event.availability_zone)
        if isinstance(event, ImageCacheUsed):
            return self.sites_of_host(event.host)
        if isinstance(event, ImageSent):
            return self.unmapped
        return frozenset()

    def sites_of_host(self, host: str | None, zone: str | None = None) -> frozenset[str]:
        """The targets for demand from ``host@backend#pool`` (``None`` or
        ``""``: unknown) in availability zone ``zone``."""
        found = self._host_sites(host) if host and self._has_host_patterns else frozenset()
        if zone and self._has_zone_patterns:
            found = found | self._zone_sites(zone)
        return found or self.unmapped

    def wanted_anywhere_targets(self) -> frozenset[str]:
        """Targets that want every image any target's demand wants."""
        return self._anywhere

    def _host_sites(self, host: str) -> frozenset[str]:
        found = self._by_host.get(host)
        if found is None:
            parts = _split(host)
            found = frozenset(t.name for t in self._targets if t.matches_host(parts))
            self._remember(self._by_host, host, found)
        return found

    def _zone_sites(self, zone: str) -> frozenset[str]:
        found = self._by_zone.get(zone)
        if found is None:
            found = frozenset(t.name for t in self._targets if t.zone(zone))
            self._remember(self._by_zone, zone, found)
        return found

    def _remember(self, cache: dict[str, frozenset[str]], key: str,
                  value: frozenset[str]) -> None:
        # Bounded, oldest first out: a flood of made-up host strings costs
        # one match each, never memory without end.
        if len(cache) >= self._cache_size:
            del cache[next(iter(cache))]
        cache[key] = value


def _check_site(site: SiteConfig) -> None:
    for option, patterns in (("demand_backends", site.backends),
                             ("demand_hosts", site.hosts), ("demand_zones", site.zones)):
        for pattern in patterns:
            why = _never_matches(option, pattern)
            if why:
                raise SiteConfigError(f"[{site.name}] {option}: pattern {pattern!r} "
                                      f"can never match: {why}")


def _never_matches(option: str, pattern: Any) -> str | None:
    if not isinstance(pattern, str) or not pattern.strip():
        return "it is empty"
    if not pattern.isprintable():
        return "it has control characters, which Cinder's hosts and zones never have"
    if option == "demand_backends" and "#" in pattern and "@" not in pattern:
        return ("a pattern without '@' is matched against the backend name alone, "
                "which has no '#'; write '*@backend#pool' to match a pool")
    if option == "demand_hosts" and ("@" in pattern or "#" in pattern):
        return ("it is matched against the host before '@', which has no '@' or '#'; "
                "use demand_backends for 'host@backend#pool' patterns")
    return None


def _check_unmapped(unmapped: Sequence[str], targets: Sequence[str]) -> frozenset[str]:
    names = list(unmapped)
    if EVERY_TARGET in names:
        if len(names) != 1:
            raise SiteConfigError("[warming] unmapped_demand: '*' (every target) "
                                  "cannot be combined with target names")
        return frozenset(targets)
    unknown = [n for n in names if n not in targets]
    if unknown:
        raise SiteConfigError(
            f"[warming] unmapped_demand names {', '.join(map(repr, unknown))}, not in "
            f"[DEFAULT] enabled_targets ({', '.join(targets) or 'none'})")
    return frozenset(names)
