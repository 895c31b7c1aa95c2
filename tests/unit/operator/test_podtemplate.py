"""spec.podTemplate: what merges into the node pods' template, what is refused, and that the operator keeps
what it needs (the node container's name, image, command, ports, probes, security, its env, mounts and volumes)."""

from __future__ import annotations

import copy
from pathlib import Path
from typing import Any

import pytest

from ringkv_operator import plan, podtemplate, resources, settings
from ringkv_operator import spec as specmod

from .samples import kvcluster

SETTINGS = settings.Settings()
CRD = Path(__file__).resolve().parents[3] / "manifests" / "01-crd-kvclusters.yaml"


def template(overlay: dict[str, Any] | None = None, **spec: Any) -> dict[str, Any]:
    cluster = specmod.parse(kvcluster(**spec, **({"podTemplate": overlay} if overlay is not None else {})))
    [sts] = resources.statefulsets(cluster, plan.desired_shape(cluster), SETTINGS)
    return sts["spec"]["template"]  # type: ignore[no-any-return]


def node(pod_template: dict[str, Any]) -> dict[str, Any]:
    [found] = [c for c in pod_template["spec"]["containers"] if c["name"] == podtemplate.CONTAINER]
    return found


SIDECAR = {"name": "shipper", "image": "reg/shipper:1", "ports": [{"name": "metrics", "containerPort": 9000}]}
ACCEPTED: list[dict[str, Any]] = [
    {"metadata": {"labels": {"team": "a", "example.com/tier": "db"}, "annotations": {"example.com/x": "1"}}},
    {"spec": {"containers": [{"name": "ringkv", "env": [{"name": "TZ", "value": "UTC"},
                                                        {"name": "KEY", "valueFrom": {"secretKeyRef": {
                                                            "name": "s", "key": "k"}}}]}]}},
    {"spec": {"containers": [{"name": "ringkv", "volumeMounts": [{"name": "x", "mountPath": "/etc/x"}]}],
              "volumes": [{"name": "x", "emptyDir": {}}]}},
    {"spec": {"containers": [SIDECAR], "initContainers": [{"name": "init", "image": "reg/busybox"}]}},
    {"spec": {"dnsPolicy": "None", "dnsConfig": {"nameservers": ["10.0.0.10"]}, "runtimeClassName": "kata",
              "schedulerName": "stork", "preemptionPolicy": "Never", "hostAliases": [{"ip": "10.0.0.1",
                                                                                  "hostnames": ["a"]}],
              "readinessGates": [{"conditionType": "x/y"}], "serviceAccountName": "nodes",
              "shareProcessNamespace": True, "setHostnameAsFQDN": False}},
]


@pytest.mark.parametrize("overlay", ACCEPTED, ids=["metadata", "env", "mounts", "sidecars", "pod-fields"])
def test_an_accepted_overlay_keeps_what_the_operator_needs(overlay: dict[str, Any]) -> None:
    assert podtemplate.refusals(overlay) == []
    plain, laid = template(), template(overlay)
    before, after = node(plain), node(laid)
    for key in ("image", "command", "ports", "startupProbe", "livenessProbe", "readinessProbe", "securityContext",
                "envFrom", "resources"):
        assert after.get(key) == before.get(key), key
    # the operator's env, mounts, volumes, labels and pod fields come first and unchanged
    assert after["env"][:len(before["env"])] == before["env"]
    assert after["volumeMounts"][:len(before["volumeMounts"])] == before["volumeMounts"]
    assert laid["spec"]["volumes"][:len(plain["spec"]["volumes"])] == plain["spec"]["volumes"]
    assert laid["spec"]["containers"][0] is not None and laid["spec"]["containers"][0]["name"] == "ringkv"
    assert plain["metadata"]["labels"].items() <= laid["metadata"]["labels"].items()
    for key, value in plain["spec"].items():
        if key not in ("containers", "volumes"):
            assert laid["spec"][key] == value, key
    # and a change of the overlay rolls the pods
    assert laid["metadata"]["annotations"][plan.TEMPLATE_HASH_ANNOTATION] != \
        plain["metadata"]["annotations"][plan.TEMPLATE_HASH_ANNOTATION]


def test_what_merges_and_where() -> None:
    overlay = copy.deepcopy(ACCEPTED[0])
    overlay["spec"] = {**ACCEPTED[1]["spec"], "volumes": ACCEPTED[2]["spec"]["volumes"],
                       "initContainers": [{"name": "init", "image": "reg/busybox"}], "runtimeClassName": "kata"}
    overlay["spec"]["containers"] = [*ACCEPTED[1]["spec"]["containers"], SIDECAR]
    laid = template(overlay)
    assert laid["metadata"]["labels"]["team"] == "a" and laid["metadata"]["annotations"]["example.com/x"] == "1"
    assert [c["name"] for c in laid["spec"]["containers"]] == ["ringkv", "shipper"]
    assert laid["spec"]["containers"][1] == SIDECAR
    assert [e["name"] for e in node(laid)["env"]][-2:] == ["TZ", "KEY"]
    assert [v["name"] for v in laid["spec"]["volumes"]] == ["tmp", "certs", "tokens", "x"]
    assert laid["spec"]["initContainers"] == [{"name": "init", "image": "reg/busybox"}]
    assert laid["spec"]["runtimeClassName"] == "kata"
    assert overlay == {**copy.deepcopy(ACCEPTED[0]), "spec": overlay["spec"]}  # the overlay is not changed


