"""The cluster's Secrets: made once, left alone while good, the node certificate issued again when it
nears its end, names other hosts or is another CA's; what the nodes mount; cert-manager instead."""

from __future__ import annotations

import base64
import datetime
import hashlib
from typing import Any

import pytest
from cryptography import x509

from ringkv_operator import certs, credentials, plan, resources
from ringkv_operator import spec as specmod
from ringkv_operator.settings import Settings

NOW = datetime.datetime(2027, 1, 1, tzinfo=datetime.UTC)


def cluster(**security: Any) -> specmod.ClusterSpec:
    return specmod.parse({"metadata": {"name": "demo", "namespace": "db", "uid": "u1"},
                          "spec": {"security": security} if security else {}})


def live_of(p: credentials.Plan) -> dict[str, dict[str, bytes] | None]:
    return {o["metadata"]["name"]: {k: base64.b64decode(v) for k, v in o["data"].items()}
            for o in p.objects if o["kind"] == "Secret"}


def test_first_pass_makes_a_ca_a_node_certificate_and_an_admin_token() -> None:
    p = credentials.desired(cluster(), {}, NOW)
    secrets = live_of(p)
    assert set(secrets) == {"demo-ca", "demo-node-tls", "demo-tokens", "demo-admin-token"}
    token = secrets["demo-admin-token"]["token"].decode()  # type: ignore[index]
    assert p.headers() == {"Authorization": f"Bearer {token}"}
    line = f"operator admin sha256:{hashlib.sha256(token.encode()).hexdigest()}"
    assert line in secrets["demo-tokens"]["tokens"].decode()  # type: ignore[index]
    assert token not in secrets["demo-tokens"]["tokens"].decode()  # type: ignore[index]
    tls = secrets["demo-node-tls"]
    assert tls is not None
    cert = x509.load_pem_x509_certificate(tls["tls.crt"])
    sans = cert.extensions.get_extension_for_class(x509.SubjectAlternativeName).value
    assert sans.get_values_for_type(x509.UniformResourceIdentifier) == ["ringkv://db%2Fdemo/node/*"]
    assert "*.demo-peers.db.svc" in sans.get_values_for_type(x509.DNSName)
    assert cert.issuer == x509.load_pem_x509_certificate(tls["ca.crt"]).subject
    assert len(p.changes) == 3
    assert all(o["metadata"]["ownerReferences"][0]["uid"] == "u1" for o in p.objects)


def test_a_second_pass_changes_nothing() -> None:
    first = credentials.desired(cluster(), {}, NOW)
    again = credentials.desired(cluster(), live_of(first), NOW + datetime.timedelta(days=200))
    assert again.changes == [] and again.objects == first.objects and again.admin_token == first.admin_token


@pytest.mark.parametrize("days,renewed", [(200, False), (250, True), (400, True)])
def test_the_node_certificate_is_renewed_when_a_third_of_its_life_is_left(days: int, renewed: bool) -> None:
    first = credentials.desired(cluster(), {}, NOW)
    later = credentials.desired(cluster(), live_of(first), NOW + datetime.timedelta(days=days))
    assert bool(later.changes) is renewed
    if renewed:
        assert later.changes[0].startswith("issued the node certificate (expires")
        old, new = live_of(first)["demo-node-tls"], live_of(later)["demo-node-tls"]
        assert old is not None and new is not None and old["tls.crt"] != new["tls.crt"]
        assert old["ca.crt"] == new["ca.crt"]  # the same CA: nodes with either certificate trust each other


