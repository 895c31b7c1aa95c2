"""What the cluster's Secrets (and cert-manager Certificate) must be, from what they are (pure: no API calls).

`desired(spec, live, now)` takes the live Secrets' data (name -> decoded data, None if absent) and returns
the manifests to ensure, why each one is new, and the admin token the operator calls the nodes with. A Secret
that needs no change is returned with its live data, so that ensuring it is a no-op. The node certificate is
issued again when a third of its validity is left, when it names other hosts, or when it is not the CA's;
the nodes re-read it from their mounted Secret without a restart (docs/security.md).
"""

from __future__ import annotations

import datetime
from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Any

from ringkv_operator import certs, resources
from ringkv_operator import spec as specmod

Data = Mapping[str, bytes]


@dataclass
class Plan:
    objects: list[dict[str, Any]] = field(default_factory=list, repr=False)  # they hold keys and tokens
    changes: list[str] = field(default_factory=list)  # "issued the node certificate (expires 2027-...)"
    admin_token: str | None = field(default=None, repr=False)

    def headers(self) -> dict[str, str]:
        return {"Authorization": f"Bearer {self.admin_token}"} if self.admin_token else {}


def desired(spec: specmod.ClusterSpec, live: Mapping[str, Data | None], now: datetime.datetime) -> Plan:
    out = Plan()
    if not spec.secure:
        return out
    name = spec.name
    tokens_name, admin_name = resources.tokens_secret_name(name), resources.admin_token_secret_name(name)
    tokens, admin = live.get(tokens_name), live.get(admin_name)
    if tokens and admin and "tokens" in tokens and admin.get("token"):
        token = admin["token"].decode().strip()
        tokens_data: Data = tokens
    else:  # a new admin token; the users' lines of an existing tokens file are kept
        token, digest = certs.new_token()
        kept = [line for line in (tokens or {}).get("tokens", b"").decode(errors="replace").splitlines()
                if line.strip() and not line.startswith("#") and line.split()[0] != "operator"]
        text = certs.tokens_file([("operator", "admin", digest)]) + "".join(line + "\n" for line in kept)
        tokens_data = {"tokens": text.encode()}
        out.changes.append("created the admin token")
    out.admin_token = token
    out.objects.append(resources.secret(spec, tokens_name, tokens_data))
    out.objects.append(resources.secret(spec, admin_name, {"token": token.encode()}))
    if spec.security == "cert-manager":
        out.objects.append(resources.certificate(spec))
        return out
    ca_name, tls_name = resources.ca_secret_name(name), resources.node_tls_secret_name(name)
    ca = live.get(ca_name)
    if not ca or "ca.crt" not in ca or "ca.key" not in ca:
        crt, key = certs.new_ca(resources.cluster_name(spec), now)
        ca = {"ca.crt": crt, "ca.key": key}
        out.changes.append("created the cluster CA")
    out.objects.append(resources.secret(spec, ca_name, ca))
    hosts = resources.node_dns_names(spec)
    tls = live.get(tls_name)
    why = "missing" if not tls or "tls.crt" not in tls or "tls.key" not in tls else \
        certs.needs_renewal(tls["tls.crt"], ca["ca.crt"], hosts, now)
    if why is not None:
        crt, key = certs.node_certificate(ca["ca.crt"], ca["ca.key"], resources.cluster_name(spec), hosts, now)
        tls = {"ca.crt": ca["ca.crt"], "tls.crt": crt, "tls.key": key}
        out.changes.append(f"issued the node certificate ({why})")
    assert tls is not None
    out.objects.append(resources.secret(spec, tls_name, tls, "kubernetes.io/tls"))
    return out
