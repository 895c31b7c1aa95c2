"""The TLS contexts of one node, built from its certs directory and reloaded in place when the files change.

Internode TLS is mutual: the listening side requires a client certificate signed by a CA in `ca.crt`, the
connecting side verifies the listener's against the same bundle. Host names are not checked (peers are dialled
by address and addresses move); instead each side checks the other's ringkv identity (`identity.check_node`):
the cluster name, and the node id the handshake claims. The HTTP port, when TLS is on, serves the same node
certificate and accepts (but does not require) client certificates, which then authenticate like tokens.

Rotation: `reload()` re-reads the files into the *same* context objects (new connections use the new
certificate; open connections keep theirs, so nothing in flight breaks). A certificate and key that do not
match (one file rewritten before the other) are not taken: the old pair stays until both are new. CAs added
to `ca.crt` are trusted at once; a CA removed stays trusted until the node restarts (OpenSSL cannot drop a
CA from a live context).
"""

from __future__ import annotations

import datetime
import hashlib
import logging
import os
import ssl
import tempfile
from dataclasses import dataclass
from pathlib import Path

from ringkv.security import certs

log = logging.getLogger("ringkv.security")


@dataclass(frozen=True)
class TlsFiles:
    ca: Path
    cert: Path
    key: Path

    @classmethod
    def in_dir(cls, certs_dir: str | Path) -> TlsFiles:
        d = Path(certs_dir)
        return cls(d / certs.CA_CERT, d / certs.NODE_CERT, d / certs.NODE_KEY)

    def missing(self) -> list[str]:
        return [str(p) for p in (self.ca, self.cert, self.key) if not p.is_file()]

    def fingerprint(self) -> str:
        """Changes whenever any of the three files does (their contents, not their times: a Kubernetes
        Secret volume swaps a symlink)."""
        try:
            return hashlib.sha256(b"".join(p.read_bytes() for p in (self.ca, self.cert, self.key))).hexdigest()
        except OSError:
            return "missing"


def _base(purpose: ssl.Purpose) -> ssl.SSLContext:
    ctx = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER if purpose is ssl.Purpose.CLIENT_AUTH else ssl.PROTOCOL_TLS_CLIENT)
    ctx.minimum_version = ssl.TLSVersion.TLSv1_2
    ctx.check_hostname = False  # identities are checked by their ringkv URI instead (see the module doc)
    ctx.options |= ssl.OP_NO_COMPRESSION
    return ctx


class NodeTls:
    """The node's three contexts: internode server, internode client, HTTP server."""

    def __init__(self, files: TlsFiles) -> None:
        self.files = files
        self.peer_server = _base(ssl.Purpose.CLIENT_AUTH)
        self.peer_server.verify_mode = ssl.CERT_REQUIRED
        self.peer_client = _base(ssl.Purpose.SERVER_AUTH)
        self.peer_client.verify_mode = ssl.CERT_REQUIRED
        self.http_server = _base(ssl.Purpose.CLIENT_AUTH)
        self.http_server.verify_mode = ssl.CERT_OPTIONAL
        self._fingerprint = ""
        self.not_after = 0.0  # the node certificate's expiry, seconds since the epoch
        self.reloads = 0
        self.reload_failures = 0
        missing = files.missing()
        if missing:
            raise FileNotFoundError(f"TLS files missing: {', '.join(missing)} (make them with `ringkv certs`)")
        self._load()

    def _load(self) -> None:
        # One snapshot of the three files, read once: every context gets the same bytes even if a rotation
        # rewrites the files meanwhile (OpenSSL loads from paths; the snapshot is a private copy).
        ca, cert, key = (p.read_bytes() for p in (self.files.ca, self.files.cert, self.files.key))
        fingerprint = hashlib.sha256(ca + cert + key).hexdigest()
        with tempfile.TemporaryDirectory(prefix="ringkv-tls-") as tmp:
            snap = TlsFiles.in_dir(tmp)
            for path, data in ((snap.ca, ca), (snap.cert, cert), (snap.key, key)):
                fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
                with os.fdopen(fd, "wb") as f:
                    f.write(data)
            probe = _base(ssl.Purpose.CLIENT_AUTH)  # check the pair first: a half-rotated pair must not land
            probe.load_cert_chain(snap.cert, snap.key)
            probe.load_verify_locations(cafile=snap.ca)
            for ctx in (self.peer_server, self.peer_client, self.http_server):
                ctx.load_cert_chain(snap.cert, snap.key)
                ctx.load_verify_locations(cafile=snap.ca)
        self.not_after = certs.not_after(cert).timestamp()
        self._fingerprint = fingerprint

    def reload(self) -> bool:
        """Re-read the files if they changed; True when new ones were taken. A failure (unreadable, key not
        matching the certificate) keeps the current ones, is logged, and is tried again next time."""
        if self.files.fingerprint() == self._fingerprint:
            return False
        try:
            self._load()
        except (OSError, ssl.SSLError, ValueError) as e:
            self.reload_failures += 1
            log.warning("TLS files in %s changed but cannot be loaded (%s); keeping the current ones",
                        self.files.cert.parent, e)
            return False
        self.reloads += 1
        log.info("TLS certificate reloaded from %s (valid until %s)", self.files.cert,
                 datetime.datetime.fromtimestamp(self.not_after, datetime.UTC).isoformat())
        return True
