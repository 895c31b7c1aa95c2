"""The KVCluster CRD's CEL rules, evaluated the way the API server does, on creates and on updates.

The CRD is read from manifests/01-crd-kvclusters.yaml, the chart's template rendered (tests/integration/
test_chart.py checks that the two agree). Every `x-kubernetes-validations` rule is evaluated with a CEL
interpreter (common-expression-language) against the object, after the schema's defaults are applied to the new
object and to the old one (the API server defaults both: on the request and when reading from etcd), with:
- `self` the value at the rule's place; a rule of an absent field does not run;
- for an item of a list-map (`x-kubernetes-list-type: map`), `oldSelf` the old item with the same key;
- a transition rule (one naming `oldSelf`) only on an update, and only where the old value exists too (a new
  field or a new rack has no `oldSelf`, and so no transition rule);
- the reported message from `messageExpression` where there is one, else `message`.

What the interpreter cannot check, the API server does when the CRD is applied: that each rule compiles against
the schema's types (approximated below: every `self.x` names a property), and that its estimated cost is within
budget (these rules touch no lists, so they are cheap).
"""

from __future__ import annotations

import re
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest

from tests.unit.operator.crd_defaults import with_defaults

yaml = pytest.importorskip("yaml", reason="PyYAML is missing (pip install -e '.[dev]')")
cel = pytest.importorskip("cel", reason="common-expression-language is missing (pip install -e '.[dev]')")

CRD = Path(__file__).resolve().parents[3] / "manifests" / "01-crd-kvclusters.yaml"

ZONE = ("spec.racks[].zone is immutable: a rack's volumes live in its zone; add a new rack in the other zone and "
        "remove this one instead")
STORAGE_CLASS = ("spec.storage.storageClassName is immutable (it cannot be set, changed or removed after creation): "
                 "the volumes were made from it and a StatefulSet's claim template cannot change; create a new "
                 "KVCluster with the class you want and move the data to it")
SIZE = ("spec.storage.size is immutable: a StatefulSet's claim template cannot change; create a new KVCluster with "
        "the size you want and move the data to it")
RF = ("spec.replicationFactor is immutable: every key's replicas were placed for it; create a new KVCluster with the "
      "replicationFactor you want and move the data to it")
DATACENTER = ("spec.config.datacenter is immutable: the ring placed every key's replicas by datacenter; create a new "
              "KVCluster in the other datacenter and move the data to it")
CAPACITY = ("spec.config.capacity is immutable: capacity weights token allocation at a node's first start: it cannot "
            "change on a running cluster; create a new KVCluster with the capacity you want and move the data to it")
NUM_TOKENS = ("spec.config.num_tokens is immutable: each node took its tokens at its first start and keeps them; "
              "create a new KVCluster with the num_tokens you want and move the data to it")


SECURITY = ("spec.security.mode is immutable: nodes with TLS and nodes without (or with another CA) refuse each "
            "other, so a rolling change would split the ring mid-roll; create a new KVCluster with the mode you "
            "want and move the data to it")


def below_rf(rf: int) -> str:
    return (f"spec.replicas cannot go below spec.replicationFactor ({rf}): each key is stored on that many distinct "
            f"nodes; keep spec.replicas at {rf} or more (a smaller cluster needs a new KVCluster with a smaller "
            "replicationFactor, and the data moved to it)")


# -- the CRD, and the API server's way of running its rules ----------------------------------------------------


def load_crd() -> dict[str, Any]:
    crd: dict[str, Any] = yaml.safe_load(CRD.read_text())
    return crd


@pytest.fixture(scope="module")
def crd() -> dict[str, Any]:
    return load_crd()


@pytest.fixture(scope="module")
def schema(crd: dict[str, Any]) -> dict[str, Any]:
    [version] = crd["spec"]["versions"]
    return version["schema"]["openAPIV3Schema"]  # type: ignore[no-any-return]


@dataclass(frozen=True)
class Rule:
    path: str  # "spec.racks[]": where the rule sits; [] an item of the list
    schema: dict[str, Any]  # the schema node the rule is on
    rule: str
    message: str
    message_expression: str | None
    field_path: str | None

    @property
    def transition(self) -> bool:
        return re.search(r"\boldSelf\b", self.rule) is not None


