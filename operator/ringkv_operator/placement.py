"""The fields a KVCluster is placed with, recorded once (status.placement) and held to. Pure.

The CRD's CEL transition rules refuse changing them on update; this is the same check on the operator's
side, for API servers that did not run those rules (an older CRD, a test's emulator): the change is refused
with the same message and nothing moves until it is reverted.

    status.placement = {"racks": {rack: zone or None}, "datacenter", "capacity", "numTokens",
                        "storageClassName" (each None when unset), "seeds": [pod, ...], "security": mode,
                        "rackNodeLabels": [{"rack": rack, "nodeLabels": {key: value}}, ...]}

The seeds are recorded too: they are in every pod's template, so they must not follow later rack changes. So is
spec.security.mode: a rolling change between TLS and plaintext (or between two CAs) would split the ring in two
halves that refuse each other, and lose quorum mid-roll.

A rack added later is recorded when it first appears; a rack removed is forgotten once its StatefulSet is gone.

A rack's node labels (spec.racks[].nodeLabels) may change (its pods roll onto the nodes they select): they are
recorded only so that a rack the spec dropped keeps them while its nodes are decommissioned (`spec.parse` reads
them back). A list, not a map, so that a merge patch of the status replaces it whole.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

from ringkv_operator import plan
from ringkv_operator import spec as specmod

CONFIG_FIELDS = {"datacenter": "datacenter", "capacity": "capacity", "numTokens": "num_tokens"}
INSTEAD = {
    "datacenter": "the ring placed every key's replicas by datacenter; create a new KVCluster in the other "
                  "datacenter and move the data to it",
    "capacity": "capacity weights token allocation at a node's first start: it cannot change on a running "
                "cluster; create a new KVCluster with the capacity you want and move the data to it",
    "num_tokens": "each node took its tokens at its first start and keeps them; create a new KVCluster with the "
                  "num_tokens you want and move the data to it",
}


SECURITY = ("spec.security.mode is immutable: nodes with TLS and nodes without (or with another CA) refuse each "
            "other, so a rolling change would split the ring mid-roll; create a new KVCluster with the mode you "
            "want and move the data to it")


def _config(spec: specmod.ClusterSpec, key: str) -> str | None:
    return dict(spec.config).get(key)


def _rack_node_labels(spec: specmod.ClusterSpec, previous: Any, racks: Mapping[str, Any]) -> list[dict[str, Any]]:
    """The spec's racks' node labels, and the recorded ones of the racks still recorded that it dropped."""
    recorded = {str(item["rack"]): item.get("nodeLabels") or {} for item in previous or []
                if isinstance(item, Mapping) and "rack" in item} if isinstance(previous, list) else {}
    current = {name: recorded[name] for name in racks if name in recorded}
    current.update({rack.name: dict(rack.node_labels) for rack in spec.racks})
    return [{"rack": name, "nodeLabels": found} for name, found in sorted(current.items()) if found]


def record(spec: specmod.ClusterSpec, previous: Mapping[str, Any] | None = None,
           racks_in_use: set[str] | None = None) -> dict[str, Any]:
    """The placement to keep: the previous record, with racks the spec added (and racks no StatefulSet uses
    any more, when `racks_in_use` is given, dropped)."""
    if not previous:
        out: dict[str, Any] = {"racks": {r.name: r.zone for r in spec.racks},
                               "storageClassName": spec.storage_class, "seeds": plan.seeds(spec),
                               "security": spec.security}
        out.update({name: _config(spec, key) for name, key in CONFIG_FIELDS.items()})
        out["rackNodeLabels"] = _rack_node_labels(spec, None, out["racks"])
        return out
    racks = dict(previous.get("racks") or {})
    for rack in spec.racks:
        racks.setdefault(rack.name, rack.zone)
    if racks_in_use is not None:
        racks = {name: zone for name, zone in racks.items()
                 if name in racks_in_use or name in {r.name for r in spec.racks}}
    out = {**previous, "racks": racks, "rackNodeLabels": _rack_node_labels(spec, previous.get("rackNodeLabels"), racks)}
    out.setdefault("seeds", plan.seeds(spec))  # recorded before seeds were: what the spec gave then
    out.setdefault("security", spec.security)  # likewise
    return out


def violation(recorded: Mapping[str, Any] | None, spec: specmod.ClusterSpec) -> str | None:
    """Why the spec changes a field the cluster was placed with, or None."""
    if not recorded:
        return None
    zones = recorded.get("racks") or {}
    for rack in spec.racks:
        if rack.name in zones and zones[rack.name] != rack.zone:
            return ("spec.racks[].zone is immutable: a rack's volumes live in its zone; add a new rack in the "
                    f"other zone and remove this one instead (rack {rack.name!r} was placed in "
                    f"{zones[rack.name] or 'no particular zone'})")
    if "storageClassName" in recorded and recorded.get("storageClassName") != spec.storage_class:
        return ("spec.storage.storageClassName is immutable (it cannot be set, changed or removed after creation): "
                "the volumes were made from it and a StatefulSet's claim template cannot change; create a new "
                "KVCluster with the class you want and move the data to it")
    for name, key in CONFIG_FIELDS.items():
        if name in recorded and recorded.get(name) != _config(spec, key):
            return f"spec.config.{key} is immutable: {INSTEAD[key]}"
    if "security" in recorded and recorded.get("security") != spec.security:
        return SECURITY
    return None
