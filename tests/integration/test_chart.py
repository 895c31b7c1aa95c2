"""The Helm chart and manifests/, checked with the real tools.

- `helm lint --strict` and `helm template` with a real helm (v4, installed by tools/k8s-tools);
- every rendered built-in object, and every file in manifests/, through `kubernetes-validate --strict` against
  the oldest Kubernetes the chart supports and the newest schemas available;
- custom resources, which kubernetes-validate cannot check: a KVCluster against the CRD's own openAPIV3Schema
  (jsonschema, with every object closed as the API server's strict field validation does) and its CEL rules
  (evaluated with a CEL interpreter, after applying the schema's defaults as the API server does); the
  prometheus-operator objects (ServiceMonitor, PodMonitors, PrometheusRule) by shape, and against the labels and
  ports the operator really gives the pods;
- the monitoring objects carry files/alerts and files/dashboards unchanged;
- manifests/ equal to what tools/render-manifests makes from the chart.

Tools that cannot be installed make these tests skip, naming the reason.
"""

from __future__ import annotations

import copy
import dataclasses
import json
import re
import subprocess
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from ringkv import config
from tests.unit.operator.crd_defaults import with_defaults

yaml = pytest.importorskip("yaml", reason="PyYAML is missing (pip install -e '.[dev]')")
jsonschema = pytest.importorskip("jsonschema", reason="jsonschema is missing (pip install -e '.[dev]')")
cel = pytest.importorskip("cel", reason="common-expression-language is missing (pip install -e '.[dev]')")

pytestmark = pytest.mark.timeout(600)  # the first run downloads helm (~37 MB)

TOP = Path(__file__).resolve().parents[2]
CHART = TOP / "charts" / "ringkv"
MANIFESTS = TOP / "manifests"
EXAMPLE = MANIFESTS / "examples" / "kvcluster.yaml"
RULES = CHART / "files" / "alerts" / "ringkv-rules.yaml"
DASHBOARD = CHART / "files" / "dashboards" / "ringkv.json"
# The chart's kubeVersion floor, and the newest schemas kubernetes-validate ships.
K8S_VERSIONS = ("1.29.0", "1.37.0")
CUSTOM_KINDS = {"KVCluster", "ServiceMonitor", "PodMonitor", "PrometheusRule"}
MONITORING = ("--set", "podMonitor.enabled=true", "--set", "prometheusRule.enabled=true",
              "--set", "grafanaDashboard.enabled=true")
MONITORING_KINDS = {"ServiceMonitor", "PodMonitor", "PrometheusRule", "ConfigMap"}
FULL = ("--set", "cluster.enabled=true", "--set", "serviceMonitor.enabled=true", *MONITORING)
# Node settings the operator derives from the KVCluster; everything else a node takes is spec.config.
OPERATOR_OWNED_SETTINGS = {"data_dir", "host", "port", "peer_port", "node_id", "advertise_host", "seeds",
                           "cluster_name", "replication_factor", "read_quorum", "write_quorum", "tokens", "rack",
                           "replace_node",  # per node, set by whoever replaces one (issue 13: the operator)
                          "insecure", "certs_dir", "tokens_file", "http_tls"}  # the cluster's security


@dataclasses.dataclass(frozen=True)
class Tools:
    helm: str
    kubernetes_validate: str


def tools_failure(stderr: str) -> str:
    """tools/k8s-tools' own last word on why it failed (its lines start with 'k8s-tools:')."""
    ours = [line for line in stderr.splitlines() if line.startswith("k8s-tools:")]
    return ours[-1] if ours else stderr.strip()[-600:]


@pytest.fixture(scope="module")
def tools() -> Tools:
    proc = subprocess.run(["bash", str(TOP / "tools" / "k8s-tools"), "helm", "validate"],
                          capture_output=True, text=True, timeout=540)
    if proc.returncode != 0:
        pytest.skip(f"helm / kubernetes-validate cannot be installed here: {tools_failure(proc.stderr)}")
    found = dict(line.split("=", 1) for line in proc.stdout.splitlines() if "=" in line)
    return Tools(helm=found["HELM"], kubernetes_validate=found["KUBERNETES_VALIDATE"])