@pytest.mark.parametrize(("overlay", "complaint"), [
    ({"status": {}}, "status cannot be set"),
    ({"metadata": {"name": "x"}}, "metadata.name cannot be set"),
    ({"metadata": {"labels": {"app.kubernetes.io/instance": "x"}}}, "labels 'app.kubernetes.io/instance'"),
    ({"metadata": {"labels": {"ringkv.io/rack": "x"}}}, "labels 'ringkv.io/rack'"),
    ({"metadata": {"labels": {"controller-revision-hash": "x"}}}, "StatefulSet controller's"),
    ({"metadata": {"annotations": {"ringkv.io/config-hash": "x"}}}, "annotations 'ringkv.io/config-hash'"),
    ({"spec": {"affinity": {}}}, "spec.affinity cannot be set here"),
    ({"spec": {"tolerations": []}}, "spec.tolerations cannot be set here"),
    ({"spec": {"securityContext": {"runAsUser": 0}}}, "spec.securityContext cannot be set here"),
    ({"spec": {"automountServiceAccountToken": True}}, "spec.automountServiceAccountToken cannot be set here"),
    ({"spec": {"terminationGracePeriodSeconds": 1}}, "spec.terminationGracePeriodSeconds cannot be set here"),
    ({"spec": {"hostNetwork": True}}, "spec.hostNetwork cannot be set here"),
    ({"spec": {"containers": [{"name": "ringkv", "image": "other"}]}}, "containers[ringkv].image is the operator's"),
    ({"spec": {"containers": [{"name": "ringkv", "ports": []}]}}, "containers[ringkv].ports is the operator's"),
    ({"spec": {"containers": [{"name": "ringkv", "readinessProbe": {}}]}}, "readinessProbe is the operator's"),
    ({"spec": {"containers": [{"name": "ringkv", "envFrom": []}]}}, "envFrom is the operator's"),
    ({"spec": {"containers": [{"name": "ringkv", "env": [{"name": "RINGKV_SEEDS", "value": "x"}]}]}},
     "env 'RINGKV_SEEDS'"),
    ({"spec": {"containers": [{"name": "ringkv", "volumeMounts": [{"name": "data", "mountPath": "/x"}]}]}},
     "volumeMounts 'data' is the operator's volume"),
    ({"spec": {"containers": [{"name": "ringkv", "volumeMounts": [{"name": "x",
                                                                   "mountPath": "/var/lib/ringkv/data"}]}]}},
     "would cover the operator's data mount"),
    ({"spec": {"containers": [{"name": "ringkv", "volumeMounts": [{"name": "x", "mountPath": "/tmp/"}]}]}},
     "would cover the operator's tmp mount"),
    ({"spec": {"containers": [SIDECAR, SIDECAR]}}, "'shipper' is listed twice"),
    ({"spec": {"containers": [{"image": "x"}]}}, "every item needs a name"),
    ({"spec": {"containers": {"name": "x"}}}, "spec.containers must be a list of objects"),
    ({"spec": {"initContainers": [{"name": "ringkv"}]}}, "node container's name"),
    ({"spec": {"volumes": [{"name": "tmp", "emptyDir": {}}]}}, "'tmp' is the operator's volume"),
], ids=lambda v: v if isinstance(v, str) else None)
def test_what_is_refused(overlay: dict[str, Any], complaint: str) -> None:
    found = podtemplate.refusals(overlay)
    assert any(complaint in message for message in found), found
    with pytest.raises(specmod.SpecError, match=r"spec\.podTemplate: "):
        specmod.parse(kvcluster(podTemplate=overlay))


def test_a_mount_beside_the_operators_is_fine() -> None:
    mount = {"spec": {"containers": [{"name": "ringkv",
                                      "volumeMounts": [{"name": "x", "mountPath": "/var/lib/ringkvx"}]}]}}
    assert podtemplate.refusals(mount) == []


def test_the_reserved_names_cover_everything_the_operator_mounts() -> None:
    """A volume the builders add must be reserved here too, or an overlay could take its name or path."""
    for spec in ({}, {"security": {"mode": "insecure"}}, {"racks": [{"name": "a"}]}):
        pod = template(**spec)
        volumes = {v["name"] for v in pod["spec"]["volumes"]} | {"data"}  # data: the claim template
        assert volumes <= podtemplate.VOLUMES
        mounts = {m["name"]: m["mountPath"] for m in node(pod)["volumeMounts"]}
        assert mounts.items() <= podtemplate.MOUNTS.items()
        assert set(pod["metadata"]["labels"]) <= podtemplate.LABELS | {plan.RACK_LABEL}
        assert all(k.startswith(podtemplate.ANNOTATION_PREFIXES) for k in pod["metadata"]["annotations"])
        assert not podtemplate.SET_FIELDS & set(pod["spec"])  # what the overlay may set, the operator does not


def test_the_crd_offers_exactly_what_the_overlay_takes() -> None:
    yaml = pytest.importorskip("yaml")
    [version] = yaml.safe_load(CRD.read_text())["spec"]["versions"]
    schema = version["schema"]["openAPIV3Schema"]["properties"]["spec"]["properties"]["podTemplate"]
    assert set(schema["properties"]) == {"metadata", "spec"}
    assert set(schema["properties"]["metadata"]["properties"]) == {"labels", "annotations"}
    assert set(schema["properties"]["spec"]["properties"]) == podtemplate.SET_FIELDS | set(podtemplate.LISTS)
