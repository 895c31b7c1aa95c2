"""The status page's sign-in (`api/ui.py`) and the session cookie in the auth middleware (`api/auth.py`): which
pages are open and what headers they carry, an admin token turning into an HttpOnly SameSite=Strict cookie,
that cookie authorizing only GET/HEAD of /ui and /admin (never a change, never the client API), refused
sign-ins (wrong role, malformed bodies, an escaped message), revocation, expiry, logout, forged cookies, and an
insecure node. A minimal app: the real middlewares and `ui_routes`, stand-ins for admin and client routes."""

from __future__ import annotations

import asyncio
import re
from collections.abc import Awaitable, Callable
from pathlib import Path
from unittest import mock

import pytest
from aiohttp import DummyCookieJar, web
from aiohttp.client import ClientResponse
from aiohttp.streams import StreamReader
from aiohttp.test_utils import TestClient, TestServer, make_mocked_request

from ringkv.api import auth, keys, ui
from ringkv.api.errors import error_middleware
from ringkv.api.metrics import NodeMetrics
from ringkv.api.sessions import COOKIE, SessionStore
from ringkv.security import tokens
from ringkv.security.tokens import Entry, TokenStore

ADMIN, READER, WRITER, EVIL = (tokens.new_token() for _ in range(4))
ENTRIES = [Entry("admin-app", "admin", tokens.digest(ADMIN)), Entry("reader", "read", tokens.digest(READER)),
           Entry("writer", "write", tokens.digest(WRITER))]
FORM = {"Content-Type": "application/x-www-form-urlencoded"}
Client = TestClient[web.Request, web.Application]
Scenario = Callable[[Client, auth.Security], Awaitable[None]]


async def ok(request: web.Request) -> web.Response:
    return web.json_response({"ok": True})


def node_app(security: auth.Security) -> web.Application:
    """The middlewares of `app.create_app` in its order, `ui_routes`, and stand-ins for the other routes."""
    metrics = NodeMetrics()
    app = web.Application(middlewares=[metrics.middleware(), error_middleware,
                                       auth.middleware(security, metrics.auth_failed)])
    app[keys.SECURITY] = security
    app[keys.METRICS] = metrics
    app.add_routes(ui.ui_routes)
    app.router.add_get("/admin/v1/members", ok)
    app.router.add_post("/admin/v1/decommission", ok)
    app.router.add_get("/api/v1/get", ok)
    app.router.add_post("/api/v1/put", ok)
    return app


def secure(entries: list[Entry] = ENTRIES, *, http_tls: bool = False, sessions: SessionStore | None = None
           ) -> auth.Security:
    return auth.Security("prod", tokens=TokenStore(None, entries), http_tls=http_tls,
                         sessions=SessionStore() if sessions is None else sessions)  # (an empty one is falsy)


def run(scenario: Scenario, security: auth.Security | None = None) -> None:
    async def main() -> None:
        chosen = security or secure()
        async with TestClient(TestServer(node_app(chosen)), cookie_jar=DummyCookieJar()) as client:
            await scenario(client, chosen)  # no cookie jar: every cookie sent below is sent explicitly

    asyncio.run(main())


async def login(client: Client, token: str) -> ClientResponse:
    return await client.post("/ui/login", data={"token": token}, allow_redirects=False)


async def signed_in(client: Client, token: str = ADMIN) -> dict[str, str]:
    response = await login(client, token)
    assert response.status == 303, await response.text()
    return {"Cookie": f"{COOKIE}={response.cookies[COOKIE].value}"}


def assert_page_headers(response: ClientResponse, content_type: str) -> None:
    assert response.content_type == content_type
    policy = response.headers["Content-Security-Policy"]
    assert "script-src 'self'" in policy and "frame-ancestors 'none'" in policy
    assert "unsafe-inline" not in policy and "unsafe-eval" not in policy
    assert response.headers["X-Content-Type-Options"] == "nosniff"
    assert response.headers["Cache-Control"] == "no-store"


