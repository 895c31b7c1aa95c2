"""Certificates made with `cryptography` load into the node's TLS contexts, carry their identity, and are
reloaded in place: a new pair is taken, a half-written one is not."""

from __future__ import annotations

import datetime
import os
import ssl
from pathlib import Path

import pytest
from cryptography import x509

from ringkv.security import certs, identity
from ringkv.security.tls import NodeTls, TlsFiles


def node_dir(tmp_path: Path, ca: certs.Pair, node_id: str = "n1", cluster: str = "prod",
             name: str = "n1") -> Path:
    d = tmp_path / name
    pair = certs.create_node(ca, cluster, node_id, ["127.0.0.1", "n1.example"])
    certs.write(d / certs.CA_CERT, ca.cert_pem)
    certs.write(d / certs.NODE_CERT, pair.cert_pem)
    certs.write(d / certs.NODE_KEY, pair.key_pem, secret=True)
    return d


def test_a_node_certificate_names_its_identity_hosts_and_issuer(tmp_path: Path) -> None:
    ca = certs.create_ca("prod")
    pair = certs.create_node(ca, "prod", "n1", ["127.0.0.1", "n1.example"])
    cert = x509.load_pem_x509_certificate(pair.cert_pem)
    sans = cert.extensions.get_extension_for_class(x509.SubjectAlternativeName).value
    assert sans.get_values_for_type(x509.UniformResourceIdentifier) == [identity.node("prod", "n1").uri()]
    assert sans.get_values_for_type(x509.DNSName) == ["n1.example"]
    assert cert.issuer == x509.load_pem_x509_certificate(ca.cert_pem).subject
    assert not cert.extensions.get_extension_for_class(x509.BasicConstraints).value.ca
    assert cert.not_valid_after_utc <= x509.load_pem_x509_certificate(ca.cert_pem).not_valid_after_utc
    d = node_dir(tmp_path, ca)
    assert (d / certs.NODE_KEY).stat().st_mode & 0o777 == 0o600


def test_a_certificate_never_outlives_its_ca() -> None:
    ca = certs.create_ca("prod", days=10)
    pair = certs.create_node(ca, "prod", "n1", days=365)
    left = certs.not_after(pair.cert_pem) - datetime.datetime.now(datetime.UTC)
    assert left <= datetime.timedelta(days=10)


def test_missing_files_are_named(tmp_path: Path) -> None:
    with pytest.raises(FileNotFoundError, match=r"node\.crt"):
        NodeTls(TlsFiles.in_dir(tmp_path))


def test_reload_takes_a_new_pair_and_refuses_a_mismatched_one(tmp_path: Path) -> None:
    ca = certs.create_ca("prod")
    d = node_dir(tmp_path, ca)
    tls = NodeTls(TlsFiles.in_dir(d))
    assert not tls.reload() and tls.reloads == 0
    before = tls.not_after
    renewed = certs.create_node(ca, "prod", "n1", ["127.0.0.1"], days=30)
    certs.write(d / certs.NODE_CERT, renewed.cert_pem)  # the certificate first: the old key does not match
    assert not tls.reload() and tls.reload_failures == 1 and tls.not_after == before
    certs.write(d / certs.NODE_KEY, renewed.key_pem, secret=True)
    assert tls.reload() and tls.reloads == 1 and tls.not_after < before
    assert isinstance(tls.peer_server, ssl.SSLContext) and tls.peer_server.verify_mode == ssl.CERT_REQUIRED
    assert tls.http_server.verify_mode == ssl.CERT_OPTIONAL


def test_a_planted_temporary_file_or_symlink_never_receives_a_key(tmp_path: Path) -> None:
    # write() opened `<name>.tmp` with O_TRUNC: a world-readable file planted (or left) under that name kept its
    # mode, and a symlink there sent the key wherever it pointed.
    elsewhere = tmp_path / "elsewhere"
    (tmp_path / "node.key.tmp").write_bytes(b"")
    os.chmod(tmp_path / "node.key.tmp", 0o666)
    os.symlink(elsewhere, tmp_path / ".node.key.tmp")
    certs.write(tmp_path / "node.key", b"secret key", secret=True)
    assert (tmp_path / "node.key").read_bytes() == b"secret key"
    assert (tmp_path / "node.key").stat().st_mode & 0o777 == 0o600
    assert not elsewhere.exists() and (tmp_path / "node.key.tmp").read_bytes() == b""
    certs.write(tmp_path / "ca.crt", b"cert")
    assert (tmp_path / "ca.crt").stat().st_mode & 0o777 == 0o644
    assert sorted(p.name for p in tmp_path.iterdir()) == [".node.key.tmp", "ca.crt", "node.key", "node.key.tmp"]