def rules(schema: dict[str, Any], path: str = "") -> Iterator[Rule]:
    for r in schema.get("x-kubernetes-validations", []):
        yield Rule(path, schema, r["rule"], r["message"], r.get("messageExpression"), r.get("fieldPath"))
    for name, prop in schema.get("properties", {}).items():
        yield from rules(prop, f"{path}.{name}" if path else name)
    if "items" in schema:
        yield from rules(schema["items"], f"{path}[]")
    if isinstance(schema.get("additionalProperties"), dict):
        yield from rules(schema["additionalProperties"], f"{path}{{}}")


def pairs(schema: dict[str, Any], steps: list[str], new: Any, old: Any) -> Iterator[tuple[Any, Any]]:
    """(self, oldSelf) at the path `steps` in new and old; oldSelf None where the old object has no counterpart
    (a list item is matched by its list-map keys; an item of any other list has none)."""
    if not steps:
        yield new, old
        return
    step, rest = steps[0], steps[1:]
    if step == "[]":
        if not isinstance(new, list):
            return
        keys = schema.get("x-kubernetes-list-map-keys") if schema.get("x-kubernetes-list-type") == "map" else None
        olds = {tuple(o.get(k) for k in keys): o for o in old} if keys and isinstance(old, list) else {}
        for item in new:
            before = olds.get(tuple(item.get(k) for k in keys)) if keys else None
            yield from pairs(schema["items"], rest, item, before)
        return
    if not isinstance(new, dict) or step not in new:
        return  # the API server runs no rule of an absent field
    before = old.get(step) if isinstance(old, dict) else None
    yield from pairs(schema["properties"][step], rest, new[step], before)


def split(path: str) -> list[str]:
    return [s for s in re.split(r"\.|(\[\])", path) if s]


def violations(schema: dict[str, Any], new: dict[str, Any], old: dict[str, Any] | None = None) -> list[str]:
    """The messages the API server answers for `new` (a create without `old`, an update with it), in order."""
    new = with_defaults(schema, new)
    old = with_defaults(schema, old) if old is not None else None
    out = []
    for rule in rules(schema):
        for value, old_value in pairs(schema, split(rule.path), new, old):
            variables = {"self": value}
            if rule.transition:
                if old_value is None:
                    continue  # a create, or a value the old object did not have: transition rules do not run
                variables["oldSelf"] = old_value
            if cel.evaluate(rule.rule, variables) is not True:
                out.append(cel.evaluate(rule.message_expression, variables) if rule.message_expression
                           else rule.message)
    return out


def kvcluster(**spec: Any) -> dict[str, Any]:
    return {"apiVersion": "ringkv.io/v1alpha1", "kind": "KVCluster", "metadata": {"name": "demo"}, "spec": spec}


def racks(*items: tuple[str, str | None]) -> list[dict[str, str]]:
    return [{"name": name, **({"zone": zone} if zone is not None else {})} for name, zone in items]


# -- the interpreter behaves like the API server's where these rules need it to ---------------------------------


def test_has_tests_a_fields_presence_and_numbers_compare_across_int_and_double() -> None:
    assert cel.evaluate("has(self.zone)", {"self": {"name": "a", "zone": "z"}}) is True
    assert cel.evaluate("has(self.zone)", {"self": {"name": "a"}}) is False
    assert cel.evaluate("!has(self.zone) || self.zone == 'z'", {"self": {"name": "a"}}) is True  # short-circuits
    # A `number` field is a double in the API server whatever its JSON spelling; here 1 and 1.0 compare equal too.
    assert cel.evaluate("self == oldSelf", {"self": 1.0, "oldSelf": 1}) is True
    assert cel.evaluate("self == oldSelf", {"self": 1.5, "oldSelf": 1}) is False


# -- the rules themselves ---------------------------------------------------------------------------------------


