"""The chart's RBAC grants exactly the calls the operator makes, cluster-wide and per namespace.

What is called is collected, not written down twice:
- which (HTTP request -> RBAC verb) each method of the operator's client (`kube.Api`) sends, recorded from a run
  of every method (and every branch of `ensure`) through a fake HTTP session;
- which methods the operator's code calls on which kind, read from its source: every call passing `kube.KIND`
  (or a loop variable over such constants); calls on `api` with an object instead (`api.ensure(obj)`), or with
  `kube.kind_of(obj)`, act on the kinds the builders make; any other call on `api` fails the test until it is
  taught here;
- what kopf calls itself (it watches, lists and patches KVClusters, posts events, watches CRDs), and what the API
  server requires of an owner reference with blockOwnerDeletion (update on kvclusters/finalizers): declared
  below, with where in kopf it comes from.

The chart is rendered with helm (the one tools/k8s-tools installs into .venv; the test skips without it).
"""

from __future__ import annotations

import ast
import asyncio
import datetime
import os
import shutil
import subprocess
from collections.abc import Iterator, Mapping
from dataclasses import dataclass, field
from pathlib import Path
from types import TracebackType
from typing import Any
from urllib.parse import urlparse

import pytest

from ringkv_operator import credentials, kube, plan, resources, settings
from ringkv_operator import spec as specmod

from .samples import kvcluster

yaml = pytest.importorskip("yaml", reason="PyYAML is missing (pip install -e '.[dev]')")

TOP = Path(__file__).resolve().parents[3]
PACKAGE = TOP / "operator" / "ringkv_operator"
CHART = TOP / "charts" / "ringkv"
Grant = tuple[str, str, str]  # (API group, resource[/subresource], verb)

# kopf's own calls (kopf/_cogs/clients): fetching.py lists and watching.py watches the handled resource,
# patching.py merge-patches its finalizer and its ringkv.io/* annotations (progress and diff-base storage),
# events.py posts core v1 Events; observation.py watches CRDs (only when it may; it says so and carries on
# without). It lists namespaces only for namespace patterns, never with --all-namespaces or exact names' RBAC.
KOPF: set[Grant] = {("ringkv.io", "kvclusters", "list"), ("ringkv.io", "kvclusters", "watch"),
                    ("ringkv.io", "kvclusters", "patch"), ("", "events", "create")}
KOPF_CLUSTER_WIDE: set[Grant] = {("apiextensions.k8s.io", "customresourcedefinitions", "list"),
                                 ("apiextensions.k8s.io", "customresourcedefinitions", "watch")}
# The OwnerReferencesPermissionEnforcement admission plugin: setting blockOwnerDeletion on an owner reference
# needs update on the owner's finalizers.
OWNER_REFERENCES: set[Grant] = {("ringkv.io", "kvclusters/finalizers", "update")}
API_METHODS = frozenset({"get", "list", "create", "patch", "patch_status", "delete", "ensure"})


# -- what the client sends, recorded through a fake HTTP session -------------------------------------------------


@dataclass
class _Response:
    status: int
    body: str

    async def __aenter__(self) -> _Response:
        return self

    async def __aexit__(self, kind: type[BaseException] | None, error: BaseException | None,
                        trace: TracebackType | None) -> None:
        return None

    async def text(self) -> str:
        return self.body


@dataclass
class FakeSession:
    """Answers each request with the next scripted status (200 when the script is out), and records it."""

    script: list[int] = field(default_factory=list)
    sent: list[tuple[str, str]] = field(default_factory=list)

    def request(self, method: str, url: str, **_: Any) -> _Response:
        self.sent.append((method, url))
        status = self.script.pop(0) if self.script else 200
        return _Response(status, '{"items": [], "metadata": {"name": "x"}}' if status < 400 else '{"message": "x"}')

    async def close(self) -> None:
        return None


