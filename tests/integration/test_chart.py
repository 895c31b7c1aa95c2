"""The Helm chart and manifests/, checked with the real tools.

- `helm lint --strict` and `helm template` with a real helm (v4, installed by tools/k8s-tools);
- every rendered built-in object, and every file in manifests/, through `kubernetes-validate --strict` against
  the oldest Kubernetes the chart supports and the newest schemas available;
- custom resources, which kubernetes-validate cannot check: a KVCluster against the CRD's own openAPIV3Schema
  (jsonschema, with every object closed as the API server's strict field validation does) and its CEL rules
  (evaluated with a CEL interpreter, after applying the schema's defaults as the API server does); the
  ServiceMonitor by shape;
- manifests/ equal to what tools/render-manifests makes from the chart.

Tools that cannot be installed make these tests skip, naming the reason.
"""

from __future__ import annotations

import copy
import dataclasses
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
# The chart's kubeVersion floor, and the newest schemas kubernetes-validate ships.
K8S_VERSIONS = ("1.29.0", "1.37.0")
CUSTOM_KINDS = {"KVCluster", "ServiceMonitor"}
FULL = ("--set", "cluster.enabled=true", "--set", "serviceMonitor.enabled=true")
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


def one(objects: list[dict[str, Any]], kind: str) -> dict[str, Any]:
    [found] = by_kind(objects, kind)
    return found


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


# -- helm ------------------------------------------------------------------------------------------------------


@pytest.mark.parametrize("values", [(), FULL], ids=["defaults", "cluster+serviceMonitor"])
def test_helm_lint(tools: Tools, values: tuple[str, ...]) -> None:
    proc = helm(tools, "lint", "--strict", str(CHART), *values)
    assert proc.returncode == 0, proc.stdout + proc.stderr
    assert "0 chart(s) failed" in proc.stdout


def test_default_render_has_the_operator_and_no_optional_objects(default_objects: list[dict[str, Any]]) -> None:
    kinds = sorted(o["kind"] for o in default_objects)
    assert kinds == ["ClusterRole", "ClusterRoleBinding", "CustomResourceDefinition", "Deployment", "ServiceAccount"]


def test_full_render_adds_the_kvcluster_and_the_servicemonitor(full_objects: list[dict[str, Any]]) -> None:
    assert {"KVCluster", "ServiceMonitor"} <= {o["kind"] for o in full_objects}


@pytest.mark.parametrize("values", [(), FULL], ids=["defaults", "cluster+serviceMonitor"])
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
    assert http == {"ports": [{"protocol": "TCP", "port": 8080}]}  # from anywhere: the API needs a token
    from ringkv_operator import resources, spec  # the operator labels its pods exactly so
    assert resources.selector_labels(spec.parse({"metadata": {"name": kvcluster["metadata"]["name"],
                                                              "namespace": "x"}, "spec": {}})) == nodes


def test_servicemonitor_has_the_prometheus_operator_shape(full_objects: list[dict[str, Any]]) -> None:
    monitor = one(full_objects, "ServiceMonitor")
    assert schema_errors(SERVICE_MONITOR_SHAPE, monitor) == []
    assert monitor["spec"]["endpoints"][0]["port"] == "http"
    assert monitor["spec"]["endpoints"][0]["path"] == "/metrics"


@pytest.mark.parametrize(("values", "complaint"), [
    (("--set", "cluster.replicas=0"), "replicas"),
    (("--set", "image.pullPolicy=Sometimes"), "pullPolicy"),
    (("--set", "cluster.storage.size=-1Gi"), "size"),
    (("--set", "operator.bogus=1"), "bogus"),
], ids=["replicas-0", "pull-policy", "negative-storage", "unknown-value"])
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
    [port] = container["ports"]
    assert probe["path"] == "/healthz" and probe["port"] == port["name"] and port["containerPort"] == 8080
    security = container["securityContext"]
    assert security["readOnlyRootFilesystem"] is True
    assert security["allowPrivilegeEscalation"] is False
    assert security["capabilities"] == {"drop": ["ALL"]}
    assert container["resources"]["requests"] and container["resources"]["limits"]
    assert "healthcheck" not in str(container).lower()


def test_rbac_is_exactly_what_the_operator_needs(default_objects: list[dict[str, Any]]) -> None:
    role = one(default_objects, "ClusterRole")
    granted = {(group, resource, verb) for rule in role["rules"] for group in rule["apiGroups"]
               for resource in rule["resources"] for verb in rule["verbs"]}
    read = {"get", "list", "watch"}
    manage = read | {"create", "patch", "update", "delete"}
    wanted = (
        {("ringkv.io", "kvclusters", v) for v in read | {"patch", "update"}}
        | {("ringkv.io", "kvclusters/status", v) for v in ("get", "patch", "update")}
        | {("ringkv.io", "kvclusters/finalizers", "update")}
        | {("apps", "statefulsets", v) for v in manage}
        | {("", r, v) for r in ("services", "configmaps") for v in manage}
        | {("policy", "poddisruptionbudgets", v) for v in manage}
        | {("", "pods", v) for v in read}
        | {("", "persistentvolumeclaims", v) for v in ("get", "list", "patch", "delete")}
        | {("", "secrets", v) for v in ("get", "create", "patch")}
        | {("cert-manager.io", "certificates", v) for v in ("get", "create", "patch")}
        | {(g, "events", "create") for g in ("", "events.k8s.io")}
        | {("apiextensions.k8s.io", "customresourcedefinitions", v) for v in read}
        | {("", "namespaces", v) for v in ("list", "watch")}
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
                       "RF": ".spec.replicationFactor", "Phase": ".status.phase",
                       "Operation": ".status.operation.summary", "Age": ".metadata.creationTimestamp"}


def test_crd_has_the_fields_of_the_issue(kvcluster_schema: dict[str, Any]) -> None:
    spec = kvcluster_schema["properties"]["spec"]["properties"]
    assert {"replicas", "replicationFactor", "readQuorum", "writeQuorum", "image", "storage", "resources",
            "racks", "config"} <= set(spec)
    assert {"size", "storageClassName", "deletionPolicy"} <= set(spec["storage"]["properties"])
    assert set(spec["racks"]["items"]["properties"]) == {"name", "zone"}
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