def test_the_rules_are_where_they_belong(schema: dict[str, Any]) -> None:
    found = {(r.path, r.rule) for r in rules(schema)}
    presence = "has(self.{0}) == has(oldSelf.{0}) && (!has(self.{0}) || self.{0} == oldSelf.{0})"
    assert found == {
        ("spec", "self.replicationFactor <= self.replicas"),
        ("spec", "self.readQuorum <= self.replicationFactor"),
        ("spec", "self.writeQuorum <= self.replicationFactor"),
        ("spec.replicationFactor", "self == oldSelf"),
        ("spec.storage", presence.format("storageClassName")),
        ("spec.storage.size", "self == oldSelf"),
        ("spec.racks[]", presence.format("zone")),
        ("spec.racks[]", "!has(self.nodeLabels) || !('topology.kubernetes.io/zone' in self.nodeLabels)"),
        ("spec.tolerations[]", "!has(self.operator) || self.operator != 'Exists' || !has(self.value) || "
                               "self.value == ''"),
        ("spec.tolerations[]", "has(self.key) && self.key != '' || has(self.operator) && self.operator == 'Exists'"),
        ("spec.tolerations[]", "!has(self.tolerationSeconds) || has(self.effect) && self.effect == 'NoExecute'"),
        ("spec.podTemplate.metadata.labels", "self.all(k, !k.startsWith('ringkv.io/') && "
                                             "!k.startsWith('app.kubernetes.io/') && "
                                             "!k.startsWith('statefulset.kubernetes.io/') && "
                                             "!k.startsWith('apps.kubernetes.io/') && "
                                             "k != 'controller-revision-hash')"),
        ("spec.podTemplate.metadata.annotations", "self.all(k, !k.startsWith('ringkv.io/'))"),
        ("spec.podTemplate.spec.initContainers", "self.all(c, c.name != 'ringkv')"),
        ("spec.podTemplate.spec.volumes", "self.all(v, !(v.name in ['data', 'tmp', 'certs', 'tokens']))"),
        ("spec.config", presence.format("datacenter")),
        ("spec.config", presence.format("capacity")),
        ("spec.config", presence.format("num_tokens")),
        ("spec.security", "!has(self.mode) || self.mode != 'cert-manager' || has(self.issuerRef)"),
        ("spec.security", "!has(self.https) || !self.https || !has(self.mode) || self.mode != 'insecure'"),
        ("spec.security", "self.mode == oldSelf.mode"),
    }


def test_every_rule_names_fields_of_its_schema_and_has_a_one_line_message(schema: dict[str, Any]) -> None:
    """What compiling against the schema would catch first: a `self.x` that is not a property. fieldPath too."""
    for rule in rules(schema):
        properties = set(rule.schema.get("properties", {}))
        # self.all(...) and the like are macros, not fields
        named = set(re.findall(r"\b(?:self|oldSelf)\.(\w+)\b(?!\()", rule.rule + (rule.message_expression or "")))
        assert named <= properties, (rule.path, named - properties)
        if rule.field_path is not None:
            assert rule.field_path.lstrip(".") in properties, rule
        assert rule.message and "\n" not in rule.message
        if rule.message_expression:
            assert "\n" not in rule.message_expression


def test_transition_rules_sit_where_the_old_value_always_exists_or_the_item_is_correlated(
        schema: dict[str, Any]) -> None:
    """A transition rule on an optional field without a default would not see the field added: the rules that
    make a field's presence immutable sit on its parent, and the parent must be there in every object."""
    for rule in rules(schema):
        if not rule.transition:
            continue
        steps = split(rule.path)
        node = schema
        for step in steps:
            if step == "[]":
                assert node.get("x-kubernetes-list-type") == "map", f"{rule.path}: items of a list that is not a map"
                node = node["items"]
            else:
                node = node["properties"][step]
                assert "default" in node or steps[-1] == "[]", f"{rule.path}: {step} may be absent in an old object"


# -- creates: no oldSelf, so only the rules on the new object run -----------------------------------------------


