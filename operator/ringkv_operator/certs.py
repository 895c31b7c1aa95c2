"""The cluster's certificates and admin token, as the operator makes them (pure: bytes and time in, bytes out).

The operator cannot import the node's code (it talks to nodes over HTTP only), so it makes its certificates
itself with the `cryptography` package, to the node's contract (`ringkv.security` in the node, documented in
docs/security.md): ECDSA P-256; the CA self-signed; the node certificate shared by every node of the cluster,
with the identity URI `ringkv://<cluster>/node/*`, the DNS names of the pods and Services, server and client
auth. Tokens file lines: `<name> <role> sha256:<hex of the token's SHA-256>`.

Secrets (keys as cert-manager writes them, so either can fill them):

    NAME-ca            ca.crt, ca.key       the cluster CA (the operator's own; not with cert-manager)
    NAME-node-tls      ca.crt, tls.crt, tls.key   the nodes' certificate, mounted as ca.crt, node.crt, node.key
    NAME-tokens        tokens               the token hashes the nodes accept
    NAME-admin-token   token                the admin token (the operator's, and a user's way in)
"""

from __future__ import annotations

import base64
import datetime
import hashlib
import ipaddress
import secrets
from collections.abc import Sequence
from urllib.parse import quote

from cryptography import x509
from cryptography.exceptions import InvalidSignature
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.x509.oid import ExtendedKeyUsageOID, NameOID

CA_DAYS = 3650
NODE_DAYS = 365
RENEW_WHEN_LEFT = 1 / 3  # renew a node certificate once a third of its validity is left (cert-manager's default)
_BACKDATE = datetime.timedelta(minutes=5)


def node_identity(cluster: str) -> str:
    return f"ringkv://{quote(cluster, safe='')}/node/*"


def _pem_key(key: ec.EllipticCurvePrivateKey) -> bytes:
    return key.private_bytes(serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8,
                             serialization.NoEncryption())


def new_ca(cluster: str, now: datetime.datetime) -> tuple[bytes, bytes]:
    """(ca.crt, ca.key) PEM."""
    key = ec.generate_private_key(ec.SECP256R1())
    name = x509.Name([x509.NameAttribute(NameOID.ORGANIZATION_NAME, "ringkv"),
                      x509.NameAttribute(NameOID.COMMON_NAME, f"ringkv CA {cluster}"[:64])])
    cert = (x509.CertificateBuilder().subject_name(name).issuer_name(name).public_key(key.public_key())
            .serial_number(x509.random_serial_number()).not_valid_before(now - _BACKDATE)
            .not_valid_after(now + datetime.timedelta(days=CA_DAYS))
            .add_extension(x509.BasicConstraints(ca=True, path_length=0), critical=True)
            .add_extension(x509.KeyUsage(digital_signature=True, key_cert_sign=True, crl_sign=True,
                                         content_commitment=False, key_encipherment=False, data_encipherment=False,
                                         key_agreement=False, encipher_only=False, decipher_only=False),
                           critical=True)
            .sign(key, hashes.SHA256()))
    return cert.public_bytes(serialization.Encoding.PEM), _pem_key(key)


def node_certificate(ca_crt: bytes, ca_key: bytes, cluster: str, dns_names: Sequence[str], now: datetime.datetime,
                     days: int = NODE_DAYS) -> tuple[bytes, bytes]:
    """(tls.crt, tls.key) PEM: the certificate every node of `cluster` presents."""
    issuer = x509.load_pem_x509_certificate(ca_crt)
    signer = serialization.load_pem_private_key(ca_key, password=None)
    if not isinstance(signer, ec.EllipticCurvePrivateKey):
        raise ValueError("the CA key is not an ECDSA key")
    key = ec.generate_private_key(ec.SECP256R1())
    sans: list[x509.GeneralName] = [x509.UniformResourceIdentifier(node_identity(cluster))]
    for host in dns_names:
        try:
            sans.append(x509.IPAddress(ipaddress.ip_address(host)))
        except ValueError:
            sans.append(x509.DNSName(host))
    end = min(now + datetime.timedelta(days=days), issuer.not_valid_after_utc)
    cert = (x509.CertificateBuilder()
            .subject_name(x509.Name([x509.NameAttribute(NameOID.ORGANIZATION_NAME, "ringkv"),
                                     x509.NameAttribute(NameOID.COMMON_NAME, f"ringkv nodes {cluster}"[:64])]))
            .issuer_name(issuer.subject).public_key(key.public_key()).serial_number(x509.random_serial_number())
            .not_valid_before(now - _BACKDATE).not_valid_after(end)
            .add_extension(x509.BasicConstraints(ca=False, path_length=None), critical=True)
            .add_extension(x509.ExtendedKeyUsage([ExtendedKeyUsageOID.SERVER_AUTH, ExtendedKeyUsageOID.CLIENT_AUTH]),
                           critical=False)
            .add_extension(x509.SubjectAlternativeName(sans), critical=False)
            .sign(signer, hashes.SHA256()))
    return cert.public_bytes(serialization.Encoding.PEM), _pem_key(key)


def needs_renewal(tls_crt: bytes, ca_crt: bytes, dns_names: Sequence[str], now: datetime.datetime) -> str | None:
    """Why the node certificate must be issued again (None: it is fine): expiring, another CA's, other names."""
    try:
        cert = x509.load_pem_x509_certificate(tls_crt)
        issuer = x509.load_pem_x509_certificate(ca_crt)
    except ValueError:
        return "unreadable"
    try:
        cert.verify_directly_issued_by(issuer)  # the signature, not only the name: every CA is "ringkv CA NAME"
    except (ValueError, TypeError, InvalidSignature):
        return "signed by another CA"
    life = cert.not_valid_after_utc - cert.not_valid_before_utc
    if cert.not_valid_after_utc - now < life * RENEW_WHEN_LEFT:
        return f"expires {cert.not_valid_after_utc:%Y-%m-%d}"
    try:
        sans = cert.extensions.get_extension_for_class(x509.SubjectAlternativeName).value
    except x509.ExtensionNotFound:
        return "no subject alternative names"
    names = [str(n) for n in sans.get_values_for_type(x509.DNSName)] + \
        [str(ip) for ip in sans.get_values_for_type(x509.IPAddress)]
    if sorted(names) != sorted(dns_names):
        return "host names changed"
    return None


def new_token() -> tuple[str, str]:
    """(token, its tokens-file digest)."""
    token = "rkv_" + base64.urlsafe_b64encode(secrets.token_bytes(32)).rstrip(b"=").decode()
    return token, "sha256:" + hashlib.sha256(token.encode()).hexdigest()


def tokens_file(entries: Sequence[tuple[str, str, str]]) -> str:
    """The tokens file of (name, role, digest) entries."""
    return "# ringkv tokens v1: <name> <role> sha256:<hex>\n" + "".join(f"{n} {r} {d}\n" for n, r, d in entries)
