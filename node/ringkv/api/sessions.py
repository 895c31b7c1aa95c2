"""Browser sessions for the status page: a cookie that stands for an admin token, for reading only.

A browser cannot send `Authorization: Bearer` when it opens a page, so `/ui/login` takes the token once (a
form) and answers with a cookie naming a session: 32 random bytes, kept in this node's memory only (a restart
or another node asks for the token again), each mapping to the token it was opened with. On every request
the token is looked up again in the live token store, so revoking or demoting the token ends its sessions at
the next tokens reload (for good: `auth.py` closes them, so restoring the token does not revive them). A
session expires `TTL_S` after login; at most `MAX_SESSIONS` live at once (the oldest goes first), so logins
cannot grow memory.

The cookie is `HttpOnly` (no script reads it), `SameSite=Strict` (no other site's page sends it), `Secure`
over HTTPS, `Path=/`. And it only ever authorizes `GET`/`HEAD` of `/ui` and `/admin/...` (`auth.py`): every
admin request that changes something is a POST, which needs the bearer token itself, so a forged request
riding on the cookie can at most read.
"""

from __future__ import annotations

import secrets
import time
from collections import OrderedDict
from dataclasses import dataclass

COOKIE = "ringkv_ui"
TTL_S = 12 * 3600
MAX_SESSIONS = 256


@dataclass(frozen=True)
class Session:
    token: str
    expires: float


class SessionStore:
    def __init__(self, ttl_s: float = TTL_S, max_sessions: int = MAX_SESSIONS) -> None:
        self.ttl_s = ttl_s
        self.max_sessions = max_sessions
        self._sessions: OrderedDict[str, Session] = OrderedDict()

    def open(self, token: str, now: float | None = None) -> str:
        now = time.monotonic() if now is None else now
        session_id = secrets.token_urlsafe(32)
        self._sessions[session_id] = Session(token, now + self.ttl_s)
        while len(self._sessions) > self.max_sessions:
            self._sessions.popitem(last=False)
        return session_id

    def token(self, session_id: str, now: float | None = None) -> str | None:
        """The token of a live session (None: unknown or expired, which is then forgotten)."""
        session = self._sessions.get(session_id)
        if session is None:
            return None
        if (time.monotonic() if now is None else now) >= session.expires:
            del self._sessions[session_id]
            return None
        return session.token

    def close(self, session_id: str) -> None:
        self._sessions.pop(session_id, None)

    def __len__(self) -> int:
        return len(self._sessions)
