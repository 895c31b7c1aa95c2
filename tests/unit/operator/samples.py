"""Shared builders of KVCluster objects for the operator's unit tests."""

from __future__ import annotations

from typing import Any


def kvcluster(name: str = "demo", namespace: str = "db", uid: str = "uid-1", generation: int = 1,
              **spec: Any) -> dict[str, Any]:
    """A KVCluster as the API server serves it (metadata filled in, spec as given)."""
    return {"apiVersion": "ringkv.io/v1alpha1", "kind": "KVCluster",
            "metadata": {"name": name, "namespace": namespace, "uid": uid, "generation": generation},
            "spec": spec}