def test_a_create_runs_no_transition_rule(schema: dict[str, Any]) -> None:
    full = kvcluster(replicas=6, replicationFactor=3, storage={"size": "50Gi", "storageClassName": "ssd"},
                     racks=racks(("a", "z1"), ("b", "z2"), ("c", None)),
                     config={"datacenter": "eu", "capacity": 2, "num_tokens": 64})
    assert violations(schema, full) == []
    assert violations(schema, kvcluster()) == []  # every field defaulted
    # With an oldSelf that differs, the same object would break every transition rule: they are skipped above.
    assert len(violations(schema, full, kvcluster(racks=racks(("a", None), ("b", None), ("c", "z3"))))) == 8


def test_a_create_below_the_replication_factor_is_refused_naming_it(schema: dict[str, Any]) -> None:
    assert violations(schema, kvcluster(replicas=2)) == [below_rf(3)]  # replicationFactor defaults to 3
    assert violations(schema, kvcluster(replicas=4, replicationFactor=5, readQuorum=2, writeQuorum=2)) \
        == [below_rf(5)]


# -- updates -----------------------------------------------------------------------------------------------------


@pytest.mark.parametrize(("old", "new", "errors"), [
    (racks(("a", None)), racks(("a", "z1")), [ZONE]),
    (racks(("a", "z1")), racks(("a", None)), [ZONE]),
    (racks(("a", "z1")), racks(("a", "z2")), [ZONE]),
    (racks(("a", "z1"), ("b", "z2")), racks(("a", "z1"), ("b", "z1")), [ZONE]),
    (racks(("a", "z1")), racks(("a", "z1")), []),
    (racks(("a", None)), racks(("a", None)), []),
    (racks(("a", "z1")), racks(("a", "z1"), ("b", "z2")), []),
    (racks(("a", "z1")), racks(("a", "z1"), ("b", None)), []),
    (None, racks(("a", "z1")), []),
    (racks(("a", "z1"), ("b", "z2")), racks(("a", "z1")), []),
    (racks(("a", "z1"), ("b", "z2")), None, []),
    (racks(("a", "z1"), ("b", "z2")), racks(("b", "z2"), ("a", "z1")), []),
    (racks(("a", "z1")), racks(("b", "z2")), []),
], ids=["zone-added", "zone-removed", "zone-changed", "second-rack-zone-changed", "unchanged", "unchanged-no-zone",
        "new-rack-with-zone", "new-rack-without-zone", "racks-added", "rack-removed", "all-racks-removed",
        "reordered", "rack-replaced-by-another"])
def test_a_racks_zone_is_fixed_while_racks_come_and_go(schema: dict[str, Any], old: list[dict[str, str]] | None,
                                                       new: list[dict[str, str]] | None,
                                                       errors: list[str]) -> None:
    def cluster(items: list[dict[str, str]] | None) -> dict[str, Any]:
        return kvcluster(replicas=6) if items is None else kvcluster(replicas=6, racks=items)

    assert violations(schema, cluster(new), cluster(old)) == errors


@pytest.mark.parametrize(("old", "new", "errors"), [
    ({}, {"storageClassName": "ssd"}, [STORAGE_CLASS]),
    ({"storageClassName": "ssd"}, {}, [STORAGE_CLASS]),
    ({"storageClassName": "ssd"}, {"storageClassName": "hdd"}, [STORAGE_CLASS]),
    ({"storageClassName": "ssd"}, {"storageClassName": "ssd"}, []),
    ({}, {}, []),
    ({}, {"size": "20Gi"}, [SIZE]),
    ({"size": "10Gi"}, {}, []),  # the default
    ({"storageClassName": "ssd"}, {"storageClassName": "ssd", "deletionPolicy": "Delete"}, []),
], ids=["class-added", "class-removed", "class-changed", "class-unchanged", "class-absent", "size-changed",
        "size-spelled-out-then-defaulted", "deletion-policy-changed"])
def test_storage_is_fixed_but_for_its_deletion_policy(schema: dict[str, Any], old: dict[str, str],
                                                      new: dict[str, str], errors: list[str]) -> None:
    assert violations(schema, kvcluster(storage=new), kvcluster(storage=old)) == errors