async def assert_refused(response: ClientResponse, *phrases: str) -> None:
    text = await response.text()
    assert response.status == 401, text
    assert "Set-Cookie" not in response.headers
    assert_page_headers(response, "text/html")
    assert 'action="/ui/login"' in text and "Traceback" not in text and "{{error}}" not in text
    for phrase in phrases:
        assert phrase in text


# --- open pages, the page itself ---------------------------------------------------------------------------


def test_unauthenticated_ui_goes_to_the_sign_in() -> None:
    async def scenario(client: Client, security: auth.Security) -> None:
        response = await client.get("/ui", allow_redirects=False)
        assert (response.status, response.headers["Location"]) == (303, "/ui/login")
        assert (await client.get("/ui/app.js")).status == 401

    run(scenario)


@pytest.mark.parametrize("path,content_type", [("/ui/login", "text/html"), ("/ui/ui.css", "text/css"),
                                               ("/ui/login.js", "text/javascript")])
def test_sign_in_assets_are_open(path: str, content_type: str) -> None:
    async def scenario(client: Client, security: auth.Security) -> None:
        response = await client.get(path)
        assert response.status == 200
        assert_page_headers(response, content_type)
        if content_type == "text/html":
            text = await response.text()
            assert "{{error}}" not in text and 'action="/ui/login"' in text

    run(scenario)


@pytest.mark.parametrize("name", ["index.html", "login.html"])
def test_pages_have_no_inline_script(name: str) -> None:
    """The CSP would block it: every script is a file of ours, and no element has an event handler."""
    page = ui.asset(name).decode()
    scripts = re.findall(r"<script\b([^>]*)>(.*?)</script>", page, re.S)
    assert scripts and all('src="/ui/' in attributes and not body.strip() for attributes, body in scripts)
    assert not re.search(r"<[^>]*\son[a-z]+\s*=", page)


# --- signing in, what the cookie opens ---------------------------------------------------------------------


def test_an_admin_token_signs_in_with_a_strict_httponly_cookie() -> None:
    async def scenario(client: Client, security: auth.Security) -> None:
        response = await login(client, ADMIN)
        assert (response.status, response.headers["Location"]) == (303, "/ui")
        set_cookie = response.headers["Set-Cookie"]
        assert set_cookie.startswith(f"{COOKIE}=") and "HttpOnly" in set_cookie
        assert "SameSite=Strict" in set_cookie and "Path=/" in set_cookie
        assert "Secure" not in set_cookie  # plain HTTP here; see the next test
        assert ADMIN not in set_cookie and len(security.sessions) == 1

    run(scenario)


def test_the_cookie_is_secure_over_https() -> None:
    async def scenario(client: Client, security: auth.Security) -> None:
        assert "Secure" in (await login(client, ADMIN)).headers["Set-Cookie"]

    run(scenario, secure(http_tls=True))


def test_the_cookie_reads_the_page_and_admin_documents() -> None:
    async def scenario(client: Client, security: auth.Security) -> None:
        cookie = await signed_in(client)
        page = await client.get("/ui", headers=cookie, allow_redirects=False)
        assert page.status == 200
        assert_page_headers(page, "text/html")
        script = await client.get("/ui/app.js", headers=cookie)
        assert script.status == 200
        assert_page_headers(script, "text/javascript")
        assert (await client.get("/admin/v1/members", headers=cookie)).status == 200
        assert (await client.head("/admin/v1/members", headers=cookie)).status == 200

    run(scenario)


@pytest.mark.parametrize("method,path", [("POST", "/admin/v1/decommission"), ("GET", "/api/v1/get"),
                                         ("POST", "/api/v1/put")])
def test_the_cookie_is_never_a_credential_for_changes_or_the_client_api(method: str, path: str) -> None:
    async def scenario(client: Client, security: auth.Security) -> None:
        cookie = await signed_in(client)
        response = await client.request(method, path, headers=cookie)
        assert response.status == 401 and (await response.json())["error"] == "unauthenticated"
        with_token = {**cookie, "Authorization": f"Bearer {ADMIN}"}
        assert (await client.request(method, path, headers=with_token)).status == 200

    run(scenario)


