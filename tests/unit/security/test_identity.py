"""Certificate identities: the URI format round-trips, and the node check refuses what it must."""

from __future__ import annotations

from typing import Any

from hypothesis import given
from hypothesis import strategies as st

from ringkv.security import identity

names = st.text(st.characters(codec="utf-8", exclude_categories=("Cs",)), min_size=1, max_size=30)


@given(names, names, st.sampled_from(identity.ROLES))
def test_uris_round_trip(cluster: str, name: str, role: str) -> None:
    for ident in (identity.node(cluster, name), identity.client(cluster, name, role)):
        assert identity.parse(ident.uri()) == ident


def cert(*uris: str) -> dict[str, Any]:
    return {"subjectAltName": (("DNS", "localhost"), *(("URI", u) for u in uris))}


def test_check_node() -> None:
    n1 = identity.node("prod", "n1").uri()
    assert identity.check_node(cert(n1), "prod", "n1") is None
    assert identity.check_node(cert(n1), "prod", None) is None  # a seed: any node of the cluster
    assert "cluster 'prod', not 'staging'" in (identity.check_node(cert(n1), "staging", "n1") or "")
    assert "node 'n1', not 'n2'" in (identity.check_node(cert(n1), "prod", "n2") or "")
    assert identity.check_node(cert(identity.node("prod", "*").uri()), "prod", "n7") is None  # shared cert
    client = identity.client("prod", "app", "admin").uri()
    assert "names no node" in (identity.check_node(cert(client), "prod", "n1") or "")
    assert "names no node" in (identity.check_node(cert(), "prod", "n1") or "")
    assert "names no node" in (identity.check_node(None, "prod", "n1") or "")
    assert "names no node" in (identity.check_node(cert("ringkv://prod/node"), "prod", "n1") or "")


def test_client_role_is_only_read_from_a_client_of_this_cluster() -> None:
    assert identity.client_role(cert(identity.client("prod", "app", "write").uri()), "prod") == ("app", "write")
    assert identity.client_role(cert(identity.client("dev", "app", "admin").uri()), "prod") is None
    assert identity.client_role(cert(identity.node("prod", "n1").uri()), "prod") is None
    assert identity.client_role(cert("ringkv://prod/client/app/root"), "prod") is None


@given(st.sampled_from(identity.ROLES), st.sampled_from(identity.ROLES))
def test_roles_are_ordered(role: str, needed: str) -> None:
    assert identity.allows(role, needed) == (identity.ROLES.index(role) >= identity.ROLES.index(needed))
    assert not identity.allows("root", needed) and not identity.allows(role, "root")
