"""Who may call what on the HTTP API: bearer tokens (or client certificates over HTTPS) and roles.

    route                                   needs
    /health, /ready, /api/v1/openapi.json   nothing (probes, documentation)
    /metrics                                nothing, or `read` with --metrics-auth
    GET /api/v1/get, /api/v1/getValue       read
    POST /api/v1/put, /api/v1/delete        write
    /ui/login, /ui/login.js, /ui/ui.css     nothing (the status page's sign-in)
    /admin/... and anything else            admin (deny by default: a new route is admin until listed)

The status page (`/ui`) signs a browser in once with an admin token and then holds a session cookie
(`sessions.py`); the cookie is a credential only for GET/HEAD of `/ui...` and `/admin/...`, never for a
request that changes something. An unauthenticated `GET /ui` is redirected to the sign-in page.

Admin endpoints share the client port and require the `admin` role, rather than listening on a separate
port bound to the pod network: in Kubernetes every pod of every namespace shares that network, so a separate
port would still need authentication to be safe, and one port with roles is one thing to secure, probe and
document (CockroachDB and etcd do the same).

Answers: no credentials `401 unauthenticated`, an unknown token `401 invalid_token` (both with
`WWW-Authenticate: Bearer`), a role too small `403 forbidden`. The token itself is never logged or echoed;
the principal's name is.
"""

from __future__ import annotations

from collections.abc import Awaitable, Callable
from dataclasses import dataclass, field
from pathlib import Path

from aiohttp import web

from ringkv.api.errors import error_response
from ringkv.api.sessions import COOKIE, SessionStore
from ringkv.config import NodeConfig
from ringkv.security import identity
from ringkv.security.tls import NodeTls, TlsFiles
from ringkv.security.tokens import TokenStore

OPEN_ROUTES = frozenset({"/health", "/ready", "/api/v1/openapi.json", "/ui/login", "/ui/login.js", "/ui/ui.css",
                         "/ui/logout"})
SESSION_METHODS = frozenset({"GET", "HEAD"})
READ_ROUTES = frozenset({"/api/v1/get", "/api/v1/getValue"})
WRITE_ROUTES = frozenset({"/api/v1/put", "/api/v1/delete"})

Handler = Callable[[web.Request], Awaitable[web.StreamResponse]]


def required_role(route: str | None, metrics_auth: bool) -> str | None:
    """The role a request to canonical route `route` needs (None: none). `route` None: no route matched
    (the answer is a 404 or 405 that reveals nothing)."""
    if route is None or route in OPEN_ROUTES:
        return None
    if route == "/metrics":
        return "read" if metrics_auth else None
    if route in READ_ROUTES:
        return "read"
    if route in WRITE_ROUTES:
        return "write"
    return "admin"


@dataclass
class Security:
    """The node's TLS contexts and tokens (both None when it runs --insecure)."""

    cluster: str
    tls: NodeTls | None = None
    tokens: TokenStore | None = None
    http_tls: bool = False
    metrics_auth: bool = False
    sessions: SessionStore = field(default_factory=SessionStore)

    @classmethod
    def from_config(cls, config: NodeConfig) -> Security:
        """Raises ValueError (or OSError) saying what is missing or malformed."""
        problem = config.security_problem()
        if problem is not None:
            raise ValueError(problem)
        if config.insecure:
            return cls(config.cluster_name)
        tls = NodeTls(TlsFiles.in_dir(config.certs_dir))
        tokens_path = Path(config.effective_tokens_file())
        if not tokens_path.is_file():
            raise ValueError(f"no tokens file {tokens_path}: create one with `ringkv certs create-token "
                             f"--tokens-file {tokens_path} --name admin --role admin` (an empty file admits no "
                             "client, only /health, /ready and /metrics)")
        return cls(config.cluster_name, tls, TokenStore(tokens_path), config.http_tls, config.metrics_auth)

    @property
    def secure(self) -> bool:
        return self.tokens is not None

    def reload(self) -> None:
        if self.tls is not None:
            self.tls.reload()
        if self.tokens is not None:
            self.tokens.reload()


def _bearer(request: web.Request) -> str | None:
    header = request.headers.get("Authorization")
    if header is None:
        return None
    scheme, _, value = header.partition(" ")
    return value.strip() if scheme.lower() == "bearer" else ""


def _unauthorized(code: str, message: str) -> web.Response:
    response = error_response(401, code, message)
    response.headers["WWW-Authenticate"] = 'Bearer realm="ringkv"'
    return response


def _session_route(route: str) -> bool:
    return route == "/ui" or route.startswith(("/ui/", "/admin/"))


def _session_principal(request: web.Request, sessions: SessionStore, tokens: TokenStore) -> tuple[str, str] | None:
    """The admin a session cookie stands for. A session whose token is no longer an admin token (revoked or
    demoted) is closed for good: putting the token back does not revive it."""
    session_id = request.cookies.get(COOKIE)
    if not session_id:
        return None
    token = sessions.token(session_id)
    if token is None:
        return None
    entry = tokens.lookup(token)
    if entry is None or entry.role != "admin":
        sessions.close(session_id)
        return None
    return entry.name, entry.role


def middleware(security: Security, on_failure: Callable[[str], None]) -> Callable[..., Awaitable[web.StreamResponse]]:
    """The aiohttp middleware enforcing `required_role`; `on_failure(reason)` counts refusals."""
    tokens = security.tokens

    @web.middleware
    async def authenticate(request: web.Request, handler: Handler) -> web.StreamResponse:
        if tokens is None:
            return await handler(request)
        resource = request.match_info.route.resource
        needed = required_role(resource.canonical if resource is not None else None, security.metrics_auth)
        if needed is None:
            return await handler(request)
        token = _bearer(request)
        principal: tuple[str, str] | None = None
        if token:
            entry = tokens.lookup(token)
            if entry is None:
                on_failure("invalid_token")
                return _unauthorized("invalid_token", "the bearer token is not one this cluster accepts")
            principal = entry.name, entry.role
        elif token is None and request.transport is not None:
            principal = identity.client_role(request.transport.get_extra_info("peercert"), security.cluster)
        if principal is None and token is None and request.method in SESSION_METHODS and \
                _session_route(resource.canonical if resource is not None else ""):
            principal = _session_principal(request, security.sessions, tokens)
            if principal is None and request.path == "/ui":
                return web.Response(status=303, headers={"Location": "/ui/login", "Cache-Control": "no-store"})
        if principal is None:
            on_failure("unauthenticated")
            return _unauthorized("unauthenticated", "this needs credentials: an 'Authorization: Bearer <token>' "
                                 "header (or a client certificate over HTTPS)")
        name, role = principal
        if not identity.allows(role, needed):
            on_failure("forbidden")
            return error_response(403, "forbidden", f"{name!r} has role {role!r}; {request.method} "
                                  f"{request.path} needs {needed!r}", role=role, needed=needed)
        return await handler(request)

    return authenticate