def rbac_verb(method: str, url: str) -> tuple[str | None, str]:
    """(subresource or None, RBAC verb) of one request to a namespaced object or collection."""
    parsed = urlparse(url)
    steps = parsed.path.strip("/").split("/")
    steps = steps[2:] if steps[0] == "api" else steps[3:]  # api/v1 or apis/GROUP/VERSION
    assert steps[0] == "namespaces", url
    named, sub = len(steps) > 3, steps[4] if len(steps) > 4 else None
    if method == "GET":
        return sub, "watch" if "watch=" in parsed.query else "get" if named else "list"
    return sub, {"POST": "create", "PATCH": "patch", "PUT": "update", "DELETE": "delete"}[method]


def _run(script: list[int], call: Any) -> set[tuple[str | None, str]]:
    session = FakeSession(list(script))
    api = kube.Api("https://k8s", session, lambda: None, False)  # type: ignore[arg-type]
    asyncio.run(call(api))
    return {rbac_verb(method, url) for method, url in session.sent}


def client_verbs() -> dict[str, set[tuple[str | None, str]]]:
    """Api method -> the (subresource, verb) pairs it may send, over all its branches."""
    obj = {"apiVersion": "v1", "kind": "ConfigMap", "metadata": {"name": "c", "namespace": "db"}, "data": {"a": "1"}}
    cm = kube.CONFIG_MAP
    ensure_runs = [([404, 201], lambda api: api.ensure(obj)),  # missing: created
                   ([200, 200], lambda api: api.ensure(obj)),  # drifted: patched
                   ([409, 200, 200], lambda api: api.ensure(obj, None, True))]  # created meanwhile: read, patched
    return {
        "get": _run([], lambda api: api.get(cm, "db", "c")),
        "list": _run([], lambda api: api.list(cm, "db", {"a": "b"})),
        "create": _run([201], lambda api: api.create(obj)),
        "patch": _run([], lambda api: api.patch(cm, "db", "c", {})),
        "patch_status": _run([], lambda api: api.patch_status(cm, "db", "c", {})),
        "delete": _run([], lambda api: api.delete(cm, "db", "c")),
        "ensure": set().union(*(_run(script, call) for script, call in ensure_runs)),
    }


def test_the_client_sends_what_its_methods_say() -> None:
    verbs = client_verbs()
    assert verbs["get"] == {(None, "get")} and verbs["list"] == {(None, "list")}
    assert verbs["patch_status"] == {("status", "patch")}
    assert verbs["ensure"] == {(None, "get"), (None, "create"), (None, "patch")}
    assert set(verbs) == API_METHODS


# -- what the code calls, read from its source -------------------------------------------------------------------


@dataclass(frozen=True)
class Call:
    where: str
    method: str
    kinds: tuple[str, ...]  # the kube.KIND constants' names; () for the kind of an object passed in (ensure)


OBJECT_METHODS = frozenset({"create", "ensure"})  # they take the object, and find its kind from it


def _kube_constant(node: ast.expr | None) -> str | None:
    if isinstance(node, ast.Attribute) and isinstance(node.value, ast.Name) and node.value.id == "kube":
        return node.attr
    return None


def _loop_kinds(tree: ast.AST) -> dict[str, tuple[str, ...]]:
    """Loop variables that run over kube.KIND constants: `for kind in (kube.STATEFULSET, kube.PDB): ...`."""
    out = {}
    for node in ast.walk(tree):
        if isinstance(node, ast.For) and isinstance(node.target, ast.Name) \
                and isinstance(node.iter, ast.Tuple | ast.List):
            names = [_kube_constant(item) for item in node.iter.elts]
            if names and all(names):
                out[node.target.id] = tuple(str(n) for n in names)
    return out


def _kinds(node: ast.Call, loops: Mapping[str, tuple[str, ...]], where: str) -> tuple[str, ...] | None:
    """The kinds a client call acts on; None when it is no client call."""
    assert isinstance(node.func, ast.Attribute)
    first = node.args[0] if node.args else None
    constant = _kube_constant(first)
    if constant is not None:
        return (constant,)
    if _receiver(node.func.value) != "api" or node.func.attr == "close":
        return None
    if isinstance(first, ast.Name) and first.id in loops:
        return loops[first.id]
    if isinstance(first, ast.Call) and _kube_constant(first.func) == "kind_of":
        return ()  # kube.kind_of(obj): the kind of an object the builders made
    assert node.func.attr in OBJECT_METHODS, f"{where}: api.{node.func.attr} on a kind this test cannot tell"
    return ()


