"""Bearer tokens for the HTTP API: random secrets shown once, kept only as hashes, each with a role.

Token: `rkv_` + 43 characters of URL-safe base64 (32 random bytes). With that much entropy a fast hash is
enough (no password stretching: nothing to guess), as GitHub and Stripe store API keys.

Tokens file (version 1), one token per line; `#` comments and blank lines ignored; the file may be shared by
every node (a Kubernetes Secret) and is re-read when it changes::

    <name> <role> sha256:<64 hex digits>

`name` is [A-Za-z0-9._-]+ and unique; `role` is read (get), write (get, put, delete) or admin (everything,
including /admin). The plaintext token never reaches the file, the logs or the metrics: only its name does.
"""

from __future__ import annotations

import base64
import hashlib
import hmac
import logging
import re
import secrets
from dataclasses import dataclass
from pathlib import Path

from ringkv.security.identity import ROLES

log = logging.getLogger("ringkv.security")

PREFIX = "rkv_"
_NAME = re.compile(r"^[A-Za-z0-9._-]{1,64}$")
_HASH = re.compile(r"^sha256:[0-9a-f]{64}$")
MAX_TOKEN_CHARS = 256  # longer Authorization values are refused before hashing


@dataclass(frozen=True)
class Entry:
    name: str
    role: str
    digest: str  # "sha256:<hex>"

    def line(self) -> str:
        return f"{self.name} {self.role} {self.digest}"


def new_token() -> str:
    return PREFIX + base64.urlsafe_b64encode(secrets.token_bytes(32)).rstrip(b"=").decode()


def digest(token: str) -> str:
    return "sha256:" + hashlib.sha256(token.encode()).hexdigest()


def parse_lenient(text: str, source: str = "tokens file") -> tuple[list[Entry], list[str]]:
    """The well-formed entries of a tokens file, and what is wrong with the other lines (skipped)."""
    entries: list[Entry] = []
    problems: list[str] = []
    names: set[str] = set()
    for number, raw in enumerate(text.splitlines(), 1):
        line = raw.split("#", 1)[0].strip()
        if not line:
            continue
        parts = line.split()
        if len(parts) != 3 or not _NAME.match(parts[0]) or parts[1] not in ROLES or not _HASH.match(parts[2]):
            problems.append(f"{source} line {number}: expected '<name> <read|write|admin> sha256:<hex>'")
        elif parts[0] in names:
            problems.append(f"{source} line {number}: token name {parts[0]!r} appears twice")
        else:
            names.add(parts[0])
            entries.append(Entry(parts[0], parts[1], parts[2]))
    return entries, problems


def parse(text: str, source: str = "tokens file") -> list[Entry]:
    """The entries of a tokens file; ValueError naming the line of the first malformed one."""
    entries, problems = parse_lenient(text, source)
    if problems:
        raise ValueError(problems[0])
    return entries


def render(entries: list[Entry]) -> str:
    return "# ringkv tokens v1: <name> <role> sha256:<hex>\n" + "".join(e.line() + "\n" for e in entries)


class TokenStore:
    """The tokens a node accepts, from its tokens file, re-read when the file changes."""

    def __init__(self, path: Path | None, entries: list[Entry] | None = None) -> None:
        self.path = path
        self._by_digest: dict[str, Entry] = {}
        self._text: str | None = None
        self.reloads = 0
        self.reload_failures = 0
        if entries is not None:
            self._by_digest = {e.digest: e for e in entries}
        if path is not None:
            self._load(path.read_text())

    def __len__(self) -> int:
        return len(self._by_digest)

    def _load(self, text: str) -> None:
        entries = parse(text, str(self.path))
        self._by_digest = {e.digest: e for e in entries}
        self._text = text

    def reload(self) -> bool:
        """Re-read the file if it changed. Fails closed: a malformed line is skipped (the token on it stops
        working, the others go on), an unreadable or missing file admits no token at all."""
        if self.path is None:
            return False
        try:
            text = self.path.read_text()
        except (OSError, UnicodeError) as e:
            self.reload_failures += 1
            if self._by_digest:
                log.warning("tokens file %s cannot be read (%s): no token is accepted until it can", self.path, e)
            self._by_digest, self._text = {}, None
            return False
        if text == self._text:
            return False
        entries, problems = parse_lenient(text, str(self.path))
        self._by_digest, self._text = {e.digest: e for e in entries}, text
        if problems:
            self.reload_failures += 1
            log.warning("tokens file %s: %d lines skipped (their tokens are not accepted): %s", self.path,
                        len(problems), "; ".join(problems[:3]))
        self.reloads += 1
        log.info("tokens file %s reloaded: %d tokens", self.path, len(self._by_digest))
        return True

    def lookup(self, token: str) -> Entry | None:
        """The entry of a presented token, None if it is not one of ours."""
        if not token or len(token) > MAX_TOKEN_CHARS or not token.isascii() or not token.isprintable():
            return None  # (a non-ASCII header would not even encode: never a 500)
        presented = digest(token)  # once per request: this is on every authenticated request's path
        entry = self._by_digest.get(presented)
        # The dict lookup is keyed by a hash of the secret (a timing difference reveals nothing about the
        # token); the constant-time comparison guards against a digest collision in the lookup path.
        if entry is not None and hmac.compare_digest(entry.digest, presented):
            return entry
        return None
