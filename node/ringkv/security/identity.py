"""What a ringkv certificate vouches for, written as a URI subject alternative name (pure; no I/O).

Format (version 1; `ringkv certs` writes it, nodes check it)::

    ringkv://<cluster>/node/<node-id>          a node of <cluster>; <node-id> "*" for one cert shared by all
    ringkv://<cluster>/client/<name>/<role>    a client of <cluster> (role: read | write | admin)

Cluster names, node ids and client names are percent-encoded. A certificate signed by the cluster CA proves
the holder was issued this identity; the name check stops a certificate of another cluster signed by a shared
CA (one cert-manager ClusterIssuer for several clusters) and a client certificate from acting as a node.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any
from urllib.parse import quote, unquote

SCHEME = "ringkv://"
ANY_NODE = "*"
ROLES = ("read", "write", "admin")  # each includes the ones before it


@dataclass(frozen=True)
class Identity:
    cluster: str
    kind: str  # node | client
    name: str  # node id, or client name
    role: str = "admin"  # what a client may do (nodes are not clients of the HTTP API by certificate)

    def uri(self) -> str:
        base = f"{SCHEME}{quote(self.cluster, safe='')}/{self.kind}/{quote(self.name, safe='*')}"
        return base + (f"/{self.role}" if self.kind == "client" else "")


def node(cluster: str, node_id: str) -> Identity:
    return Identity(cluster, "node", node_id)


def client(cluster: str, name: str, role: str) -> Identity:
    if role not in ROLES:
        raise ValueError(f"role must be one of {', '.join(ROLES)}")
    return Identity(cluster, "client", name, role)


def parse(uri: str) -> Identity | None:
    """The identity a URI names, None if it is not a well-formed ringkv identity."""
    if not uri.startswith(SCHEME):
        return None
    parts = uri[len(SCHEME):].split("/")
    if len(parts) == 3 and parts[1] == "node" and parts[0] and parts[2]:
        return Identity(unquote(parts[0]), "node", unquote(parts[2]))
    if len(parts) == 4 and parts[1] == "client" and parts[0] and parts[2] and parts[3] in ROLES:
        return Identity(unquote(parts[0]), "client", unquote(parts[2]), parts[3])
    return None


def of_peer_cert(cert: Mapping[str, Any] | None) -> list[Identity]:
    """The ringkv identities in a certificate as `ssl.SSLSocket.getpeercert()` returns it."""
    if not cert:
        return []
    found = []
    for kind, value in cert.get("subjectAltName", ()):
        if kind == "URI" and (ident := parse(str(value))) is not None:
            found.append(ident)
    return found


def check_node(cert: Mapping[str, Any] | None, cluster: str, node_id: str | None) -> str | None:
    """Why a peer presenting `cert` may not act as node `node_id` of `cluster` (None: it may). `node_id`
    None: any node of the cluster."""
    idents = of_peer_cert(cert)
    nodes = [i for i in idents if i.kind == "node"]
    if not nodes:
        names = ", ".join(i.uri() for i in idents) or "no ringkv identity"
        return f"its certificate names no node ({names})"
    ours = [i for i in nodes if i.cluster == cluster]
    if not ours:
        return f"its certificate is for cluster {nodes[0].cluster!r}, not {cluster!r}"
    if node_id is not None and not any(i.name in (node_id, ANY_NODE) for i in ours):
        return f"its certificate is for node {ours[0].name!r}, not {node_id!r}"
    return None


def client_role(cert: Mapping[str, Any] | None, cluster: str) -> tuple[str, str] | None:
    """(name, role) of a client certificate of `cluster`, None if it holds none."""
    for ident in of_peer_cert(cert):
        if ident.kind == "client" and ident.cluster == cluster:
            return ident.name, ident.role
    return None


def allows(role: str, needed: str) -> bool:
    """Whether `role` includes `needed` (read < write < admin)."""
    return role in ROLES and needed in ROLES and ROLES.index(role) >= ROLES.index(needed)
