"""The shipped alert rules and Grafana dashboard (monitoring/): promtool
checks the rules and runs their unit tests, and every series they name is
one that warmer exports. tests/functional/test_prometheus.py evaluates them
against a live daemon."""

from __future__ import annotations

import json
import os
import re
import shutil
import subprocess
from pathlib import Path
from typing import Any

import pytest
from prometheus_client import generate_latest

from warmer.metrics import Metrics

MONITORING = Path(__file__).resolve().parents[2] / "monitoring"
RULES = MONITORING / "warmer-alerts.yaml"
RULE_TESTS = MONITORING / "warmer-alerts-test.yaml"
DASHBOARD = MONITORING / "warmer-dashboard.json"
METRIC = re.compile(r"\bwarmer_[a-z0-9_]+\b")


def promtool() -> str:
    found = shutil.which("promtool")
    if found is None:
        if os.environ.get("CI"):
            pytest.fail("promtool is missing in CI: tools/stack install-packages installs "
                        "Debian's prometheus package")
        pytest.skip("promtool is missing (Debian package prometheus; tools/bootstrap "
                    "installs it)")
    return found


def rule_exprs() -> dict[str, str]:
    import yaml
    doc = yaml.safe_load(RULES.read_text())
    return {r["alert"]: r["expr"] for g in doc["groups"] for r in g["rules"]}


def dashboard() -> dict[str, Any]:
    data: dict[str, Any] = json.loads(DASHBOARD.read_text())
    return data


def dashboard_exprs() -> list[str]:
    return [t["expr"] for p in dashboard()["panels"] for t in p.get("targets", [])]


def exported_names() -> set[str]:
    metrics = Metrics()
    metrics.start_targets(["edge"])
    metrics.add_state_collector(lambda: [("a", "edge", "images", "cold", "over_budget")],
                                lambda: 1, targets=["edge"])
    metrics.add_hands_off(dict)
    for name in ("bus", "glance"):
        metrics.dependency_up.labels(name).set(1)
    metrics.warm_duration.labels("edge", "warm").observe(1)
    metrics.changes.labels("edge", "images", "copied").inc()
    metrics.notification("volume.create.end", "handled")
    metrics.ceph_operations.labels("warmer", "open").inc()
    text = generate_latest(metrics.registry).decode()
    return {re.split(r"[{ ]", line)[0] for line in text.splitlines()
            if line and not line.startswith("#")}


def test_promtool_checks_the_alert_rules() -> None:
    out = subprocess.run([promtool(), "check", "rules", str(RULES)],
                         capture_output=True, text=True)
    assert out.returncode == 0, out.stdout + out.stderr


def test_each_alert_fires_on_its_series_and_not_on_a_healthy_fleet() -> None:
    out = subprocess.run([promtool(), "test", "rules", str(RULE_TESTS)],
                         capture_output=True, text=True, cwd=MONITORING)
    assert out.returncode == 0, out.stdout + out.stderr


def test_every_alert_has_a_unit_test_and_a_section_in_the_operations_doc() -> None:
    tests = RULE_TESTS.read_text()
    ops = (MONITORING.parent / "docs" / "operations.md").read_text()
    for name in rule_exprs():
        assert f"alertname: {name}" in tests, name
        assert f"### {name}" in ops, name


def test_rules_and_dashboard_name_only_series_that_warmer_exports() -> None:
    exported = exported_names()
    named = {m for e in [*rule_exprs().values(), *dashboard_exprs()] for m in METRIC.findall(e)}
    assert named and named <= exported, named - exported


def test_every_exported_metric_is_documented_in_the_operations_doc() -> None:
    ops = (MONITORING.parent / "docs" / "operations.md").read_text()
    families = {re.sub(r"_(bucket|count|sum|total|info)$", "", n) for n in exported_names()}
    missing = sorted(f for f in families if f not in ops)
    assert not missing, missing


def test_the_dashboard_is_grafana_json_on_its_datasource_variable() -> None:
    dash = dashboard()
    ids = [p["id"] for p in dash["panels"]]
    assert len(ids) == len(set(ids))
    variables = {v["name"] for v in dash["templating"]["list"]}
    assert variables == {"datasource", "target"}
    for panel in dash["panels"]:
        if panel["type"] == "row":
            continue
        assert panel["datasource"]["uid"] == "${datasource}", panel["title"]
        assert panel["targets"], panel["title"]
        for target in panel["targets"]:
            assert set(re.findall(r"\$\w+", target["expr"])) <= {"$target",
                                                                  "$__rate_interval"}