def helm(tools: Tools, *args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run([tools.helm, *args], capture_output=True, text=True, timeout=120)


def render(tools: Tools, *values: str) -> list[dict[str, Any]]:
    proc = helm(tools, "template", "ringkv", str(CHART), "--namespace", "ringkv-system", *values)
    assert proc.returncode == 0, proc.stderr
    return [doc for doc in yaml.safe_load_all(proc.stdout) if doc]


def kubernetes_validate(tools: Tools, files: list[Path], version: str) -> str:
    """Runs `kubernetes-validate --strict`; fails the test unless every object passes. Returns the report."""
    proc = subprocess.run([tools.kubernetes_validate, "--strict", "--kubernetes-version", version,
                           *map(str, files)], capture_output=True, text=True, timeout=120)
    report = proc.stdout + proc.stderr
    assert proc.returncode == 0, report
    assert "Couldn't find schema" not in report, report
    return report


def by_kind(objects: list[dict[str, Any]], kind: str) -> list[dict[str, Any]]:
    return [o for o in objects if o["kind"] == kind]


def one(objects: list[dict[str, Any]], kind: str, name: str | None = None) -> dict[str, Any]:
    [found] = [o for o in by_kind(objects, kind) if name is None or o["metadata"]["name"] == name]
    return found


def operator_container(objects: list[dict[str, Any]]) -> dict[str, Any]:
    [container] = one(objects, "Deployment")["spec"]["template"]["spec"]["containers"]
    return container  # type: ignore[no-any-return]


def env_of(container: dict[str, Any]) -> dict[str, Any]:
    return {e["name"]: e.get("value", e.get("valueFrom")) for e in container["env"]}


@pytest.fixture(scope="module")
def default_objects(tools: Tools) -> list[dict[str, Any]]:
    return render(tools)


@pytest.fixture(scope="module")
def full_objects(tools: Tools) -> list[dict[str, Any]]:
    return render(tools, *FULL)


@pytest.fixture(scope="module")
def crd(default_objects: list[dict[str, Any]]) -> dict[str, Any]:
    return one(default_objects, "CustomResourceDefinition")


@pytest.fixture(scope="module")
def kvcluster_schema(crd: dict[str, Any]) -> dict[str, Any]:
    [version] = crd["spec"]["versions"]
    return version["schema"]["openAPIV3Schema"]  # type: ignore[no-any-return]


# -- the CRD's schema, as the API server applies it ------------------------------------------------------------


def closed(schema: dict[str, Any]) -> dict[str, Any]:
    """The schema with every object that lists its properties closed: strict field validation (kubectl's
    default) rejects unknown fields where a structural schema would prune them."""
    out = copy.deepcopy(schema)

    def close(node: Any) -> None:
        if isinstance(node, dict):
            if "properties" in node and "additionalProperties" not in node \
                    and not node.get("x-kubernetes-preserve-unknown-fields"):
                node["additionalProperties"] = False
            for value in node.values():
                close(value)
        elif isinstance(node, list):
            for value in node:
                close(value)

    close(out)
    return out


def cel_rules(schema: dict[str, Any], path: tuple[str, ...] = ()) -> Iterator[tuple[tuple[str, ...], dict[str, Any]]]:
    for rule in schema.get("x-kubernetes-validations", []):
        yield path, rule
    for name, prop in schema.get("properties", {}).items():
        yield from cel_rules(prop, (*path, name))


def lookup(obj: Any, path: tuple[str, ...]) -> tuple[bool, Any]:
    for name in path:
        if not isinstance(obj, dict) or name not in obj:
            return False, None
        obj = obj[name]
    return True, obj


def cel_errors(schema: dict[str, Any], new: dict[str, Any], old: dict[str, Any] | None = None) -> list[str]:
    """Messages of the CEL rules `new` breaks (transition rules, those naming oldSelf, only with `old`)."""
    new, errors = with_defaults(schema, new), []
    old = with_defaults(schema, old) if old is not None else None
    for path, rule in cel_rules(schema):
        present, value = lookup(new, path)
        if not present:
            continue  # like the API server: a rule of an absent field does not run
        variables = {"self": value}
        if "oldSelf" in rule["rule"]:
            old_present, old_value = lookup(old, path) if old is not None else (False, None)
            if not old_present:
                continue
            variables["oldSelf"] = old_value
        if cel.evaluate(rule["rule"], variables) is not True:
            errors.append(rule["message"])
    return errors


def schema_errors(schema: dict[str, Any], obj: dict[str, Any]) -> list[str]:
    validator = jsonschema.Draft7Validator(closed(schema))
    return [f"{'.'.join(map(str, e.absolute_path)) or '<root>'}: {e.message}" for e in validator.iter_errors(obj)]


def kvcluster(**spec: Any) -> dict[str, Any]:
    return {"apiVersion": "ringkv.io/v1alpha1", "kind": "KVCluster", "metadata": {"name": "t"}, "spec": spec}


# -- ServiceMonitor: no schema ships for it, so check the fields used against prometheus-operator's v1 API -----

SERVICE_MONITOR_SHAPE: dict[str, Any] = {
    "type": "object",
    "additionalProperties": False,
    "required": ["apiVersion", "kind", "metadata", "spec"],
    "properties": {
        "apiVersion": {"const": "monitoring.coreos.com/v1"},
        "kind": {"const": "ServiceMonitor"},
        "metadata": {
            "type": "object", "required": ["name", "namespace"],
            "properties": {"name": {"type": "string"}, "namespace": {"type": "string"},
                           "labels": {"type": "object", "additionalProperties": {"type": "string"}}},
        },
        "spec": {
            "type": "object", "additionalProperties": False, "required": ["selector", "endpoints"],
            "properties": {
                "jobLabel": {"type": "string"},
                "namespaceSelector": {
                    "type": "object", "additionalProperties": False,
                    "properties": {"any": {"type": "boolean"},
                                   "matchNames": {"type": "array", "items": {"type": "string"}}},
                },
                "selector": {
                    "type": "object", "additionalProperties": False,
                    "properties": {"matchLabels": {"type": "object", "additionalProperties": {"type": "string"}},
                                   "matchExpressions": {"type": "array"}},
                },
                "endpoints": {
                    "type": "array", "minItems": 1,
                    "items": {
                        "type": "object", "additionalProperties": False, "required": ["port"],
                        "properties": {
                            "port": {"type": "string"},
                            "path": {"type": "string"},
                            "scheme": {"enum": ["http", "https"]},
                            "interval": {"type": "string", "pattern": "^(0|(([0-9]+)y)?(([0-9]+)w)?(([0-9]+)d)?"
                                                                      "(([0-9]+)h)?(([0-9]+)m)?(([0-9]+)s)?"
                                                                      "(([0-9]+)ms)?)$"},
                            "scrapeTimeout": {"type": "string"},
                            "relabelings": {
                                "type": "array",
                                "items": {
                                    "type": "object", "additionalProperties": False,
                                    "properties": {
                                        "sourceLabels": {"type": "array", "items": {
                                            "type": "string", "pattern": "^[a-zA-Z_][a-zA-Z0-9_]*$"}},
                                        "targetLabel": {"type": "string"},
                                        "regex": {"type": "string"}, "replacement": {"type": "string"},
                                        "action": {"type": "string"},
                                    },
                                },
                            },
                        },
                    },
                },
            },
        },
    },
}


RELABELINGS: dict[str, Any] = SERVICE_MONITOR_SHAPE["properties"]["spec"]["properties"]["endpoints"]["items"][
    "properties"]["relabelings"]

# -- PodMonitor and PrometheusRule: likewise, the fields used, against prometheus-operator's v1 API --------------

POD_MONITOR_SHAPE: dict[str, Any] = {
    "type": "object",
    "additionalProperties": False,
    "required": ["apiVersion", "kind", "metadata", "spec"],
    "properties": {
        "apiVersion": {"const": "monitoring.coreos.com/v1"},
        "kind": {"const": "PodMonitor"},
        "metadata": SERVICE_MONITOR_SHAPE["properties"]["metadata"],
        "spec": {
            "type": "object", "additionalProperties": False, "required": ["selector", "podMetricsEndpoints"],
            "properties": {
                "jobLabel": {"type": "string"},
                "namespaceSelector": SERVICE_MONITOR_SHAPE["properties"]["spec"]["properties"]["namespaceSelector"],
                "selector": SERVICE_MONITOR_SHAPE["properties"]["spec"]["properties"]["selector"],
                "podMetricsEndpoints": {
                    "type": "array", "minItems": 1,
                    "items": {
                        "type": "object", "additionalProperties": False, "required": ["port"],
                        "properties": {
                            "port": {"type": "string"},
                            "path": {"type": "string"},
                            "scheme": {"enum": ["http", "https"]},
                            "interval": SERVICE_MONITOR_SHAPE["properties"]["spec"]["properties"]["endpoints"][
                                "items"]["properties"]["interval"],
                            "scrapeTimeout": {"type": "string"},
                            "honorLabels": {"type": "boolean"},
                            "tlsConfig": {"type": "object"},
                            "relabelings": RELABELINGS,
                        },
                    },
                },
            },
        },
    },
}

PROMETHEUS_RULE_SHAPE: dict[str, Any] = {
    "type": "object",
    "additionalProperties": False,
    "required": ["apiVersion", "kind", "metadata", "spec"],
    "properties": {
        "apiVersion": {"const": "monitoring.coreos.com/v1"},
        "kind": {"const": "PrometheusRule"},
        "metadata": SERVICE_MONITOR_SHAPE["properties"]["metadata"],
        "spec": {
            "type": "object", "additionalProperties": False, "required": ["groups"],
            "properties": {
                "groups": {
                    "type": "array", "minItems": 1,
                    "items": {
                        "type": "object", "additionalProperties": False, "required": ["name", "rules"],
                        "properties": {
                            "name": {"type": "string", "minLength": 1},
                            "interval": {"type": "string"},
                            "rules": {
                                "type": "array", "minItems": 1,
                                "items": {
                                    "type": "object", "additionalProperties": False, "required": ["expr"],
                                    "oneOf": [{"required": ["alert"]}, {"required": ["record"]}],
                                    "properties": {
                                        "alert": {"type": "string"}, "record": {"type": "string"},
                                        "expr": {"type": "string", "minLength": 1},
                                        "for": {"type": "string"}, "keep_firing_for": {"type": "string"},
                                        "labels": {"type": "object", "additionalProperties": {"type": "string"}},
                                        "annotations": {"type": "object",
                                                        "additionalProperties": {"type": "string"}},
                                    },
                                },
                            },
                        },
                    },
                },
            },
        },
    },
}


def prometheus_label(pod_label: str) -> str:
    """The meta label Kubernetes service discovery gives a pod label (every character outside [a-zA-Z0-9_]
    becomes _)."""
    return "__meta_kubernetes_pod_label_" + re.sub(r"[^a-zA-Z0-9_]", "_", pod_label)


def relabeled(endpoint: dict[str, Any]) -> dict[str, list[str]]:
    """target label -> the source labels it is copied from (plain `replace` relabelings)."""
    return {r["targetLabel"]: r.get("sourceLabels", []) for r in endpoint["relabelings"]
            if r.get("action", "replace") == "replace"}


def node_pods(racks: list[dict[str, str]]) -> list[dict[str, Any]]:
    """The pod templates of the StatefulSets the operator really builds for a KVCluster "demo" in namespace db."""
    from ringkv_operator import plan, resources, settings
    from ringkv_operator import spec as specmod
    from tests.unit.operator.samples import kvcluster as sample

    cluster = specmod.parse(sample(replicas=3, replicationFactor=3, racks=racks))
    objects = resources.all_objects(cluster, plan.desired_shape(cluster), settings.Settings())
    return [o["spec"]["template"] for o in objects if o["kind"] == "StatefulSet"]


# -- helm ------------------------------------------------------------------------------------------------------


@pytest.mark.parametrize("values", [(), FULL], ids=["defaults", "everything"])
def test_helm_lint(tools: Tools, values: tuple[str, ...]) -> None:
    proc = helm(tools, "lint", "--strict", str(CHART), *values)
    assert proc.returncode == 0, proc.stdout + proc.stderr
    assert "0 chart(s) failed" in proc.stdout


def test_default_render_has_the_operator_and_no_optional_objects(default_objects: list[dict[str, Any]]) -> None:
    kinds = sorted(o["kind"] for o in default_objects)
    assert kinds == ["ClusterRole", "ClusterRoleBinding", "CustomResourceDefinition", "Deployment", "ServiceAccount"]


def test_full_render_adds_the_kvcluster_and_the_monitoring_objects(full_objects: list[dict[str, Any]]) -> None:
    kinds = sorted(o["kind"] for o in full_objects if o["kind"] in MONITORING_KINDS | {"KVCluster"})
    assert kinds == ["ConfigMap", "KVCluster", "PodMonitor", "PodMonitor", "PrometheusRule", "ServiceMonitor"]


@pytest.mark.parametrize("values", [(), ("--set", "cluster.enabled=true")], ids=["defaults", "cluster"])
def test_no_monitoring_objects_by_default(tools: Tools, values: tuple[str, ...]) -> None:
    assert [o["kind"] for o in render(tools, *values) if o["kind"] in MONITORING_KINDS] == []


@pytest.mark.parametrize("switch", ["podMonitor", "prometheusRule", "grafanaDashboard", "serviceMonitor"])
def test_each_monitoring_object_has_its_own_switch(tools: Tools, switch: str) -> None:
    kinds = sorted(o["kind"] for o in render(tools, "--set", f"{switch}.enabled=true") if o["kind"] in MONITORING_KINDS)
    assert kinds == {"podMonitor": ["PodMonitor", "PodMonitor"], "prometheusRule": ["PrometheusRule"],
                     "grafanaDashboard": ["ConfigMap"], "serviceMonitor": ["ServiceMonitor"]}[switch]


@pytest.mark.parametrize("values", [(), FULL], ids=["defaults", "everything"])
def test_rendered_objects_pass_kubernetes_validate_strict(tools: Tools, tmp_path: Path,
                                                          values: tuple[str, ...]) -> None:
    objects = render(tools, *values)
    builtin = [o for o in objects if o["kind"] not in CUSTOM_KINDS]
    rendered = tmp_path / "rendered.yaml"
    rendered.write_text(yaml.safe_dump_all(builtin, sort_keys=False))
    for version in K8S_VERSIONS:
        report = kubernetes_validate(tools, [rendered], version)
        assert report.count("passed for resource") == len(builtin), report


def test_kubernetes_validate_strict_rejects_an_unknown_field(tools: Tools, tmp_path: Path,
                                                             default_objects: list[dict[str, Any]]) -> None:
    """The control: the validation above would notice a misspelt field."""
    deployment = copy.deepcopy(one(default_objects, "Deployment"))
    deployment["spec"]["template"]["spec"]["containers"][0]["livenesProbe"] = {}
    bad = tmp_path / "bad.yaml"
    bad.write_text(yaml.safe_dump(deployment))
    proc = subprocess.run([tools.kubernetes_validate, "--strict", str(bad)], capture_output=True, text=True,
                          timeout=120)
    assert proc.returncode != 0
    assert "livenesProbe" in proc.stdout + proc.stderr


def test_network_policy_admits_internode_traffic_only_from_the_clusters_nodes(
        full_objects: list[dict[str, Any]]) -> None:
    policy = one(full_objects, "NetworkPolicy")
    kvcluster = one(full_objects, "KVCluster")
    nodes = {"app.kubernetes.io/name": "ringkv", "app.kubernetes.io/instance": kvcluster["metadata"]["name"],
             "app.kubernetes.io/component": "node"}  # the labels the operator puts on the cluster's pods
    assert policy["spec"]["podSelector"]["matchLabels"] == nodes
    assert policy["spec"]["policyTypes"] == ["Ingress"]
    peer, http = policy["spec"]["ingress"]
    assert peer == {"from": [{"podSelector": {"matchLabels": nodes}}], "ports": [{"protocol": "TCP", "port": 7070}]}
    assert http == {"ports": [{"protocol": "TCP", "port": 8080}]}  # from anywhere, Prometheus included
    from ringkv_operator import resources, spec  # the operator labels its pods exactly so
    assert resources.selector_labels(spec.parse({"metadata": {"name": kvcluster["metadata"]["name"],
                                                              "namespace": "x"}, "spec": {}})) == nodes


def test_network_policy_admits_prometheus_when_httpfrom_narrows_the_api(tools: Tools) -> None:
    team = {"namespaceSelector": {"matchLabels": {"team": "a"}}}
    prometheus = {"namespaceSelector": {"matchLabels": {"kubernetes.io/metadata.name": "monitoring"}}}
    narrowed = ("--set", "cluster.enabled=true", "--set-json", f"cluster.networkPolicy.httpFrom=[{json.dumps(team)}]")
    _, http = one(render(tools, *narrowed), "NetworkPolicy")["spec"]["ingress"]
    assert http == {"ports": [{"protocol": "TCP", "port": 8080}], "from": [team]}  # Prometheus shut out
    _, http, metrics = one(render(tools, *narrowed, "--set-json",
                                  f"cluster.networkPolicy.metricsFrom=[{json.dumps(prometheus)}]"),
                           "NetworkPolicy")["spec"]["ingress"]
    assert metrics == {"ports": [{"protocol": "TCP", "port": 8080}], "from": [prometheus]}


def test_servicemonitor_has_the_prometheus_operator_shape(full_objects: list[dict[str, Any]]) -> None:
    monitor = one(full_objects, "ServiceMonitor")
    assert schema_errors(SERVICE_MONITOR_SHAPE, monitor) == []
    [endpoint] = monitor["spec"]["endpoints"]
    assert endpoint["port"] == "http"
    assert endpoint["path"] == "/metrics"
    # kvcluster from the client Service's app.kubernetes.io/instance (the operator sets it to the cluster's name,
    # as on the pods); rack and pod from the pod behind each endpoint, as the PodMonitor does.
    assert relabeled(endpoint) == {
        "kvcluster": ["__meta_kubernetes_service_label_app_kubernetes_io_instance"],
        "rack": [prometheus_label("ringkv.io/rack")], "pod": ["__meta_kubernetes_pod_name"]}


def test_shapes_notice_a_misspelt_field(full_objects: list[dict[str, Any]]) -> None:
    """The control: the shape checks above and below would notice a field prometheus-operator does not have."""
    monitor = copy.deepcopy(one(full_objects, "PodMonitor", "ringkv-nodes"))
    monitor["spec"]["podMetricEndpoints"] = monitor["spec"].pop("podMetricsEndpoints")
    assert schema_errors(POD_MONITOR_SHAPE, monitor)
    rule = copy.deepcopy(one(full_objects, "PrometheusRule"))
    rule["spec"]["groups"][0]["rules"][0]["annotation"] = {}
    assert schema_errors(PROMETHEUS_RULE_SHAPE, rule)


# -- monitoring: PodMonitors, PrometheusRule, dashboard ----------------------------------------------------------


def test_podmonitors_have_the_prometheus_operator_shape(full_objects: list[dict[str, Any]]) -> None:
    monitors = by_kind(full_objects, "PodMonitor")
    assert sorted(m["metadata"]["name"] for m in monitors) == ["ringkv-nodes", "ringkv-operator"]
    for monitor in monitors:
        assert schema_errors(POD_MONITOR_SHAPE, monitor) == []
        assert monitor["metadata"]["namespace"] == "ringkv-system"


def test_node_podmonitor_selects_every_kvclusters_node_pods(full_objects: list[dict[str, Any]]) -> None:
    monitor = one(full_objects, "PodMonitor", "ringkv-nodes")
    spec = monitor["spec"]
    assert spec["namespaceSelector"] == {"any": True}
    assert spec["selector"] == {"matchLabels": {"app.kubernetes.io/name": "ringkv",
                                                "app.kubernetes.io/component": "node"}}
    [endpoint] = spec["podMetricsEndpoints"]
    assert (endpoint["port"], endpoint["path"], endpoint["scheme"]) == ("http", "/metrics", "http")
    # The pods the operator really makes, with and without racks: selected, and with the port scraped.
    for racks in ([], [{"name": "a"}, {"name": "b"}, {"name": "c"}]):
        templates = node_pods(racks)
        assert templates
        for template in templates:
            assert spec["selector"]["matchLabels"].items() <= template["metadata"]["labels"].items()
            [container] = template["spec"]["containers"]
            assert "http" in {p["name"] for p in container["ports"]}


def test_node_podmonitor_labels_kvcluster_rack_pod_and_namespace(full_objects: list[dict[str, Any]]) -> None:
    [endpoint] = one(full_objects, "PodMonitor", "ringkv-nodes")["spec"]["podMetricsEndpoints"]
    assert relabeled(endpoint) == {
        "kvcluster": [prometheus_label("app.kubernetes.io/instance")],
        "rack": ["__meta_kubernetes_pod_label_ringkv_io_rack"],
        "pod": ["__meta_kubernetes_pod_name"],
        "namespace": ["__meta_kubernetes_namespace"]}
    # The pod labels those come from are the operator's: instance is the KVCluster's name, ringkv.io/rack the rack.
    from ringkv_operator import plan
    assert plan.RACK_LABEL == "ringkv.io/rack"
    labels = [t["metadata"]["labels"] for t in node_pods([{"name": "a"}, {"name": "b"}, {"name": "c"}])]
    assert sorted(lab[plan.RACK_LABEL] for lab in labels) == ["a", "b", "c"]
    assert {lab["app.kubernetes.io/instance"] for lab in labels} == {"demo"}


def test_operator_podmonitor_scrapes_the_operators_metrics_port(full_objects: list[dict[str, Any]]) -> None:
    spec = one(full_objects, "PodMonitor", "ringkv-operator")["spec"]
    assert spec["namespaceSelector"] == {"matchNames": ["ringkv-system"]}
    template = one(full_objects, "Deployment")["spec"]["template"]
    assert spec["selector"]["matchLabels"].items() <= template["metadata"]["labels"].items()
    assert spec["selector"]["matchLabels"]["app.kubernetes.io/component"] == "operator"
    [endpoint] = spec["podMetricsEndpoints"]
    assert endpoint["port"] == "metrics" and endpoint["path"] == "/metrics"
    assert endpoint["port"] in {p["name"] for p in operator_container(full_objects)["ports"]}
    # The operator's series name KVClusters by namespace and name: theirs must win over the target's namespace.
    assert endpoint["honorLabels"] is True
    assert "kvcluster" not in relabeled(endpoint)


def test_no_operator_podmonitor_without_operator_metrics(tools: Tools) -> None:
    objects = render(tools, "--set", "podMonitor.enabled=true", "--set", "operator.metricsPort=0")
    assert [m["metadata"]["name"] for m in by_kind(objects, "PodMonitor")] == ["ringkv-nodes"]


def test_podmonitor_values(tools: Tools) -> None:
    objects = render(tools, "--set", "podMonitor.enabled=true", "--set", "podMonitor.labels.release=kps",
                     "--set", "podMonitor.interval=15s", "--set", "podMonitor.scheme=https",
                     "--set", "podMonitor.tlsConfig.insecureSkipVerify=true",
                     "--set-json", 'podMonitor.namespaceSelector={"matchNames": ["db"]}')
    for monitor in by_kind(objects, "PodMonitor"):
        assert monitor["metadata"]["labels"]["release"] == "kps"
        assert monitor["spec"]["podMetricsEndpoints"][0]["interval"] == "15s"
    nodes = one(objects, "PodMonitor", "ringkv-nodes")["spec"]
    assert nodes["namespaceSelector"] == {"matchNames": ["db"]}
    assert nodes["podMetricsEndpoints"][0]["scheme"] == "https"
    assert nodes["podMetricsEndpoints"][0]["tlsConfig"] == {"insecureSkipVerify": True}
    assert schema_errors(POD_MONITOR_SHAPE, one(objects, "PodMonitor", "ringkv-nodes")) == []


def test_servicemonitor_namespaces_by_name(tools: Tools) -> None:
    objects = render(tools, "--set", "serviceMonitor.enabled=true",
                     "--set-json", 'serviceMonitor.namespaceSelector={"matchNames": ["db"]}')
    assert one(objects, "ServiceMonitor")["spec"]["namespaceSelector"] == {"matchNames": ["db"]}  # no any: true


def test_prometheusrule_is_the_rules_file_unchanged(full_objects: list[dict[str, Any]]) -> None:
    rule = one(full_objects, "PrometheusRule")
    assert schema_errors(PROMETHEUS_RULE_SHAPE, rule) == []
    source = yaml.safe_load(RULES.read_text())
    assert set(source) == {"groups"}
    assert rule["spec"] == {"groups": source["groups"]}
    # Prometheus' own templates reach it as written, not rendered (or emptied) by Helm.
    [node_down] = [r for g in rule["spec"]["groups"] for r in g["rules"] if r.get("alert") == "RingkvNodeDown"]
    assert node_down["annotations"]["summary"] == ("ringkv node {{ $labels.member }} ({{ $labels.member_rack }}) "
                                                   "is down in {{ $labels.kvcluster }}")


def test_prometheusrule_labels(tools: Tools) -> None:
    objects = render(tools, "--set", "prometheusRule.enabled=true", "--set", "prometheusRule.labels.release=kps")
    assert one(objects, "PrometheusRule")["metadata"]["labels"]["release"] == "kps"


def test_dashboard_configmap_holds_the_dashboard_file_verbatim(full_objects: list[dict[str, Any]]) -> None:
    config_map = one(full_objects, "ConfigMap")
    assert config_map["metadata"]["name"] == "ringkv-dashboard"
    assert config_map["metadata"]["namespace"] == "ringkv-system"
    assert config_map["metadata"]["labels"]["grafana_dashboard"] == "1"
    assert set(config_map["data"]) == {"ringkv.json"}
    assert config_map["data"]["ringkv.json"] == DASHBOARD.read_text()
    assert json.loads(config_map["data"]["ringkv.json"]) == json.loads(DASHBOARD.read_text())


def test_dashboard_configmap_labels_annotations_and_namespace(tools: Tools) -> None:
    objects = render(tools, "--set", "grafanaDashboard.enabled=true", "--set", "grafanaDashboard.namespace=monitoring",
                     "--set", "grafanaDashboard.annotations.grafana_folder=ringkv",
                     "--set", "grafanaDashboard.labels.dashboards=ringkv",
                     "--set", "grafanaDashboard.labels.grafana_dashboard=null")  # a sidecar with another label
    metadata = one(objects, "ConfigMap")["metadata"]
    assert metadata["namespace"] == "monitoring"
    assert metadata["annotations"] == {"grafana_folder": "ringkv"}
    assert metadata["labels"]["dashboards"] == "ringkv"
    assert "grafana_dashboard" not in metadata["labels"]


@pytest.mark.parametrize(("values", "complaint"), [
    (("--set", "cluster.replicas=0"), "replicas"),
    (("--set", "image.pullPolicy=Sometimes"), "pullPolicy"),
    (("--set", "cluster.storage.size=-1Gi"), "size"),
    (("--set", "operator.bogus=1"), "bogus"),
    (("--set", "operator.metricsPort=8080"), "metricsPort"),
    (("--set", "operator.metricsPort=70000"), "metricsPort"),
    (("--set", "podMonitor.scheme=ftp"), "scheme"),
    (("--set", "podMonitor.bogus=1"), "bogus"),
    (("--set", "prometheusRule.bogus=1"), "bogus"),
    (("--set", "grafanaDashboard.labels.x=1"), "labels"),
    (("--set", "cluster.networkPolicy.metricsFrom=x"), "metricsFrom"),
], ids=["replicas-0", "pull-policy", "negative-storage", "unknown-value", "metrics-port-healthz",
        "metrics-port-range", "podmonitor-scheme", "podmonitor-unknown", "prometheusrule-unknown",
        "dashboard-label-not-string", "metrics-from-not-list"])
def test_values_schema_rejects_bad_values(tools: Tools, values: tuple[str, ...], complaint: str) -> None:
    proc = helm(tools, "template", "ringkv", str(CHART), *values)
    assert proc.returncode != 0
    assert complaint in proc.stderr


def test_notes_tell_how_to_reach_the_api(tools: Tools) -> None:
    proc = helm(tools, "install", "ringkv", str(CHART), "--dry-run=client", "--namespace", "ringkv-system",
                "--set", "cluster.enabled=true")
    assert proc.returncode == 0, proc.stderr
    notes = proc.stdout.split("NOTES:", 1)[1]
    assert "kubectl -n ringkv-system port-forward service/ringkv 8080:8080" in notes
    assert "curl -XPOST localhost:8080/api/v1/put" in notes
    assert "curl 'localhost:8080/api/v1/get?key=hello' -H \"Authorization: Bearer $TOKEN\"" in notes
    assert "get secret ringkv-admin-token -o jsonpath='{.data.token}'" in notes


# -- the operator's objects ------------------------------------------------------------------------------------


def test_operator_deployment(default_objects: list[dict[str, Any]]) -> None:
    deployment = one(default_objects, "Deployment")
    spec = deployment["spec"]
    assert spec["replicas"] == 1
    assert spec["strategy"] == {"type": "Recreate"}
    pod = spec["template"]["spec"]
    assert pod["serviceAccountName"] == one(default_objects, "ServiceAccount")["metadata"]["name"]
    assert pod["securityContext"]["runAsNonRoot"] is True
    assert pod["securityContext"]["runAsUser"] == 10001
    [container] = pod["containers"]
    assert container["image"] == "ringkv:0.1.0"
    assert container["command"][:4] == ["kopf", "run", "-m", "ringkv_operator.handlers"]
    assert "--all-namespaces" in container["command"]
    assert "--liveness=http://0.0.0.0:8080/healthz" in container["command"]
    probe = container["livenessProbe"]["httpGet"]
    ports = {p["name"]: p["containerPort"] for p in container["ports"]}
    assert probe["path"] == "/healthz" and ports[probe["port"]] == 8080
    assert ports == {"healthz": 8080, "metrics": 8081}
    security = container["securityContext"]
    assert security["readOnlyRootFilesystem"] is True
    assert security["allowPrivilegeEscalation"] is False
    assert security["capabilities"] == {"drop": ["ALL"]}
    assert container["resources"]["requests"] and container["resources"]["limits"]
    assert "healthcheck" not in str(container).lower()


@pytest.mark.parametrize(("values", "port"), [((), 8081), (("--set", "operator.metricsPort=9100"), 9100),
                                              (("--set", "operator.metricsPort=0"), 0)],
                         ids=["default", "9100", "off"])
def test_operator_metrics_port_and_env(tools: Tools, values: tuple[str, ...], port: int) -> None:
    from ringkv_operator import settings
    container = operator_container(render(tools, *values))
    ports = {p["name"]: p for p in container["ports"]}
    if port:
        assert ports["metrics"] == {"name": "metrics", "containerPort": port, "protocol": "TCP"}
    else:
        assert set(ports) == {"healthz"}
    env = env_of(container)
    assert env["RINGKV_OPERATOR_METRICS_PORT"] == str(port)
    # What the operator makes of its environment (the names it knows, the port it serves on).
    assert set(env) <= settings.ENV_NAMES
    plain = {name: value for name, value in env.items() if isinstance(value, str)}
    assert settings.from_env(plain).metrics_port == port


def test_rbac_is_exactly_what_the_operator_needs(default_objects: list[dict[str, Any]]) -> None:
    role = one(default_objects, "ClusterRole")
    granted = {(group, resource, verb) for rule in role["rules"] for group in rule["apiGroups"]
               for resource in rule["resources"] for verb in rule["verbs"]}
    # the calls the code makes (tests/unit/operator/test_rbac.py collects them, in both RBAC modes)
    manage = {"get", "list", "create", "patch", "delete"}
    wanted = (
        {("ringkv.io", "kvclusters", v) for v in ("get", "list", "watch", "patch")}
        | {("ringkv.io", "kvclusters/status", "patch")}
        | {("ringkv.io", "kvclusters/finalizers", "update")}
        | {("apps", "statefulsets", v) for v in manage}
        | {("", r, v) for r in ("services", "configmaps") for v in manage}
        | {("policy", "poddisruptionbudgets", v) for v in manage}
        | {("", "pods", "list")}
        | {("", "persistentvolumeclaims", v) for v in ("list", "patch", "delete")}
        | {("", "secrets", v) for v in ("get", "create", "patch")}
        | {("cert-manager.io", "certificates", v) for v in ("get", "create", "patch")}
        | {("", "events", "create")}
        | {("apiextensions.k8s.io", "customresourcedefinitions", v) for v in ("list", "watch")}
    )
    assert granted == wanted
    assert not any("*" in item for item in granted)
    binding = one(default_objects, "ClusterRoleBinding")
    account = one(default_objects, "ServiceAccount")
    assert binding["roleRef"]["name"] == role["metadata"]["name"]
    assert binding["subjects"] == [{"kind": "ServiceAccount", "name": account["metadata"]["name"],
                                    "namespace": "ringkv-system"}]


# -- the CRD ---------------------------------------------------------------------------------------------------


def test_crd_names_scope_and_subresources(crd: dict[str, Any]) -> None:
    assert crd["metadata"]["name"] == "kvclusters.ringkv.io"
    assert crd["metadata"]["annotations"]["helm.sh/resource-policy"] == "keep"
    spec = crd["spec"]
    assert spec["group"] == "ringkv.io" and spec["scope"] == "Namespaced"
    assert spec["names"]["kind"] == "KVCluster" and spec["names"]["shortNames"] == ["kvc"]
    [version] = spec["versions"]
    assert version["name"] == "v1alpha1" and version["served"] and version["storage"]
    assert version["subresources"] == {
        "status": {},
        "scale": {"specReplicasPath": ".spec.replicas", "statusReplicasPath": ".status.replicas",
                  "labelSelectorPath": ".status.selector"},
    }
    columns = {c["name"]: c["jsonPath"] for c in version["additionalPrinterColumns"]}
    assert columns == {"Size": ".status.size", "Wanted": ".spec.replicas", "Ready": ".status.readyReplicas",
                       "RF": ".spec.replicationFactor", "Ring": ".status.ringAgreed", "Phase": ".status.phase",
                       "Operation": ".status.operation.kind", "Progress": ".status.operation.summary",
                       "Age": ".metadata.creationTimestamp"}


def test_crd_has_the_fields_of_the_issue(kvcluster_schema: dict[str, Any]) -> None:
    spec = kvcluster_schema["properties"]["spec"]["properties"]
    assert {"replicas", "replicationFactor", "readQuorum", "writeQuorum", "image", "storage", "resources",
            "racks", "config"} <= set(spec)
    assert {"size", "storageClassName", "deletionPolicy"} <= set(spec["storage"]["properties"])
    assert set(spec["racks"]["items"]["properties"]) == {"name", "zone", "nodeLabels"}
    status = kvcluster_schema["properties"]["status"]["properties"]
    assert {"observedGeneration", "replicas", "readyReplicas", "phase", "conditions", "members",
            "selector"} <= set(status)


def test_crd_config_accepts_exactly_the_node_settings_the_operator_does_not_own(
        kvcluster_schema: dict[str, Any]) -> None:
    settable = {f.name for f in dataclasses.fields(config.NodeConfig)} - OPERATOR_OWNED_SETTINGS
    assert set(kvcluster_schema["properties"]["spec"]["properties"]["config"]["properties"]) == settable


def test_crd_cel_rules_are_there(kvcluster_schema: dict[str, Any]) -> None:
    rules = {(".".join(path), rule["rule"]) for path, rule in cel_rules(kvcluster_schema)}
    assert {("spec", "self.replicationFactor <= self.replicas"),
            ("spec", "self.readQuorum <= self.replicationFactor"),
            ("spec", "self.writeQuorum <= self.replicationFactor"),
            ("spec.replicationFactor", "self == oldSelf")} <= rules
    for _, rule in cel_rules(kvcluster_schema):
        assert rule["message"]


def test_example_kvcluster_is_valid(kvcluster_schema: dict[str, Any]) -> None:
    example = yaml.safe_load(EXAMPLE.read_text())
    assert example["kind"] == "KVCluster"
    assert schema_errors(kvcluster_schema, example) == []
    assert cel_errors(kvcluster_schema, example) == []


def test_a_full_kvcluster_is_valid(kvcluster_schema: dict[str, Any]) -> None:
    full = kvcluster(replicas=5, replicationFactor=3, readQuorum=1, writeQuorum=3, image="ringkv:0.1.0",
                     storage={"size": "50Gi", "storageClassName": "fast-ssd", "deletionPolicy": "Delete"},
                     resources={"requests": {"cpu": "500m", "memory": "1Gi"}, "limits": {"memory": 2147483648}},
                     racks=[{"name": "a", "zone": "eu-west-1a"}, {"name": "b", "zone": "eu-west-1b"}],
                     config={"durability": "batch", "memtable_mb": 32, "hints_enabled": False,
                             "phi_threshold": 10.5, "log_format": "json"})
    assert schema_errors(kvcluster_schema, full) == []
    assert cel_errors(kvcluster_schema, full) == []
    assert cel_errors(kvcluster_schema, kvcluster()) == []  # every field defaulted


@pytest.mark.parametrize(("spec", "complaint"), [
    ({"replicas": 0}, "minimum"),
    ({"replicas": -1}, "minimum"),
    ({"replicas": "three"}, "not of type 'integer'"),
    ({"replicationFactor": 16}, "maximum"),
    ({"storage": {"size": "-10Gi"}}, "does not match"),
    ({"storage": {"size": "0"}}, "does not match"),
    ({"storage": {"size": "10Gi", "deletionPolicy": "Shred"}}, "is not one of"),
    ({"replicas": 3, "shards": 4}, "'shards' was unexpected"),
    ({"config": {"data_dir": "/tmp"}}, "'data_dir' was unexpected"),
    ({"config": {"durability": "fast"}}, "is not one of"),
    ({"racks": [{"name": "Rack A"}]}, "does not match"),
    ({"resources": {"limits": {"memory": "lots"}}}, "does not match"),
], ids=["replicas-0", "replicas-negative", "replicas-string", "rf-16", "storage-negative", "storage-zero",
        "deletion-policy", "unknown-field", "operator-owned-setting", "durability", "rack-name", "quantity"])
def test_invalid_kvclusters_are_rejected_by_the_schema(kvcluster_schema: dict[str, Any], spec: dict[str, Any],
                                                       complaint: str) -> None:
    errors = schema_errors(kvcluster_schema, kvcluster(**spec))
    assert any(complaint in e for e in errors), errors


@pytest.mark.parametrize(("spec", "complaint"), [
    ({"replicas": 2}, "spec.replicas cannot go below spec.replicationFactor (N): each key is stored on that many "
                      "distinct nodes; keep spec.replicas at N or more (a smaller cluster needs a new KVCluster with "
                      "a smaller replicationFactor, and the data moved to it)"),  # RF defaults to 3
    ({"replicas": 5, "replicationFactor": 5, "readQuorum": 6}, "readQuorum must not exceed replicationFactor"),
    ({"replicas": 3, "replicationFactor": 1}, "readQuorum must not exceed replicationFactor"),  # R defaults to 2
    ({"replicas": 3, "writeQuorum": 4}, "writeQuorum must not exceed replicationFactor"),
    ({"security": {"mode": "cert-manager"}}, "security.mode cert-manager needs security.issuerRef"),
    ({"security": {"mode": "insecure", "https": True}}, "security.https needs certificates: mode operator or "
                                                       "cert-manager"),
], ids=["rf-over-replicas", "r-over-rf", "default-r-over-rf", "w-over-rf", "cert-manager-no-issuer",
        "https-insecure"])
def test_invalid_kvclusters_are_rejected_by_cel(kvcluster_schema: dict[str, Any], spec: dict[str, Any],
                                                complaint: str) -> None:
    new = kvcluster(**spec)
    assert schema_errors(kvcluster_schema, new) == []
    assert complaint in cel_errors(kvcluster_schema, new)


def test_transition_rules_keep_rf_and_storage_fixed(kvcluster_schema: dict[str, Any]) -> None:
    old = kvcluster(replicas=3, storage={"size": "10Gi", "storageClassName": "ssd"})
    assert cel_errors(kvcluster_schema, kvcluster(replicas=4, storage={"size": "10Gi", "storageClassName": "ssd"}),
                      old) == []
    errors = cel_errors(kvcluster_schema, kvcluster(replicas=5, replicationFactor=5,
                                                    storage={"size": "20Gi", "storageClassName": "hdd"}), old)
    assert [e.split(" is immutable")[0] for e in errors] == [
        "spec.replicationFactor", "spec.storage.storageClassName", "spec.storage.size"]  # the messages: test_crd_rules


# -- manifests/ ------------------------------------------------------------------------------------------------


def test_manifests_are_generated_from_the_chart(tools: Tools) -> None:
    proc = subprocess.run([str(TOP / "tools" / "render-manifests"), "--check"], capture_output=True, text=True,
                          timeout=120, env={"HELM": tools.helm, "PATH": "/usr/bin:/bin"})
    assert proc.returncode == 0, proc.stdout + proc.stderr


def test_manifests_pass_kubernetes_validate_strict(tools: Tools) -> None:
    files = sorted(MANIFESTS.glob("*.yaml"))
    kinds = [doc["kind"] for f in files for doc in yaml.safe_load_all(f.read_text()) if doc]
    assert sorted(kinds) == ["ClusterRole", "ClusterRoleBinding", "CustomResourceDefinition", "Deployment",
                             "Namespace", "ServiceAccount"]
    assert re.fullmatch(r"00-namespace\.yaml", files[0].name)  # kubectl applies a directory in name order
    for version in K8S_VERSIONS:
        report = kubernetes_validate(tools, files, version)
        assert report.count("passed for resource") == len(kinds), report