# --- refused sign-ins --------------------------------------------------------------------------------------


@pytest.mark.parametrize("token,name,role", [(READER, "reader", "read"), (WRITER, "writer", "write")],
                         ids=["read", "write"])  # ids without the tokens: random, they differ per process
def test_a_smaller_role_is_refused_naming_it(token: str, name: str, role: str) -> None:
    async def scenario(client: Client, security: auth.Security) -> None:
        await assert_refused(await login(client, token), f"&#x27;{name}&#x27; has role &#x27;{role}&#x27;")
        assert len(security.sessions) == 0
        registry = client.app[keys.METRICS].registry
        assert registry.get_sample_value("ringkv_http_auth_failures_total", {"reason": "forbidden"}) == 1

    run(scenario)


@pytest.mark.parametrize("body,content_type", [
    (b"", FORM["Content-Type"]),
    (b"garbage", FORM["Content-Type"]),
    (b"token=rkv_not-a-token", FORM["Content-Type"]),
    (b"token=" + b"x" * 5000, FORM["Content-Type"]),
    (f"token={ADMIN}&pad=".encode() + b"x" * 4096, FORM["Content-Type"]),  # over 4096 bytes, the token valid
    (f"token={ADMIN}".encode(), "text/plain"),
    (f'{{"token": "{ADMIN}"}}'.encode(), "application/json"),
    (f"--b\r\nContent-Disposition: form-data; name=token\r\n\r\n{ADMIN}\r\n--b--\r\n".encode(),
     "multipart/form-data; boundary=b"),
    (b"token=\xff\xfe\xfd", FORM["Content-Type"]),
    (b"token=%ff%fe%fd", FORM["Content-Type"]),
    (f"token={ADMIN}".encode("utf-16"), FORM["Content-Type"]),
], ids=["empty", "garbage", "unknown", "oversized", "oversized-admin", "text", "json", "multipart", "not-utf8",
        "escaped-not-utf8", "utf16"])
def test_malformed_sign_ins_are_refused(body: bytes, content_type: str) -> None:
    async def scenario(client: Client, security: auth.Security) -> None:
        response = await client.post("/ui/login", data=body, headers={"Content-Type": content_type},
                                     allow_redirects=False)
        await assert_refused(response, "not an admin token")
        assert len(security.sessions) == 0

    run(scenario)


def test_the_refusal_is_html_escaped() -> None:
    """Token names are [A-Za-z0-9._-] in a tokens file; an entry built otherwise still cannot inject markup."""
    entries = [*ENTRIES, Entry('<script>alert("x")</script>', "read", tokens.digest(EVIL))]

    async def scenario(client: Client, security: auth.Security) -> None:
        response = await login(client, EVIL)
        await assert_refused(response, "&lt;script&gt;alert(&quot;x&quot;)&lt;/script&gt;")
        assert "<script>alert" not in await response.text()

    run(scenario, secure(entries))


# --- the login body, however it arrives ----------------------------------------------------------------------


def login_with_body_in_two_parts(first: bytes, rest: bytes) -> web.StreamResponse:
    """`ui.login` answering a body whose `rest` arrives only once the handler has waited for more."""
    async def main() -> web.StreamResponse:
        loop = asyncio.get_running_loop()
        payload = StreamReader(mock.Mock(), 2**16, loop=loop)
        payload.feed_data(first)

        def arrive() -> None:
            payload.feed_data(rest)
            payload.feed_eof()

        loop.call_soon(arrive)  # runs as soon as the handler waits (never, if it answers from `first` alone)
        app = web.Application()
        app[keys.SECURITY], app[keys.METRICS] = secure(), NodeMetrics()
        headers = {**FORM, "Content-Length": str(len(first) + len(rest))}
        request = make_mocked_request("POST", "/ui/login", headers=headers, app=app, payload=payload)
        return await ui.login(request)

    return asyncio.run(main())


def test_a_login_body_split_in_two_is_read_whole() -> None:
    response = login_with_body_in_two_parts(f"token={ADMIN[:12]}".encode(), ADMIN[12:].encode())
    assert response.status == 303 and COOKIE in response.cookies


