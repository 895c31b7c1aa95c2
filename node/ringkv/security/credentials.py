"""A client's credentials for the HTTP API, from the environment every `ringkv` client command reads.

    RINGKV_TOKEN        a bearer token (`ringkv certs create-token` prints one)
    RINGKV_TOKEN_FILE   or a file holding it (read once; surrounding whitespace ignored)
    RINGKV_CA_CERT      the CA that signed the nodes' certificates, for https:// URLs (default: the system's)

`ringkv local up` writes them for its cluster; `eval "$(ringkv local env)"` sets them in a shell.
"""

from __future__ import annotations

import os
import ssl
from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path


@dataclass(frozen=True)
class Credentials:
    token: str | None = None
    ca_cert: str | None = None

    @classmethod
    def from_env(cls, environ: Mapping[str, str] | None = None) -> Credentials:
        env = os.environ if environ is None else environ
        token = env.get("RINGKV_TOKEN") or None
        if token is None and env.get("RINGKV_TOKEN_FILE"):
            token = Path(env["RINGKV_TOKEN_FILE"]).read_text().strip() or None
        return cls(token, env.get("RINGKV_CA_CERT") or None)

    def headers(self) -> dict[str, str]:
        return {"Authorization": f"Bearer {self.token}"} if self.token else {}

    def aiohttp_ssl(self) -> ssl.SSLContext | bool:
        """For aiohttp's `ssl=`: our CA's context when one is given, else default verification."""
        return self.ssl_context() if self.ca_cert else True

    def ssl_context(self) -> ssl.SSLContext:
        """Verifies the server's certificate and host name against RINGKV_CA_CERT (or the system's CAs)."""
        return ssl.create_default_context(cafile=self.ca_cert)

    def __repr__(self) -> str:  # never print the secret
        return f"Credentials(token={'<set>' if self.token else None}, ca_cert={self.ca_cert!r})"