def test_a_missing_storage_is_the_default_storage(schema: dict[str, Any]) -> None:
    assert violations(schema, kvcluster(storage={"storageClassName": "ssd"}), kvcluster()) == [STORAGE_CLASS]
    assert violations(schema, kvcluster(), kvcluster(storage={"storageClassName": "ssd"})) == [STORAGE_CLASS]


@pytest.mark.parametrize(("field", "value", "other", "message"), [
    ("datacenter", "eu", "us", DATACENTER),
    ("capacity", 1.5, 2, CAPACITY),
    ("num_tokens", 64, 128, NUM_TOKENS),
])
@pytest.mark.parametrize("change", ["added", "removed", "changed", "unchanged", "added-with-config"])
def test_the_settings_tokens_are_allocated_from_are_fixed(schema: dict[str, Any], field: str, value: Any,
                                                          other: Any, message: str, change: str) -> None:
    old, new = {
        "added": ({"durability": "sync"}, {"durability": "sync", field: value}),
        "removed": ({field: value}, {}),
        "changed": ({field: value}, {field: other}),
        "unchanged": ({field: value, "durability": "sync"}, {field: value, "durability": "batch"}),
        "added-with-config": (None, {field: value}),  # config absent before: its default {} stands in
    }[change]
    before = kvcluster() if old is None else kvcluster(config=old)
    assert violations(schema, kvcluster(config=new), before) == ([] if change == "unchanged" else [message])


@pytest.mark.parametrize(("old", "new", "errors"), [
    (None, {"mode": "insecure"}, [SECURITY]),  # absent before: the default mode, operator
    ({"mode": "insecure"}, None, [SECURITY]),
    ({"mode": "operator"}, {"mode": "cert-manager", "issuerRef": {"name": "ca"}}, [SECURITY]),
    (None, {"mode": "operator"}, []),
    ({"mode": "cert-manager", "issuerRef": {"name": "a"}}, {"mode": "cert-manager", "issuerRef": {"name": "b"}}, []),
], ids=["secured-to-insecure", "insecure-to-secured", "operator-to-cert-manager", "default-spelled-out",
        "issuer-changed"])
def test_the_security_mode_is_fixed(schema: dict[str, Any], old: dict[str, Any] | None, new: dict[str, Any] | None,
                                    errors: list[str]) -> None:
    before = kvcluster() if old is None else kvcluster(security=old)
    after = kvcluster() if new is None else kvcluster(security=new)
    assert violations(schema, after, before) == errors


def test_capacity_compares_as_a_number(schema: dict[str, Any]) -> None:
    assert violations(schema, kvcluster(config={"capacity": 2.0}), kvcluster(config={"capacity": 2})) == []


def test_other_settings_may_change(schema: dict[str, Any]) -> None:
    old = kvcluster(config={"durability": "sync", "datacenter": "eu", "capacity": 1, "num_tokens": 16})
    new = kvcluster(config={"durability": "batch", "memtable_mb": 64, "datacenter": "eu", "capacity": 1,
                            "num_tokens": 16, "log_level": "debug"})
    assert violations(schema, new, old) == []


@pytest.mark.parametrize(("old", "new", "errors"), [
    ({"replicas": 5}, {"replicas": 2}, [below_rf(3)]),
    ({"replicas": 5, "replicationFactor": 5, "readQuorum": 3, "writeQuorum": 3},
     {"replicas": 4, "replicationFactor": 5, "readQuorum": 3, "writeQuorum": 3}, [below_rf(5)]),
    ({"replicas": 5}, {"replicas": 3}, []),
    ({"replicas": 3}, {"replicas": 7}, []),
    ({"replicas": 5}, {"replicas": 5, "replicationFactor": 5}, [RF]),
    ({"replicas": 5, "replicationFactor": 3}, {"replicas": 2, "replicationFactor": 2, "readQuorum": 1,
                                               "writeQuorum": 1}, [RF]),
], ids=["below-default-rf", "below-rf-5", "down-to-rf", "up", "rf-changed", "rf-lowered-to-shrink"])
def test_replicas_stay_at_or_above_a_fixed_replication_factor(schema: dict[str, Any], old: dict[str, Any],
                                                              new: dict[str, Any], errors: list[str]) -> None:
    assert violations(schema, kvcluster(**new), kvcluster(**old)) == errors


