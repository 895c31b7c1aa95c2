"""The dashboard and the alerts against the real thing: a local 3-node cluster (one node per rack) under load,
scraped every second by a real Prometheus (Debian's `prometheus`), which also evaluates the shipped alert rules
with their `for:` cut to 2 s (expressions and thresholds as shipped).

- every metric name a dashboard panel or an alert uses is in a running node's exposition;
- every dashboard query, its variables substituted as Grafana would, evaluates and returns series;
- every alert expression evaluates;
- SIGKILL a node under write load: RingkvNodeDown fires for it, and RingkvHintsPilingUp for the nodes holding
  its hints (over 1000, not draining); after its restart both resolve.
"""

from __future__ import annotations

import re
import urllib.request
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import pytest
from prometheus_client.parser import text_string_to_metric_families

from bench import dashboard
from bench.compare import ringkv_base_port
from bench.prometheus import Prometheus, dashboard_expr, installed

from ..integration.cluster_helpers import print_logs, wait_until

pytestmark = [pytest.mark.slow, pytest.mark.timeout(300),
              pytest.mark.skipif(not installed(), reason="prometheus is not installed (apt-get install "
                                 "prometheus; .ci/run does)")]

# Panels that show something only while it happens; their queries must still evaluate.
ONLY_WHILE_ACTIVE = {"Operation progress"}
PROMQL_WORDS = {"sum", "max", "min", "by", "on", "and", "rate", "increase", "delta", "histogram_quantile",
                "clamp_min", "time", "le"}


@dataclass
class Monitored:
    cluster: dashboard.RackedCluster
    prom: Prometheus
    load: dashboard.Load


@pytest.fixture(scope="module")
def monitored(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Monitored]:
    root = tmp_path_factory.mktemp("monitored")
    cluster = dashboard.start_cluster(str(root / "cluster"), ringkv_base_port(3, set()))
    load = None
    try:
        with Prometheus(root / "prometheus", dashboard.targets(cluster),
                        rules=[dashboard.hurried_rules(dashboard.RULES.read_text())]) as prom:
            prom.wait_scraped(3)
            load = dashboard.Load(cluster).start()
            # data for every panel: requests by route, 404s, anti-entropy exchanges, rates over 15 s windows
            wait_until(lambda: prom.query(dashboard_expr(
                'sum(rate(ringkv_antientropy_exchanges_total{kvcluster=~"$kvcluster"}[$__rate_interval]))'
                ' > 0')) and load.acked > 2000, 60, "load and anti-entropy exchanges in Prometheus")
            yield Monitored(cluster, prom, load)
    except BaseException:
        print_logs(cluster)
        raise
    finally:
        if load is not None:
            load.stop()
        dashboard.stop_cluster(cluster)


def _used_names() -> dict[str, set[str]]:
    """Metric names of every dashboard panel and alert: name -> where it is used."""
    used: dict[str, set[str]] = {}
    exprs = [(p.title, e) for p in dashboard.panels() for e, _ in p.targets]
    exprs += dashboard.rule_expressions(dashboard.RULES.read_text())
    for where, expr in exprs:
        without_labels = re.sub(r"\{[^}]*\}|\[[^]]*\]|\"[^\"]*\"", "", expr)
        without_groupings = re.sub(r"\b(by|on|without|ignoring|group_left|group_right)\s*\([^)]*\)", "",
                                   without_labels)
        for name in re.findall(r"\b[a-zA-Z_:][a-zA-Z0-9_:]*\b", without_groupings):
            if name not in PROMQL_WORDS and not name.isdigit():
                used.setdefault(name, set()).add(where)
    return used


def test_every_metric_the_dashboard_and_the_alerts_use_is_in_a_nodes_exposition(monitored: Monitored) -> None:
    with urllib.request.urlopen(monitored.cluster.nodes[0].url + "/metrics", timeout=5) as r:
        text = r.read().decode()
    exposed = {"up"}  # Prometheus' own, per target
    for family in text_string_to_metric_families(text):
        exposed.update(s.name for s in family.samples)
    used = _used_names()
    node_names = {n: w for n, w in used.items() if not n.startswith("ringkv_operator_")}  # test_rules checks those
    assert len(node_names) > 30
    missing = {n: sorted(w) for n, w in node_names.items() if n not in exposed}
    assert missing == {}


