"""The shipped dashboard and alert rules, against a real Prometheus that
scrapes a warmer daemon on the stack.

A private Prometheus (Debian's package, tools/stackclient/prometheus.py)
scrapes the daemon's metrics listener every second as job ``warmer`` and
loads monitoring/warmer-alerts.yaml. The daemon gets real work: an image
with demand at central and at edge (site patterns, so Cinder's volume
creates count per target), repaired at central and copied to edge, then
volume creates that find it warm and Cinder cache events. Then:

* every dashboard query (``$target`` = ``.*``, ``$__rate_interval`` = 15s)
  evaluates without error and returns a non-empty result;
* every alert rule is loaded and evaluated by Prometheus with health
  ``ok``; its expression evaluates without error; every metric it names
  has series from the daemon, and every label it matches on is a label of
  those series. Alerts are legitimately empty on a healthy daemon, so
  their result is not required to be non-empty; those about the daemon's
  own health (down, not ready, bus, Ceph, Glance, no leader) must be
  empty here.
"""

from __future__ import annotations

import json
import os
import re
import time
from collections.abc import Iterator
from pathlib import Path

import pytest
import yaml
from stackclient import Stack
from stackclient.cinder import CinderNotifier
from stackclient.daemon import Daemon
from stackclient.glance import Glance
from stackclient.prometheus import BINARY, Prometheus

from tests.functional.conftest import record_timing

MONITORING = Path(__file__).resolve().parents[2] / "monitoring"
RULES = MONITORING / "warmer-alerts.yaml"
DASHBOARD = MONITORING / "warmer-dashboard.json"
WARM = ("warm", "cloneable")
HEALTH_ALERTS = ("WarmerDown", "WarmerNotReady", "WarmerBusDown", "WarmerCephDown",
                 "WarmerGlanceDown", "WarmerNoLeader")
SELECTOR = re.compile(r"\b(warmer_[a-z0-9_]+|up)\b(\{[^}]*\})?")
MATCHER = re.compile(r"([a-zA-Z_][a-zA-Z0-9_]*)\s*(?:=~|!~|!=|=)")


@pytest.fixture
def site_daemon(stack: Stack) -> Iterator[Daemon]:
    d = Daemon(stack, name="prom", overrides=(
        "[central]\ndemand_backends = ceph-central\n"
        "[edge]\ndemand_backends = ceph-edge\n")).start()
    yield d
    d.kill()


@pytest.fixture
def prometheus(stack: Stack, site_daemon: Daemon) -> Iterator[Prometheus]:
    if not os.path.exists(BINARY):
        if os.environ.get("CI"):
            pytest.fail("prometheus is missing in CI (tools/stack install-packages)")
        pytest.skip("Debian's prometheus package is not installed")
    prom = Prometheus(stack.dir / f"prometheus-{site_daemon.pool}",
                      [f"127.0.0.1:{site_daemon.metrics_port}"], rule_files=[RULES]).start()
    yield prom
    prom.stop()


def panel_queries() -> list[tuple[str, str]]:
    dash = json.loads(DASHBOARD.read_text())
    return [(p["title"], t["expr"].replace("$target", ".*").replace("$__rate_interval", "15s"))
            for p in dash["panels"] for t in p.get("targets", [])]


def alert_rules() -> dict[str, str]:
    doc = yaml.safe_load(RULES.read_text())
    return {r["alert"]: r["expr"] for g in doc["groups"] for r in g["rules"]}


def test_every_dashboard_query_and_alert_rule_works_against_a_live_daemon(
        stack: Stack, site_daemon: Daemon, prometheus: Prometheus, glance: Glance) -> None:
    started = time.monotonic()
    at = {site: CinderNotifier(stack["TRANSPORT_URL"], host=f"cinder-{site}",
                               backend=f"ceph-{site}") for site in ("central", "edge")}
    try:
        image_id = glance.create("prometheus-panels")["id"]
        glance.upload(image_id, os.urandom(4 << 20))
        image = glance.get(image_id)
        for notifier in at.values():  # cold: nothing wanted yet
            for _ in range(3):
                notifier.volume_created(image)
        for target in ("central", "edge"):
            site_daemon.wait_until(lambda t=target: site_daemon.target_state(image_id, t) == WARM,
                                   30, f"warm in {target}")
        for notifier in at.values():  # warm now
            notifier.volume_created(image)
        at["edge"].cache_event("hit", image_id)
        at["central"].cache_event("miss", image_id)

        def scraped() -> bool:
            got = prometheus.query('sum(warmer_volume_creates_total{image_state="warm"}) >= 2'
                                   ' and sum(warmer_cinder_image_cache_total) >= 2')
            return bool(got)
        site_daemon.wait_until(scraped, 20, "Prometheus scraped the warm volume creates")
        time.sleep(2.5)  # a few more scrapes and rule evaluations

        creates = {(s["metric"]["target"], s["metric"]["image_state"]): float(s["value"][1])
                   for s in prometheus.query("warmer_volume_creates_total")}
        assert creates[("central", "cold")] == 3 and creates[("central", "warm")] == 1
        assert creates[("edge", "cold")] == 3 and creates[("edge", "warm")] == 1

        empty = []
        for title, expr in panel_queries():
            if not prometheus.query(expr):
                empty.append(f"{title}: {expr}")
        assert not empty, "dashboard queries without data:\n" + "\n".join(empty)

        rules = alert_rules()
        groups = prometheus.api("rules", type="alert")["groups"]
        loaded = {r["name"]: r for g in groups for r in g["rules"]}
        assert set(loaded) == set(rules)
        bad = {name: (r["health"], r.get("lastError")) for name, r in loaded.items()
               if r["health"] != "ok"}
        assert not bad, bad
        problems = []
        for name, expr in rules.items():
            result = prometheus.query(expr)  # raises unless it parses and evaluates
            if name in HEALTH_ALERTS and result:
                problems.append(f"{name} fires on a healthy daemon: {result}")
            for metric, matchers in SELECTOR.findall(expr):
                series = prometheus.series(metric)
                if not series:
                    problems.append(f"{name}: no series {metric}")
                    continue
                labels = set().union(*(s.keys() for s in series))
                for label in MATCHER.findall(matchers):
                    if label not in labels:
                        problems.append(f"{name}: {metric} has no label {label}")
        assert not problems, "\n".join(problems)
    finally:
        for notifier in at.values():
            notifier.close()
    record_timing("Prometheus: dashboard queries and alert rules checked",
                  time.monotonic() - started)