def test_several_changes_are_all_reported(schema: dict[str, Any]) -> None:
    old = kvcluster(replicas=6, storage={"storageClassName": "ssd"}, racks=racks(("a", "z1")),
                    config={"datacenter": "eu"})
    new = kvcluster(replicas=2, storage={"size": "1Ti"}, racks=racks(("a", "z2")), config={"datacenter": "us"})
    assert violations(schema, new, old) == [below_rf(3), STORAGE_CLASS, SIZE, ZONE, DATACENTER]


# -- columns, status and the scale subresource ------------------------------------------------------------------


def resolve(schema: dict[str, Any], json_path: str) -> dict[str, Any]:
    node = schema
    for step in json_path.lstrip(".").split("."):
        node = node["properties"][step]
    return node


def test_printer_columns(crd: dict[str, Any], schema: dict[str, Any]) -> None:
    [version] = crd["spec"]["versions"]
    columns = [(c["name"], c["jsonPath"], c.get("priority", 0)) for c in version["additionalPrinterColumns"]]
    assert columns == [("Size", ".status.size", 0), ("Wanted", ".spec.replicas", 0),
                       ("Ready", ".status.readyReplicas", 0), ("RF", ".spec.replicationFactor", 0),
                       ("Ring", ".status.ringAgreed", 0), ("Phase", ".status.phase", 0),
                       ("Operation", ".status.operation.kind", 0), ("Progress", ".status.operation.summary", 1),
                       ("Age", ".metadata.creationTimestamp", 0)]
    for column in version["additionalPrinterColumns"]:
        if column["name"] == "Age":
            continue
        if column["jsonPath"] == ".status.ringAgreed" and "ringAgreed" not in schema["properties"]["status"][
                "properties"]:
            continue  # status.py's owner declares and writes it; until then the column stays empty
        assert resolve(schema, column["jsonPath"])["type"] == column["type"], column


def test_the_scale_subresource_points_at_fields_of_the_schema(crd: dict[str, Any], schema: dict[str, Any]) -> None:
    [version] = crd["spec"]["versions"]
    scale = version["subresources"]["scale"]
    assert resolve(schema, scale["specReplicasPath"])["type"] == "integer"
    assert resolve(schema, scale["statusReplicasPath"])["type"] == "integer"
    assert resolve(schema, scale["labelSelectorPath"])["type"] == "string"


def undeclared(value: Any, schema: dict[str, Any], path: str = "status") -> list[str]:
    """The paths in `value` the schema does not declare: a real API server drops them on write (the status
    keeps no unknown fields), so the operator would not read them back."""
    if schema.get("x-kubernetes-preserve-unknown-fields"):
        return []
    out: list[str] = []
    if isinstance(value, dict):
        props, extra = schema.get("properties") or {}, schema.get("additionalProperties")
        for key, item in value.items():
            if key in props:
                out += undeclared(item, props[key], f"{path}.{key}")
            elif isinstance(extra, dict):
                out += undeclared(item, extra, f"{path}.{key}")
            else:
                out.append(f"{path}.{key}")
    elif isinstance(value, list):
        for k, item in enumerate(value):
            out += undeclared(item, schema.get("items") or {}, f"{path}[{k}]")
    return out