def _receiver(node: ast.expr) -> str:
    return node.attr if isinstance(node, ast.Attribute) else node.id if isinstance(node, ast.Name) else ""


def calls() -> Iterator[Call]:
    for path in sorted(PACKAGE.glob("*.py")):
        if path.name == "kube.py":
            continue  # the client itself: its methods' requests are recorded above
        tree = ast.parse(path.read_text(), str(path))
        loops = _loop_kinds(tree)
        for node in ast.walk(tree):
            if not (isinstance(node, ast.Call) and isinstance(node.func, ast.Attribute)):
                continue
            where = f"{path.name}:{node.lineno}"
            kinds = _kinds(node, loops, where)
            if kinds is not None:
                assert node.func.attr in API_METHODS, f"{where}: {node.func.attr}: a client method this test misses"
                yield Call(where, node.func.attr, kinds)


def built_kinds() -> set[str]:
    """The kinds of everything the builders make, for every security mode and with racks."""
    now = datetime.datetime(2026, 1, 1, tzinfo=datetime.UTC)
    out = set()
    for extra in ({}, {"racks": [{"name": "a"}, {"name": "b"}]}, {"security": {"mode": "insecure"}},
                  {"security": {"mode": "cert-manager", "issuerRef": {"name": "ca"}}}):
        cluster = specmod.parse(kvcluster(**extra))
        objects = [*resources.all_objects(cluster, plan.desired_shape(cluster), settings.Settings()),
                   *credentials.desired(cluster, {}, now).objects]
        out |= {str(o["kind"]) for o in objects}
    return out


def _grants(kind: kube.Kind, verbs: set[tuple[str | None, str]]) -> set[Grant]:
    group = "" if kind.api_version == "v1" else kind.api_version.split("/")[0]
    return {(group, kind.plural + (f"/{sub}" if sub else ""), verb) for sub, verb in verbs}


def code_grants() -> set[Grant]:
    verbs, found, out = client_verbs(), list(calls()), set()
    assert any(c.kinds == ("KVCLUSTER",) for c in found) and any(not c.kinds for c in found)  # the scan sees them
    for call in found:
        kinds = [getattr(kube, k) for k in call.kinds] or [kube.KINDS[k] for k in sorted(built_kinds())]
        for kind in kinds:
            out |= _grants(kind, verbs[call.method])
    return out


def test_what_the_code_calls() -> None:
    """A readable statement of what the collection finds (the chart is compared with the collection itself)."""
    by_resource: dict[str, set[str]] = {}
    for group, resource, verb in code_grants():
        by_resource.setdefault(f"{group}/{resource}", set()).add(verb)
    manage = {"get", "list", "create", "patch", "delete"}
    assert by_resource == {
        "ringkv.io/kvclusters": {"get"}, "ringkv.io/kvclusters/status": {"patch"},
        "apps/statefulsets": manage, "/services": manage, "/configmaps": manage, "policy/poddisruptionbudgets": manage,
        "/pods": {"list"}, "/persistentvolumeclaims": {"list", "patch", "delete"},
        "/secrets": {"get", "create", "patch"}, "cert-manager.io/certificates": {"get", "create", "patch"},
    }
    cluster = specmod.parse(kvcluster())
    assert resources.owner_reference(cluster)["blockOwnerDeletion"] is True  # why kvclusters/finalizers update


# -- the chart ----------------------------------------------------------------------------------------------------


def _helm() -> str:
    for candidate in (os.environ.get("HELM"), str(TOP / ".venv" / "bin" / "helm"), shutil.which("helm")):
        if candidate and Path(candidate).is_file():
            return candidate
    pytest.skip("no helm (bash tools/k8s-tools helm installs it into .venv)")


