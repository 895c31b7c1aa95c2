"""The operator's certificates, against the faithful fake of Kubernetes (`kubefake`: kmock, a real `kopf run`,
StatefulSet controllers and kubelets that mount Secrets, real `ringkv node` processes).

A KVCluster gets its CA, node certificate, tokens and admin token as Secrets; the nodes run with mutual TLS
and tokens (every other operator test does too). Here the node certificate is swapped for one about to expire:
the operator issues a new one, the kubelet refreshes the mounted Secret, the nodes take it without a restart,
under a W=2 load that loses nothing.
"""

from __future__ import annotations

import base64
import datetime
import re
import time
import urllib.request
from collections.abc import Iterator
from pathlib import Path

import pytest
from cryptography import x509

from ringkv_operator import certs, resources
from ringkv_operator import spec as specmod
from tests.integration import kubefake
from tests.integration.kubefake import EVENTS, KVC, NS, World, kvcluster
from tests.integration.test_operator_scaling import check_every_acknowledged_key, settled, vias
from tests.integration.topology_helpers import Load

pytestmark = [pytest.mark.slow, pytest.mark.timeout(420)]

SECRETS = f"/api/v1/namespaces/{NS}/secrets"
CONFIG = {"durability": "batch", "aae_enabled": "false", "gossip_interval_s": "0.25", "security_reload_s": "0.5"}


@pytest.fixture
def world(tmp_path: Path) -> Iterator[World]:
    with kubefake.world(tmp_path) as w:
        yield w


def expiry(world: World, pod: str) -> float:
    with urllib.request.urlopen(world.controller.pod(pod).node.url + "/metrics", timeout=5) as response:
        text = response.read().decode()
    match = re.search(r"^ringkv_tls_certificate_expiry_timestamp_seconds (\S+)$", text, re.MULTILINE)
    return float(match.group(1)) if match else 0.0


def secret_data(world: World, name: str) -> dict[str, bytes]:
    found = world.api.get(f"{SECRETS}/{name}") or {}
    return {k: base64.b64decode(v) for k, v in (found.get("data") or {}).items()}


def test_an_expiring_node_certificate_is_renewed_and_taken_without_a_restart(world: World) -> None:
    api = world.api
    api.create(KVC, kvcluster("tls", replicas=3, replicationFactor=3, readQuorum=2, writeQuorum=2,
                              storage={"size": "1Gi"}, config=CONFIG))
    world.token("tls")
    world.wait("3 nodes Running", lambda: settled(world, "tls", 3, 1), 150)
    pods = ["tls-0", "tls-1", "tls-2"]
    ca = secret_data(world, "tls-ca")
    assert set(ca) == {"ca.crt", "ca.key"} and set(secret_data(world, "tls-node-tls")) == {"ca.crt", "tls.crt",
                                                                                              "tls.key"}
    first = {p: expiry(world, p) for p in pods}
    assert all(t > time.time() + 300 * 86400 for t in first.values()), first

    load = Load(vias(world, pods), writers=3, pace_s=0.02)
    load.start()
    try:
        world.wait("the load to write", lambda: load.counts["writes ok"] >= 100, 30)
        # A certificate 20 of its 25 days old (a third of its life is 8 days): due for renewal.
        cluster = specmod.parse(world.kvcluster("tls") or {})
        now = datetime.datetime.now(datetime.UTC)
        crt, key = certs.node_certificate(ca["ca.crt"], ca["ca.key"], resources.cluster_name(cluster),
                                          resources.node_dns_names(cluster), now - datetime.timedelta(days=20),
                                          days=25)
        api.patch(f"{SECRETS}/tls-node-tls", {"data": {"tls.crt": base64.b64encode(crt).decode(),
                                                       "tls.key": base64.b64encode(key).decode()}})
        renewed = world.wait("the operator to issue a new certificate", lambda: (
            (d := secret_data(world, "tls-node-tls")).get("tls.crt") not in (None, crt)
            and x509.load_pem_x509_certificate(d["tls.crt"]).not_valid_after_utc > now + datetime.timedelta(days=300)
            and d), 60)
        new_expiry = x509.load_pem_x509_certificate(renewed["tls.crt"]).not_valid_after_utc.timestamp()
        world.wait("every node to serve the renewed certificate", lambda: all(
            abs(expiry(world, p) - new_expiry) < 1 for p in pods), 60)
        world.wait("the load to go on", lambda: load.counts["writes ok"] >= 300, 30)
    finally:
        load.stop()
    assert all(world.controller.pod(p).restarts == 0 for p in pods)  # taken in place, not by restarting
    reasons = [str(e.get("message")) for e in api.items(EVENTS) if e.get("reason") == "Certificates"]
    assert any(m.startswith("issued the node certificate (expires") for m in reasons), reasons
    check_every_acknowledged_key(load, vias(world, ["tls-0"])[0])
    # No secret in the operator's log or any node's: the admin token, the CA's and the nodes' key lines.
    secrets = [world.token("tls")] + [line for pem in (ca["ca.key"], key, renewed["tls.key"])
                                      for line in pem.decode().splitlines() if not line.startswith("-----")]
    assert world.operator is not None
    logs = {"operator": world.operator.log.read_text(errors="replace")}
    logs.update({str(p): p.read_text(errors="replace") for p in (world.controller.root / "logs").rglob("*.stderr")})
    assert len(logs) >= 4
    for where, text in logs.items():
        assert not [s for s in secrets if s in text], f"a secret is in {where}"