def test_every_status_field_the_operator_writes_is_declared(schema: dict[str, Any]) -> None:
    """kmock keeps what the schema would drop: this is where a field missing from the CRD is caught."""
    from ringkv_operator import placement, plan, scaling, status
    from ringkv_operator import spec as specmod

    status_schema = schema["properties"]["status"]
    assert not status_schema.get("x-kubernetes-preserve-unknown-fields")
    spec = specmod.parse({"metadata": {"name": "demo", "namespace": "db", "generation": 2},
                          "spec": {"replicas": 4, "racks": [{"name": "a", "zone": "z1"}]}})
    pods = [f"demo-a-{k}" for k in range(3)]
    members = {p: "normal" for p in pods}
    nodes = {p: scaling.NodeView(p, True, "normal", "v", True, members, frozenset(pods),
                                 storage={"sstable_bytes": 1, "disk_total_bytes": 10}) for p in pods}
    step = scaling.step(scaling.Inputs(spec, {"demo-a": 3}, {"demo-a": 3}, {p: True for p in pods},
                                       {f"data-{p}": {} for p in pods}, None, nodes, "2026-12-02T10:00:00Z"))
    assert step.operation is not None
    done = scaling.Step(step.committed, step.replicas, None, {**step.operation, "finished": "2026-12-02T10:01:00Z",
                                                             "result": "Succeeded"}, target=step.target)
    for s in (step, done):
        observed = status.Observed(pods=[], members=[{"node_id": p, "status": "normal", "up": True} for p in pods],
                                   step=s)
        new = status.compute(spec, plan.Decision(scaling.shape_of(spec, s.committed)), observed, {},
                             "2026-12-02T10:00:00Z")
        new["placement"] = placement.record(spec)
        assert undeclared(new, status_schema) == []
    assert undeclared({"operation": {"bogus": 1}}, status_schema) == ["status.operation.bogus"]


# -- where the pods run, and the pod template overlay -----------------------------------------------------------

NODE_LABELS_ZONE = ("spec.racks[].nodeLabels cannot name topology.kubernetes.io/zone: give it as spec.racks[].zone, "
                    "which is recorded and fixed as the rack's volumes live in it")


def test_a_rack_names_any_node_labels_but_the_zone(schema: dict[str, Any]) -> None:
    labelled = [{"name": "a", "zone": "z1", "nodeLabels": {"node.kubernetes.io/pool": "a", "example.com/feed": "1"}}]
    assert violations(schema, kvcluster(racks=labelled)) == []
    # labels may change (the rack's pods roll); the zone stays fixed
    moved = [{"name": "a", "zone": "z1", "nodeLabels": {"node.kubernetes.io/pool": "b"}}]
    assert violations(schema, kvcluster(racks=moved), kvcluster(racks=labelled)) == []
    zoned = [{"name": "a", "nodeLabels": {"topology.kubernetes.io/zone": "z1"}}]
    assert violations(schema, kvcluster(racks=zoned)) == [NODE_LABELS_ZONE]


@pytest.mark.parametrize(("toleration", "errors"), [
    ({"key": "dedicated", "operator": "Equal", "value": "ringkv", "effect": "NoSchedule"}, []),
    ({"key": "dedicated", "value": "ringkv"}, []),
    ({"operator": "Exists"}, []),
    ({"key": "node.kubernetes.io/unreachable", "operator": "Exists", "effect": "NoExecute", "tolerationSeconds": 30},
     []),
    ({"key": "k", "operator": "Exists", "value": "v"}, ["a toleration with operator Exists takes no value"]),
    ({"value": "v"}, ["a toleration without a key needs operator Exists"]),
    ({"key": "k", "effect": "NoSchedule", "tolerationSeconds": 5}, ["tolerationSeconds needs effect NoExecute"]),
], ids=["equal", "equal-by-default", "exists-anything", "unreachable-for-30s", "exists-with-value", "no-key",
        "seconds-without-noexecute"])
def test_tolerations(schema: dict[str, Any], toleration: dict[str, Any], errors: list[str]) -> None:
    from ringkv_operator import spec as specmod
    from tests.unit.operator.samples import kvcluster as sample

    assert violations(schema, kvcluster(tolerations=[toleration])) == errors
    if errors:  # the operator refuses the same, for objects that bypassed the rules
        with pytest.raises(specmod.SpecError):
            specmod.parse(sample(tolerations=[toleration]))
    else:
        specmod.parse(sample(tolerations=[toleration]))


LABELS_MESSAGE = ("spec.podTemplate.metadata.labels cannot set the operator's labels (ringkv.io/*, "
                  "app.kubernetes.io/*) nor the StatefulSet controller's")


