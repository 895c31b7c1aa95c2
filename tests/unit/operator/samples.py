"""Shared builders of KVCluster objects for the operator's unit tests."""

from __future__ import annotations

from typing import Any


def kvcluster(name: str = "demo", namespace: str = "db", uid: str = "uid-1", generation: int = 1,
              **spec: Any) -> dict[str, Any]:
    """A KVCluster as the API server serves it (metadata filled in, spec as given)."""
    return {"apiVersion": "ringkv.io/v1alpha1", "kind": "KVCluster",
            "metadata": {"name": name, "namespace": namespace, "uid": uid, "generation": generation},
            "spec": spec}


# A spec with every field of where the node pods run, and a pod template overlay of each kind that merges.
OVERLAY = {
    "metadata": {"labels": {"team": "storage"}, "annotations": {"example.com/scrape": "true"}},
    "spec": {
        "containers": [
            {"name": "ringkv", "env": [{"name": "TZ", "value": "UTC"}],
             "volumeMounts": [{"name": "extra", "mountPath": "/etc/extra", "readOnly": True}]},
            {"name": "log-shipper", "image": "reg/shipper:1", "args": ["--stdin"],
             "resources": {"requests": {"cpu": "10m"}}},
        ],
        "initContainers": [{"name": "sysctl", "image": "reg/busybox:1", "command": ["true"]}],
        "volumes": [{"name": "extra", "configMap": {"name": "extra"}}],
        "dnsConfig": {"options": [{"name": "ndots", "value": "1"}]},
        "runtimeClassName": "gvisor", "preemptionPolicy": "Never", "serviceAccountName": "ringkv-nodes",
        "readinessGates": [{"conditionType": "example.com/ready"}],
    },
}
SCHEDULING = {"racks": [{"name": "a", "zone": "eu-1a", "nodeLabels": {"example.com/power-feed": "a"}},
                        {"name": "b", "nodeLabels": {"node.kubernetes.io/pool": "ringkv-b"}}],
              "antiAffinity": "Required", "nodeSelector": {"kubernetes.io/os": "linux"},
              "tolerations": [{"key": "dedicated", "operator": "Equal", "value": "ringkv", "effect": "NoSchedule"},
                              {"key": "node.kubernetes.io/unreachable", "operator": "Exists", "effect": "NoExecute",
                               "tolerationSeconds": 30}],
              "priorityClassName": "stateful-high", "imagePullSecrets": [{"name": "regcred"}],
              "podTemplate": OVERLAY}