def render(*values: str) -> list[dict[str, Any]]:
    proc = subprocess.run([_helm(), "template", "ringkv", str(CHART), "--namespace", "ringkv-system", *values],
                          capture_output=True, text=True, timeout=120)
    assert proc.returncode == 0, proc.stderr
    return [doc for doc in yaml.safe_load_all(proc.stdout) if doc]


def granted(role: Mapping[str, Any]) -> set[Grant]:
    return {(group, resource, verb) for rule in role["rules"] for group in rule["apiGroups"]
            for resource in rule["resources"] for verb in rule["verbs"]}


def of_kind(objects: list[dict[str, Any]], kind: str) -> list[dict[str, Any]]:
    return [o for o in objects if o["kind"] == kind]


def operator_args(objects: list[dict[str, Any]]) -> list[str]:
    [deployment] = of_kind(objects, "Deployment")
    [container] = deployment["spec"]["template"]["spec"]["containers"]
    return list(container["command"])


def subject(objects: list[dict[str, Any]]) -> dict[str, str]:
    [account] = of_kind(objects, "ServiceAccount")
    return {"kind": "ServiceAccount", "name": account["metadata"]["name"], "namespace": "ringkv-system"}


def test_cluster_wide_the_cluster_role_grants_exactly_what_is_called() -> None:
    objects = render()
    [role] = of_kind(objects, "ClusterRole")
    assert granted(role) == code_grants() | KOPF | OWNER_REFERENCES | KOPF_CLUSTER_WIDE
    assert not any("*" in part for grant in granted(role) for part in grant)
    [binding] = of_kind(objects, "ClusterRoleBinding")
    assert binding["roleRef"] == {"apiGroup": "rbac.authorization.k8s.io", "kind": "ClusterRole",
                                  "name": role["metadata"]["name"]}
    assert binding["subjects"] == [subject(objects)]
    assert not of_kind(objects, "Role") and not of_kind(objects, "RoleBinding")
    args = operator_args(objects)
    assert "--all-namespaces" in args and not any(a.startswith("--namespace") for a in args)


def test_per_namespace_a_role_in_each_grants_exactly_what_is_called_and_nothing_is_cluster_wide() -> None:
    objects = render("--set", "operator.watchNamespaces={team-a,team-b}")
    assert not of_kind(objects, "ClusterRole") and not of_kind(objects, "ClusterRoleBinding")
    roles, bindings = of_kind(objects, "Role"), of_kind(objects, "RoleBinding")
    assert sorted(r["metadata"]["namespace"] for r in roles) == ["team-a", "team-b"]
    for role in roles:
        assert granted(role) == code_grants() | KOPF | OWNER_REFERENCES
    assert sorted(b["metadata"]["namespace"] for b in bindings) == ["team-a", "team-b"]
    for binding in bindings:
        [role] = [r for r in roles if r["metadata"]["namespace"] == binding["metadata"]["namespace"]]
        assert binding["roleRef"] == {"apiGroup": "rbac.authorization.k8s.io", "kind": "Role",
                                      "name": role["metadata"]["name"]}
        assert binding["subjects"] == [subject(objects)]
    args = operator_args(objects)
    assert "--all-namespaces" not in args
    assert [a for a in args if a.startswith("--namespace")] == ["--namespace=team-a", "--namespace=team-b"]


def test_without_rbac_create_no_roles_but_the_namespaces_still_apply() -> None:
    objects = render("--set", "rbac.create=false", "--set", "operator.watchNamespaces={team-a}")
    assert not {"ClusterRole", "ClusterRoleBinding", "Role", "RoleBinding"} & {o["kind"] for o in objects}
    assert "--namespace=team-a" in operator_args(objects)


def test_watch_namespaces_must_be_namespace_names() -> None:
    proc = subprocess.run([_helm(), "template", "ringkv", str(CHART), "--set", "operator.watchNamespaces={Team A}"],
                          capture_output=True, text=True, timeout=120)
    assert proc.returncode != 0 and "watchNamespaces" in proc.stderr