def test_an_oversized_login_body_is_refused_even_when_it_arrives_in_parts() -> None:
    response = login_with_body_in_two_parts(f"token={ADMIN}&pad=".encode(), b"x" * 5000)
    assert response.status == 401 and COOKIE not in response.cookies


# --- sessions ending ---------------------------------------------------------------------------------------


def test_revoking_or_demoting_the_token_ends_its_sessions(tmp_path: Path) -> None:
    path = tmp_path / "tokens"
    path.write_text(tokens.render(ENTRIES))

    async def scenario(client: Client, security: auth.Security) -> None:
        demoted, revoked = await signed_in(client), await signed_in(client)
        path.write_text(tokens.render([Entry("admin-app", "read", tokens.digest(ADMIN)), *ENTRIES[1:]]))
        security.reload()
        assert (await client.get("/admin/v1/members", headers=demoted)).status == 401
        response = await client.get("/ui", headers=revoked, allow_redirects=False)  # demoted too: ended
        assert (response.status, response.headers["Location"]) == (303, "/ui/login")
        path.write_text(tokens.render(ENTRIES))  # the admin token restored: the ended sessions stay ended
        security.reload()
        assert (await client.get("/admin/v1/members", headers=demoted)).status == 401
        assert (await client.get("/admin/v1/members", headers=revoked)).status == 401
        assert len(security.sessions) == 0
        fresh = await signed_in(client)
        path.write_text(tokens.render(ENTRIES[1:]))  # revoked outright
        security.reload()
        assert (await client.get("/admin/v1/members", headers=fresh)).status == 401

    run(scenario, auth.Security("prod", tokens=TokenStore(path)))


def test_logout_ends_the_session() -> None:
    async def scenario(client: Client, security: auth.Security) -> None:
        cookie = await signed_in(client)
        other = await signed_in(client)
        response = await client.post("/ui/logout", headers=cookie, allow_redirects=False)
        assert (response.status, response.headers["Location"]) == (303, "/ui/login")
        assert response.cookies[COOKIE].value == "" and response.cookies[COOKIE]["max-age"] == "0"
        assert (await client.get("/admin/v1/members", headers=cookie)).status == 401
        assert (await client.get("/ui", headers=cookie, allow_redirects=False)).status == 303
        assert (await client.get("/admin/v1/members", headers=other)).status == 200  # only that one
        assert len(security.sessions) == 1

    run(scenario)


def test_an_expired_session_is_refused() -> None:
    async def scenario(client: Client, security: auth.Security) -> None:
        cookie = await signed_in(client)  # ttl 0: expired the moment it is opened
        assert (await client.get("/admin/v1/members", headers=cookie)).status == 401
        assert len(security.sessions) == 0

    run(scenario, secure(sessions=SessionStore(ttl_s=0)))


@pytest.mark.parametrize("value", ["forged", "x" * 43, "", "%00%ff"])
def test_a_forged_cookie_is_no_credential(value: str) -> None:
    async def scenario(client: Client, security: auth.Security) -> None:
        await signed_in(client)  # a live session exists: the forged one still must not match it
        cookie = {"Cookie": f"{COOKIE}={value}"}
        response = await client.get("/admin/v1/members", headers=cookie)
        assert response.status == 401 and response.headers["WWW-Authenticate"].startswith("Bearer")
        response = await client.get("/ui", headers=cookie, allow_redirects=False)
        assert (response.status, response.headers["Location"]) == (303, "/ui/login")

    run(scenario)


# --- an insecure node --------------------------------------------------------------------------------------


def test_an_insecure_node_has_nothing_to_sign_in_to() -> None:
    async def scenario(client: Client, security: auth.Security) -> None:
        for response in (await client.get("/ui/login", allow_redirects=False),
                         await client.post("/ui/login", data={"token": ADMIN}, allow_redirects=False)):
            assert (response.status, response.headers["Location"]) == (303, "/ui")
            assert "Set-Cookie" not in response.headers
        assert (await client.get("/ui")).status == 200

    run(scenario, auth.Security("prod"))