@pytest.mark.parametrize("key", ["app.kubernetes.io/name", "app.kubernetes.io/instance", "app.kubernetes.io/part-of",
                                 "app.kubernetes.io/component", "app.kubernetes.io/managed-by", "ringkv.io/rack",
                                 "controller-revision-hash", "statefulset.kubernetes.io/pod-name",
                                 "apps.kubernetes.io/pod-index"])
def test_the_operators_pod_labels_are_refused_by_both(schema: dict[str, Any], key: str) -> None:
    from ringkv_operator import podtemplate

    overlay = {"metadata": {"labels": {key: "x"}}}
    assert violations(schema, kvcluster(podTemplate=overlay)) == [LABELS_MESSAGE]
    assert podtemplate.refusals(overlay) != []


def test_the_pod_template_rules(schema: dict[str, Any]) -> None:
    from ringkv_operator import podtemplate

    fine = {"metadata": {"labels": {"team": "a", "example.com/app.kubernetes.io": "x"},
                         "annotations": {"example.com/ringkv.io": "1"}},
            "spec": {"containers": [{"name": "ringkv", "env": [{"name": "TZ", "value": "UTC"}]},
                                    {"name": "shipper", "image": "x"}],
                     "initContainers": [{"name": "init", "image": "x"}], "volumes": [{"name": "x", "emptyDir": {}}]}}
    assert violations(schema, kvcluster(podTemplate=fine)) == [] and podtemplate.refusals(fine) == []
    bad = {"metadata": {"annotations": {"ringkv.io/template-hash": "x"}},
           "spec": {"initContainers": [{"name": "ringkv"}], "volumes": [{"name": "certs", "secret": {}}]}}
    assert violations(schema, kvcluster(podTemplate=bad)) == [
        "spec.podTemplate.metadata.annotations cannot set the operator's (ringkv.io/*)",
        "spec.podTemplate.spec.initContainers cannot be named ringkv (the node container)",
        "spec.podTemplate.spec.volumes cannot be named data, tmp, certs or tokens (the operator's volumes)"]
    assert len(podtemplate.refusals(bad)) == 3


def closed(node: Any) -> Any:
    """The schema with every object that lists its properties closed, as strict field validation (kubectl's
    default) rejects unknown fields there; x-kubernetes-preserve-unknown-fields keeps an object open."""
    if isinstance(node, list):
        return [closed(item) for item in node]
    if not isinstance(node, dict):
        return node
    out = {key: closed(value) for key, value in node.items()}
    preserved = out.get("x-kubernetes-preserve-unknown-fields")
    if "properties" in out and "additionalProperties" not in out and not preserved:
        out["additionalProperties"] = False
    return out


def test_the_scheduling_fields_and_the_overlay_fit_the_schema(schema: dict[str, Any]) -> None:
    """The builders' test spec (every object of it passes kubernetes-validate --strict) is a valid KVCluster."""
    jsonschema = pytest.importorskip("jsonschema")
    from tests.unit.operator.samples import SCHEDULING

    validator = jsonschema.Draft7Validator(closed(schema))
    assert [e.message for e in validator.iter_errors(kvcluster(**SCHEDULING))] == []
    assert violations(schema, kvcluster(**SCHEDULING)) == []
    for wrong, complaint in [({"antiAffinity": "Never"}, "is not one of"),
                             ({"tolerations": [{"key": "k", "colour": "red"}]}, "'colour' was unexpected"),
                             ({"nodeSelector": {"pool": "no spaces"}}, "does not match"),
                             ({"imagePullSecrets": [{}]}, "'name' is a required property"),
                             ({"podTemplate": {"spec": {"hostNetwork": True}}}, "'hostNetwork' was unexpected"),
                             ({"podTemplate": {"spec": {"containers": [{"image": "x"}]}}}, "'name' is a required"),
                             ({"racks": [{"name": "a", "nodeLabels": {"pool": 1}}]}, "is not of type 'string'")]:
        errors = [e.message for e in validator.iter_errors(kvcluster(**wrong))]
        assert any(complaint in e for e in errors), (wrong, errors)
