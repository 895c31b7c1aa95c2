"""Authorization: every route's required role (deny by default), and the middleware's answers: 401 without
or with an unknown token, 403 with too small a role, the handler with the right one."""

from __future__ import annotations

import asyncio
from typing import Any

import pytest
from aiohttp import web
from aiohttp.test_utils import TestClient, TestServer

from ringkv.api import auth
from ringkv.api.admin import admin_routes
from ringkv.api.routes import routes
from ringkv.security import tokens
from ringkv.security.tokens import Entry, TokenStore


def all_routes() -> list[tuple[str, str]]:
    return [(r.method, r.path) for table in (routes, admin_routes) for r in table  # type: ignore[attr-defined]
            if isinstance(r, web.RouteDef)]


def test_every_route_has_the_role_it_should() -> None:
    seen = all_routes()
    assert len(seen) > 15
    for _, path in seen:
        needed = auth.required_role(path, metrics_auth=False)
        if path.startswith("/admin/"):
            assert needed == "admin", path
        elif path in ("/api/v1/put", "/api/v1/delete"):
            assert needed == "write"
        elif path in ("/api/v1/get", "/api/v1/getValue"):
            assert needed == "read"
        else:
            assert path in ("/health", "/ready", "/metrics", "/api/v1/openapi.json"), f"{path} is open"
            assert needed is None
    assert auth.required_role("/metrics", metrics_auth=True) == "read"
    assert auth.required_role("/admin/v1/anything-new", metrics_auth=False) == "admin"  # deny by default
    assert auth.required_role(None, metrics_auth=False) is None  # unmatched: 404 reveals nothing


TOKENS = {role: tokens.new_token() for role in ("read", "write", "admin")}


async def ok(request: web.Request) -> web.Response:
    return web.json_response({"ok": True})


def app(metrics_auth: bool = False) -> tuple[web.Application, list[str]]:
    store = TokenStore(None, [Entry(f"{role}-app", role, tokens.digest(t)) for role, t in TOKENS.items()])
    failures: list[str] = []
    security = auth.Security("prod", tokens=store, metrics_auth=metrics_auth)
    application = web.Application(middlewares=[auth.middleware(security, failures.append)])
    for method, path in all_routes():
        application.router.add_route(method, path, ok)
    return application, failures


def call(method: str, path: str, token: str | None = None, header: str | None = None,
         metrics_auth: bool = False) -> tuple[int, dict[str, Any], dict[str, str], list[str]]:
    async def main() -> tuple[int, dict[str, Any], dict[str, str], list[str]]:
        application, failures = app(metrics_auth)
        async with TestClient(TestServer(application)) as client:
            headers = {"Authorization": header if header is not None else f"Bearer {token}"} \
                if token or header else {}
            response = await client.request(method, path, headers=headers)
            return response.status, await response.json(), dict(response.headers), failures

    return asyncio.run(main())


@pytest.mark.parametrize("method,path,role,status", [
    ("GET", "/api/v1/getValue", "read", 200),
    ("POST", "/api/v1/put", "read", 403),
    ("POST", "/api/v1/put", "write", 200),
    ("POST", "/api/v1/delete", "write", 200),
    ("GET", "/admin/v1/members", "write", 403),
    ("POST", "/admin/v1/decommission", "write", 403),
    ("POST", "/admin/v1/decommission", "admin", 200),
    ("GET", "/api/v1/get", "admin", 200),
])
def test_roles(method: str, path: str, role: str, status: int) -> None:
    got, body, _, failures = call(method, path, TOKENS[role])
    assert got == status, body
    if status == 403:
        assert body["error"] == "forbidden" and body["role"] == role and failures == ["forbidden"]
        assert TOKENS[role] not in str(body)


@pytest.mark.parametrize("header,code", [
    (None, "unauthenticated"),
    ("Bearer rkv_not-a-token", "invalid_token"),
    ("Bearer " + "x" * 5000, "invalid_token"),
    ("Basic dXNlcjpwYXNz", "unauthenticated"),
    ("Bearer", "unauthenticated"),
])
def test_without_a_valid_token_401(header: str | None, code: str) -> None:
    status, body, headers, failures = call("GET", "/api/v1/getValue", header=header)
    assert (status, body["error"]) == (401, code)
    assert headers["WWW-Authenticate"].startswith("Bearer") and failures == [code]


def test_probes_and_metrics_stay_open_unless_asked() -> None:
    for path in ("/health", "/ready", "/metrics", "/api/v1/openapi.json"):
        assert call("GET", path)[0] == 200
    assert call("GET", "/metrics", metrics_auth=True)[0] == 401
    assert call("GET", "/metrics", TOKENS["read"], metrics_auth=True)[0] == 200
