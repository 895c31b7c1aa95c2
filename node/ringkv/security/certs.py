"""Certificates for a ringkv cluster, made with the `cryptography` package.

A cluster CA (self-signed, ECDSA P-256, 10 years by default) signs node certificates (server and client auth:
a node is both to its peers; the URI SAN `ringkv://<cluster>/node/<id>`, plus the DNS names and addresses
clients use) and client certificates (client auth; `ringkv://<cluster>/client/<name>/<role>`). Keys are PKCS#8
PEM without a passphrase, written mode 0600; whoever can read a node's key is that node.

Files of a certs directory (as `ringkv node --certs-dir` reads it):

    ca.crt                 the CA certificates trusted (several during a CA rotation: the old and the new)
    node.crt, node.key     this node's certificate (with its chain) and key
    client.<name>.crt/key  client certificates
    ca.key                 the CA's key: only where certificates are made, never on a node
"""

from __future__ import annotations

import contextlib
import datetime
import ipaddress
import os
import tempfile
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.x509.oid import ExtendedKeyUsageOID, NameOID

from ringkv.security import identity

CA_CERT, CA_KEY = "ca.crt", "ca.key"
NODE_CERT, NODE_KEY = "node.crt", "node.key"
CA_DAYS, NODE_DAYS, CLIENT_DAYS = 3650, 365, 365
_BACKDATE = datetime.timedelta(minutes=5)  # tolerate clocks a little behind the issuer's


@dataclass(frozen=True)
class Pair:
    cert_pem: bytes
    key_pem: bytes


def _key() -> ec.EllipticCurvePrivateKey:
    return ec.generate_private_key(ec.SECP256R1())


def _key_pem(key: ec.EllipticCurvePrivateKey) -> bytes:
    return key.private_bytes(serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8,
                             serialization.NoEncryption())


def _cert_pem(cert: x509.Certificate) -> bytes:
    return cert.public_bytes(serialization.Encoding.PEM)


def _validity(days: int, now: datetime.datetime | None) -> tuple[datetime.datetime, datetime.datetime]:
    start = (now or datetime.datetime.now(datetime.UTC)) - _BACKDATE
    return start, start + datetime.timedelta(days=days)


def create_ca(cluster: str, days: int = CA_DAYS, now: datetime.datetime | None = None) -> Pair:
    key = _key()
    name = x509.Name([x509.NameAttribute(NameOID.ORGANIZATION_NAME, "ringkv"),
                      x509.NameAttribute(NameOID.COMMON_NAME, f"ringkv CA {cluster}")])
    start, end = _validity(days, now)
    cert = (x509.CertificateBuilder().subject_name(name).issuer_name(name).public_key(key.public_key())
            .serial_number(x509.random_serial_number()).not_valid_before(start).not_valid_after(end)
            .add_extension(x509.BasicConstraints(ca=True, path_length=0), critical=True)
            .add_extension(x509.KeyUsage(digital_signature=True, key_cert_sign=True, crl_sign=True,
                                         content_commitment=False, key_encipherment=False,
                                         data_encipherment=False, key_agreement=False, encipher_only=False,
                                         decipher_only=False), critical=True)
            .add_extension(x509.SubjectKeyIdentifier.from_public_key(key.public_key()), critical=False)
            .sign(key, hashes.SHA256()))
    return Pair(_cert_pem(cert), _key_pem(key))


def _sans(hosts: Sequence[str], uri: str) -> list[x509.GeneralName]:
    names: list[x509.GeneralName] = [x509.UniformResourceIdentifier(uri)]
    for host in hosts:
        try:
            names.append(x509.IPAddress(ipaddress.ip_address(host)))
        except ValueError:
            names.append(x509.DNSName(host))
    return names


def _issue(ca: Pair, common_name: str, sans: list[x509.GeneralName], usages: list[x509.ObjectIdentifier],
           days: int, now: datetime.datetime | None) -> Pair:
    ca_cert = x509.load_pem_x509_certificate(ca.cert_pem)
    ca_key = serialization.load_pem_private_key(ca.key_pem, password=None)
    if not isinstance(ca_key, ec.EllipticCurvePrivateKey):
        raise ValueError("the CA key is not an ECDSA key made by `ringkv certs create-ca`")
    key = _key()
    start, end = _validity(days, now)
    end = min(end, ca_cert.not_valid_after_utc)  # never outlive the issuer
    cert = (x509.CertificateBuilder()
            .subject_name(x509.Name([x509.NameAttribute(NameOID.ORGANIZATION_NAME, "ringkv"),
                                     x509.NameAttribute(NameOID.COMMON_NAME, common_name[:64])]))
            .issuer_name(ca_cert.subject).public_key(key.public_key())
            .serial_number(x509.random_serial_number()).not_valid_before(start).not_valid_after(end)
            .add_extension(x509.BasicConstraints(ca=False, path_length=None), critical=True)
            .add_extension(x509.KeyUsage(digital_signature=True, key_encipherment=False, key_cert_sign=False,
                                         crl_sign=False, content_commitment=False, data_encipherment=False,
                                         key_agreement=False, encipher_only=False, decipher_only=False),
                           critical=True)
            .add_extension(x509.ExtendedKeyUsage(usages), critical=False)
            .add_extension(x509.SubjectAlternativeName(sans), critical=False)
            .add_extension(x509.AuthorityKeyIdentifier.from_issuer_public_key(ca_key.public_key()),
                           critical=False)
            .sign(ca_key, hashes.SHA256()))
    return Pair(_cert_pem(cert), _key_pem(key))


def create_node(ca: Pair, cluster: str, node_id: str, hosts: Sequence[str] = (), days: int = NODE_DAYS,
                now: datetime.datetime | None = None) -> Pair:
    """A node certificate: `hosts` are the DNS names and IP addresses peers and clients reach it by."""
    uri = identity.node(cluster, node_id).uri()
    return _issue(ca, f"node {node_id}", _sans(hosts, uri),
                  [ExtendedKeyUsageOID.SERVER_AUTH, ExtendedKeyUsageOID.CLIENT_AUTH], days, now)


def create_client(ca: Pair, cluster: str, name: str, role: str, days: int = CLIENT_DAYS,
                  now: datetime.datetime | None = None) -> Pair:
    uri = identity.client(cluster, name, role).uri()
    return _issue(ca, f"client {name}", [x509.UniformResourceIdentifier(uri)],
                  [ExtendedKeyUsageOID.CLIENT_AUTH], days, now)


def not_after(cert_pem: bytes) -> datetime.datetime:
    """When the first certificate in `cert_pem` expires."""
    return x509.load_pem_x509_certificates(cert_pem)[0].not_valid_after_utc


def write(path: Path, data: bytes, secret: bool = False) -> None:
    """Write a file whole (a fresh temporary file, fsync, rename): a reader polling it never sees half a key.
    The temporary file is created exclusively with mode 0600 (`mkstemp`), so a stale or planted file of that
    name, or a symlink, never receives a key, and a secret is never readable by others, not even for a moment."""
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.", suffix=".tmp")
    try:
        with os.fdopen(fd, "wb") as f:
            if not secret:
                os.fchmod(f.fileno(), 0o644)
            f.write(data)
            f.flush()
            os.fsync(f.fileno())
        os.replace(tmp, path)
    except BaseException:
        with contextlib.suppress(OSError):
            os.unlink(tmp)
        raise


def load_ca(certs_dir: Path, ca_key: Path | None = None) -> Pair:
    return Pair((certs_dir / CA_CERT).read_bytes(), (ca_key or certs_dir / CA_KEY).read_bytes())
