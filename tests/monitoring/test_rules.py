"""The alert rules and the dashboard as files: `promtool check rules` and `promtool test rules`
(tests/monitoring/rules-test.yaml: each alert fires on the series that should raise it, after its `for:`, and not
on healthy ones), the dashboard JSON is what tools/render-dashboard renders, every alert carries its runbook, and
the operator's metrics the rules use are the operator's real ones. Prometheus itself: test_prometheus.py."""

from __future__ import annotations

import json
import re
import shutil
import subprocess
import sys
from pathlib import Path

import pytest
import yaml
from prometheus_client import generate_latest
from prometheus_client.parser import text_string_to_metric_families

from bench import dashboard
from ringkv_operator import metrics as operator_metrics

REPO = Path(__file__).resolve().parents[2]
HERE = Path(__file__).resolve().parent
PROMTOOL = shutil.which("promtool")
needs_promtool = pytest.mark.skipif(PROMTOOL is None, reason="promtool is not installed (apt-get install "
                                    "prometheus; .ci/run does)")


@needs_promtool
def test_promtool_checks_the_rules() -> None:
    done = subprocess.run([str(PROMTOOL), "check", "rules", str(dashboard.RULES)], capture_output=True, text=True,
                          timeout=60, check=False)
    assert done.returncode == 0, done.stdout + done.stderr
    assert f"SUCCESS: {len(dashboard.rule_expressions(dashboard.RULES.read_text()))} rules found" in done.stdout


@needs_promtool
def test_promtool_unit_tests_every_alert() -> None:
    done = subprocess.run([str(PROMTOOL), "test", "rules", "rules-test.yaml"], capture_output=True, text=True,
                          timeout=120, check=False, cwd=HERE)
    assert done.returncode == 0, done.stdout[-6000:] + done.stderr[-3000:]
    tested = set(re.findall(r"alertname: (\w+)", (HERE / "rules-test.yaml").read_text()))
    alerts = {name for name, _ in dashboard.rule_expressions(dashboard.RULES.read_text())}
    assert alerts - tested == set(), "alerts without a promtool test"


def test_the_dashboard_json_is_what_the_script_renders() -> None:
    done = subprocess.run([sys.executable, str(REPO / "tools" / "render-dashboard"), "--check"],
                          capture_output=True, text=True, timeout=60, check=False)
    assert done.returncode == 0, done.stderr


def test_the_dashboard_is_a_well_formed_grafana_dashboard() -> None:
    doc = json.loads(dashboard.DASHBOARD.read_text())
    ids = [p["id"] for p in doc["panels"]]
    assert len(ids) == len(set(ids))
    assert {v["name"] for v in doc["templating"]["list"]} == {"datasource", "kvcluster"}
    sections = [p["title"] for p in doc["panels"] if p["type"] == "row"]
    assert sections == ["Cluster overview", "Replication health", "Storage", "Operations in flight"]
    for panel in dashboard.panels():
        assert panel.targets, panel.title
        for expr, _ in panel.targets:
            # every series selector is scoped to the chosen clusters
            for selector in re.findall(r"\b(ringkv_\w+|up)\{([^}]*)\}", expr):
                assert 'kvcluster=~"$kvcluster"' in selector[1], (panel.title, expr)
            assert not re.search(r"\b(ringkv_\w+|up)\b(?!\{)(?![\w(])", expr.replace("by (", "(")), expr


def test_every_alert_has_severity_summary_and_a_runbook_that_exists() -> None:
    doc = yaml.safe_load(dashboard.RULES.read_text())
    monitoring_doc = (REPO / "docs" / "monitoring.md").read_text()
    anchors = {re.sub(r"[^a-z0-9 -]", "", h.lower()).replace(" ", "-")
               for h in re.findall(r"^#+ (.+)$", monitoring_doc, re.MULTILINE)}
    for group in doc["groups"]:
        for rule in group["rules"]:
            assert rule["labels"]["severity"] in ("warning", "critical"), rule["alert"]
            notes = rule["annotations"]
            assert {"summary", "description", "runbook", "runbook_url"} <= set(notes), rule["alert"]
            anchor = notes["runbook_url"].rsplit("#", 1)[1]
            assert anchor in anchors, f"{rule['alert']}: docs/monitoring.md has no heading for #{anchor}"


def test_the_operator_metrics_the_rules_use_are_the_operators() -> None:
    live = operator_metrics.Metrics()
    live.observe("ns", "kv", {"phase": "Running", "readyReplicas": 3}, 3)
    exposed = set()
    for family in text_string_to_metric_families(generate_latest(live.registry).decode()):
        exposed.add(family.name)
        exposed.update(s.name for s in family.samples)
    used = {name for _, expr in dashboard.rule_expressions(dashboard.RULES.read_text())
            for name in re.findall(r"\bringkv_operator_\w+", expr)}
    assert used, "no operator alert"
    assert used - exposed == set()
