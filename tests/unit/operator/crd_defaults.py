"""The API server's structural defaulting, for tests that evaluate the KVCluster CRD's rules themselves."""

from __future__ import annotations

import copy
from typing import Any


def with_defaults(schema: dict[str, Any], value: Any) -> Any:
    """`value` with the schema's defaults filled in, top-down (a default is itself defaulted), list items too."""
    if isinstance(value, list) and "items" in schema:
        return [with_defaults(schema["items"], item) for item in value]
    if not isinstance(value, dict) or "properties" not in schema:
        return value
    out = dict(value)
    for name, prop in schema["properties"].items():
        if name not in out and "default" in prop:
            out[name] = copy.deepcopy(prop["default"])
        if name in out:
            out[name] = with_defaults(prop, out[name])
    return out