def test_every_dashboard_query_returns_data_from_a_real_prometheus(monitored: Monitored) -> None:
    empty = []
    for panel in dashboard.panels():
        for expr, _ in panel.targets:
            result = monitored.prom.query(dashboard_expr(expr))
            if not result and panel.title not in ONLY_WHILE_ACTIVE:
                empty.append(f"{panel.title}: {expr}")
    assert empty == []
    by_rack = monitored.prom.query(dashboard_expr(
        'sum by (member_rack) (max by (member, member_rack) (ringkv_cluster_member_up{kvcluster=~"$kvcluster"}))'))
    assert {r["metric"]["member_rack"]: float(r["value"][1]) for r in by_rack} == \
        {"rack1": 1.0, "rack2": 1.0, "rack3": 1.0}
    scraped = monitored.prom.query(dashboard_expr('sum by (rack) (up{kvcluster=~"$kvcluster"})'))
    assert {r["metric"]["rack"]: float(r["value"][1]) for r in scraped} == {"rack1": 1.0, "rack2": 1.0,
                                                                             "rack3": 1.0}
    routes = monitored.prom.query(dashboard_expr(
        'sum by (route) (rate(ringkv_http_requests_total{kvcluster=~"$kvcluster"}[$__rate_interval]))'))
    assert {"/api/v1/put", "/api/v1/get"} <= {r["metric"]["route"] for r in routes}
    codes = monitored.prom.query(dashboard_expr(
        'sum by (code) (rate(ringkv_http_errors_total{kvcluster=~"$kvcluster"}[$__rate_interval]))'))
    assert "not_found" in {r["metric"]["code"] for r in codes}  # the load reads missing keys


def test_every_alert_expression_evaluates_and_none_fires_on_a_healthy_cluster(monitored: Monitored) -> None:
    for _, expr in dashboard.rule_expressions(dashboard.RULES.read_text()):
        monitored.prom.query(expr)  # raises on a PromQL error
    firing = [a["labels"]["alertname"] for a in monitored.prom.alerts() if a["state"] == "firing"]
    assert firing == []


def test_node_down_and_hints_piling_up_fire_for_real_and_resolve(monitored: Monitored) -> None:
    cluster, prom = monitored.cluster, monitored.prom
    victim = cluster.node("n3")
    cluster.kill(victim)
    wait_until(lambda: any(a.get("member") == "n3" and a.get("member_rack") == "rack3"
                           for a in prom.firing("RingkvNodeDown")), 60, "RingkvNodeDown firing for n3")
    # every write goes to n3 too (RF 3 on 3 nodes): the survivors keep hints for it, more than 1000
    piling = wait_until(lambda: prom.firing("RingkvHintsPilingUp"), 90, "RingkvHintsPilingUp firing")
    survivors = {f"127.0.0.1:{n.http_port}" for n in cluster.nodes if n is not victim}
    assert {a["instance"] for a in piling} <= survivors
    assert all(a["kvcluster"] == "local" and a["severity"] == "warning" for a in piling)
    cluster.start(victim)
    cluster.wait_ready([victim], timeout_s=60)
    wait_until(lambda: not prom.firing("RingkvNodeDown") and not prom.firing("RingkvHintsPilingUp"), 90,
               "both alerts to resolve once n3 is back and its hints delivered")


def test_hurried_rules_keep_the_shipped_expressions() -> None:
    shipped = dashboard.RULES.read_text()
    hurried = dashboard.hurried_rules(shipped)
    assert dashboard.rule_expressions(hurried) == dashboard.rule_expressions(shipped)
    assert re.findall(r"^\s+for: (\S+)$", hurried, re.MULTILINE) == \
        ["2s"] * len(re.findall(r"^\s+for: ", shipped, re.MULTILINE))
    assert Path(dashboard.RULES).exists()