def test_a_certificate_of_another_ca_or_for_other_hosts_is_replaced() -> None:
    first = live_of(credentials.desired(cluster(), {}, NOW))
    other_ca = certs.new_ca("demo", NOW)
    crt, key = certs.node_certificate(*other_ca, "demo", resources.node_dns_names(cluster()), NOW)
    tampered = {**first, "demo-node-tls": {"ca.crt": other_ca[0], "tls.crt": crt, "tls.key": key}}
    assert credentials.desired(cluster(), tampered, NOW).changes == ["issued the node certificate (signed by "
                                                                       "another CA)"]
    ca = first["demo-ca"]
    assert ca is not None
    crt, key = certs.node_certificate(ca["ca.crt"], ca["ca.key"], "demo", ["elsewhere.example"], NOW)
    moved = {**first, "demo-node-tls": {"ca.crt": ca["ca.crt"], "tls.crt": crt, "tls.key": key}}
    assert credentials.desired(cluster(), moved, NOW).changes == ["issued the node certificate (host names "
                                                                    "changed)"]


def test_nodes_mount_the_secrets_and_get_no_insecure_flag() -> None:
    c = cluster()
    [sts] = resources.statefulsets(c, plan.desired_shape(c), Settings())
    pod = sts["spec"]["template"]["spec"]
    env = {e["name"]: e.get("value") for e in pod["containers"][0]["env"]}
    assert env["RINGKV_CERTS_DIR"] == "/etc/ringkv/certs" and "RINGKV_INSECURE" not in env
    volumes = {v["name"]: v for v in pod["volumes"]}
    assert volumes["certs"]["secret"]["secretName"] == "demo-node-tls"
    assert {i["path"] for i in volumes["certs"]["secret"]["items"]} == {"ca.crt", "node.crt", "node.key"}
    insecure = cluster(mode="insecure")
    [sts] = resources.statefulsets(insecure, plan.desired_shape(insecure), Settings())
    env = {e["name"]: e.get("value") for e in sts["spec"]["template"]["spec"]["containers"][0]["env"]}
    assert env["RINGKV_INSECURE"] == "true" and credentials.desired(insecure, {}, NOW).objects == []


def test_cert_manager_gets_a_certificate_instead_of_our_ca() -> None:
    c = cluster(mode="cert-manager", issuerRef={"name": "corp-ca", "kind": "ClusterIssuer"})
    p = credentials.desired(c, {}, NOW)
    kinds = {(o["kind"], o["metadata"]["name"]) for o in p.objects}
    assert kinds == {("Secret", "demo-tokens"), ("Secret", "demo-admin-token"), ("Certificate", "demo-node-tls")}
    [cert] = [o for o in p.objects if o["kind"] == "Certificate"]
    assert cert["spec"]["secretName"] == "demo-node-tls" and cert["spec"]["uris"] == ["ringkv://db%2Fdemo/node/*"]
    assert cert["spec"]["issuerRef"] == {"name": "corp-ca", "kind": "ClusterIssuer", "group": "cert-manager.io"}


@pytest.mark.parametrize("security,complaint", [
    ({"mode": "tls"}, "must be one of"),
    ({"mode": "cert-manager"}, "issuerRef.name"),
    ({"mode": "insecure", "https": True}, "needs certificates"),
])
def test_bad_security_specs_are_refused(security: dict[str, Any], complaint: str) -> None:
    with pytest.raises(specmod.SpecError, match=complaint):
        cluster(**security)


def test_a_lost_admin_token_is_replaced_and_the_users_tokens_kept() -> None:
    first = live_of(credentials.desired(cluster(), {}, NOW))
    tokens = first["demo-tokens"]
    assert tokens is not None
    user = b"app write sha256:" + b"a" * 64 + b"\n"
    edited = {**first, "demo-tokens": {"tokens": tokens["tokens"] + user}}
    del edited["demo-admin-token"]  # deleted to rotate it
    again = credentials.desired(cluster(), edited, NOW)
    text = live_of(again)["demo-tokens"]["tokens"].decode()  # type: ignore[index]
    assert user.decode() in text and text.count("operator admin") == 1
    old_admin = first["demo-admin-token"]
    assert old_admin is not None and again.admin_token != old_admin["token"].decode()
    assert "rkv_" not in repr(again)
