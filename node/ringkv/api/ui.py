"""The status page: `GET /ui` and its assets (static, shipped in the package, no CDN), the sign-in that turns an
admin token into a read-only session cookie, and `GET /admin/v1/cluster`, the one document the page polls.

    GET  /ui                   the page (admin; unauthenticated browsers are sent to /ui/login)
    GET  /ui/app.js            its script (admin)
    GET  /ui/ui.css            the style sheet (open: the sign-in page uses it too)
    GET  /ui/login             sign-in form (open)      GET /ui/login.js  its script (open)
    POST /ui/login             form field `token`: an admin token -> 303 to /ui with the session cookie;
                               anything else -> 401, the form again, nothing remembered
    POST /ui/logout            forget the session, clear the cookie
    GET  /admin/v1/cluster     `net.status.cluster_status` of this node (admin)

Every page answer carries a Content-Security-Policy admitting only this node's own scripts, styles and
`fetch`es (no inline script), `X-Content-Type-Options: nosniff`, no caching and no framing.
"""

from __future__ import annotations

import functools
import html
from importlib import resources
from urllib.parse import parse_qs

from aiohttp import web

from ringkv.api import keys
from ringkv.api.errors import json_response
from ringkv.api.sessions import COOKIE
from ringkv.net import status

ui_routes = web.RouteTableDef()

MAX_LOGIN_BYTES = 4096
HEADERS = {
    "Content-Security-Policy": "default-src 'none'; script-src 'self'; style-src 'self'; connect-src 'self'; "
                               "img-src 'self' data:; form-action 'self'; base-uri 'none'; frame-ancestors 'none'",
    "X-Content-Type-Options": "nosniff",
    "Referrer-Policy": "no-referrer",
    "Cache-Control": "no-store",
    "X-Frame-Options": "DENY",
}
TYPES = {".html": "text/html", ".js": "text/javascript", ".css": "text/css"}


@functools.cache
def asset(name: str) -> bytes:
    return resources.files("ringkv.api").joinpath("static", name).read_bytes()


def _page(name: str, status_code: int = 200, replace: dict[str, str] | None = None) -> web.Response:
    body = asset(name)
    for placeholder, value in (replace or {}).items():
        body = body.replace(placeholder.encode(), value.encode())
    content_type = TYPES[name[name.rindex("."):]]
    return web.Response(body=body, status=status_code, content_type=content_type, charset="utf-8",
                        headers=HEADERS)


@ui_routes.get("/ui")
async def index(request: web.Request) -> web.Response:
    return _page("index.html")


@ui_routes.get("/ui/app.js")
async def app_js(request: web.Request) -> web.Response:
    return _page("app.js")


@ui_routes.get("/ui/ui.css")
async def ui_css(request: web.Request) -> web.Response:
    return _page("ui.css")


@ui_routes.get("/ui/login.js")
async def login_js(request: web.Request) -> web.Response:
    return _page("login.js")


@ui_routes.get("/ui/login")
async def login_form(request: web.Request) -> web.Response:
    if not request.app[keys.SECURITY].secure:
        raise web.HTTPSeeOther("/ui")  # nothing to sign in to
    return _page("login.html", replace={"{{error}}": ""})


async def _read_at_most(request: web.Request, limit: int) -> bytes:
    """The body up to `limit` bytes, however many pieces it arrives in (`read(n)` answers with what is there)."""
    chunks: list[bytes] = []
    size = 0
    while size < limit:
        chunk = await request.content.read(limit - size)
        if not chunk:
            break
        chunks.append(chunk)
        size += len(chunk)
    return b"".join(chunks)


@ui_routes.post("/ui/login")
async def login(request: web.Request) -> web.Response:
    security = request.app[keys.SECURITY]
    if not security.secure or security.tokens is None:
        raise web.HTTPSeeOther("/ui")
    raw = await _read_at_most(request, MAX_LOGIN_BYTES + 1)
    form = {}
    if len(raw) <= MAX_LOGIN_BYTES and request.content_type == "application/x-www-form-urlencoded":
        form = {k: v[0] for k, v in parse_qs(raw.decode("utf-8", "replace")).items() if v}
    token = form.get("token", "").strip()
    entry = security.tokens.lookup(token)
    if entry is None or entry.role != "admin":
        request.app[keys.METRICS].auth_failed("invalid_token" if entry is None else "forbidden")
        message = "That is not an admin token of this cluster." if entry is None else \
            f"The token {entry.name!r} has role {entry.role!r}; the status page needs an admin token."
        return _page("login.html", 401, replace={"{{error}}": html.escape(message)})
    response = web.Response(status=303, headers={**HEADERS, "Location": "/ui"})
    response.set_cookie(COOKIE, security.sessions.open(token), httponly=True, samesite="Strict",
                        secure=security.http_tls, path="/", max_age=int(security.sessions.ttl_s))
    return response


@ui_routes.post("/ui/logout")
async def logout(request: web.Request) -> web.Response:
    security = request.app[keys.SECURITY]
    session_id = request.cookies.get(COOKIE)
    if session_id:
        security.sessions.close(session_id)
    response = web.Response(status=303, headers={**HEADERS, "Location": "/ui/login"})
    response.del_cookie(COOKIE, path="/")
    return response


@ui_routes.get("/admin/v1/cluster")
async def cluster(request: web.Request) -> web.Response:
    """This node's view of the cluster and every member's own status (see `net/status.py`)."""
    return json_response(await status.cluster_status(keys.node_of(request.app)))
