"""The operator as a client of the nodes' admin API: URLs from pods, and members from the first node that
answers (a local aiohttp server stands in for nodes)."""

from __future__ import annotations

import asyncio
from typing import Any

import aiohttp
from aiohttp import web

from ringkv_operator import nodeapi, settings


def pod(name: str, ip: str, port: int | None = None) -> dict[str, Any]:
    ports = [{"name": "peer", "containerPort": 7070}] + ([{"name": "http", "containerPort": port}] if port else [])
    return {"metadata": {"name": name, "namespace": "db"}, "spec": {"containers": [{"ports": ports}]},
            "status": {"podIP": ip}}


def test_urls_default_to_the_pods_dns_name() -> None:
    urls = nodeapi.node_urls(settings.DEFAULT_NODE_URL_TEMPLATE, [pod("demo-0", "10.1.0.5")], "demo-peers")
    assert urls == ["http://demo-0.demo-peers.db.svc:8080"]


def test_urls_from_a_template_with_the_pods_address_and_port() -> None:
    urls = nodeapi.node_urls("http://{pod_ip}:{port}", [pod("demo-0", "127.0.0.1", 41234)], "demo-peers")
    assert urls == ["http://127.0.0.1:41234"]


def test_members_from_the_first_node_that_answers() -> None:
    async def scenario() -> tuple[Any, str, Any, str]:
        async def members(request: web.Request) -> web.Response:
            return web.json_response({"node_id": "n1", "members": [{"node_id": "n1", "up": True}]})

        async def broken(request: web.Request) -> web.Response:
            return web.json_response({"error": "boom"}, status=500)

        good, bad = web.Application(), web.Application()
        good.router.add_get("/admin/v1/members", members)
        bad.router.add_get("/admin/v1/members", broken)
        runners = [web.AppRunner(good), web.AppRunner(bad)]
        ports = []
        for runner in runners:
            await runner.setup()
            site = web.TCPSite(runner, "127.0.0.1", 0)
            await site.start()
            ports.append(runner.addresses[0][1])
        try:
            async with aiohttp.ClientSession() as session:
                found, error = await nodeapi.members(
                    session, [f"http://127.0.0.1:{ports[1]}", f"http://127.0.0.1:{ports[0]}"], 2.0)
                none, why = await nodeapi.members(session, [f"http://127.0.0.1:{ports[1]}"], 2.0)
        finally:
            for runner in runners:
                await runner.cleanup()
        return found, error, none, why

    found, error, none, why = asyncio.run(scenario())
    assert found == [{"node_id": "n1", "up": True}] and error == ""
    assert none is None and "HTTP 500" in why


def test_no_ready_node_no_members() -> None:
    async def scenario() -> tuple[Any, str]:
        async with aiohttp.ClientSession() as session:
            return await nodeapi.members(session, [], 1.0)

    assert asyncio.run(scenario()) == (None, "no ready node to ask")


def test_a_nodes_view_with_the_hints_it_holds() -> None:
    async def scenario() -> tuple[Any, Any, Any]:
        async def node(request: web.Request) -> web.Response:
            return web.json_response({"node_id": "n1", "mode": "normal", "view": "v", "agreed": True,
                                      "streaming": [], "storage": {}})

        async def members(request: web.Request) -> web.Response:
            return web.json_response({"members": [{"node_id": "n1", "status": "normal", "up": True}]})

        async def hints(request: web.Request) -> web.Response:
            return web.json_response({"pending": {"n2": 7, "n3": 0}, "bytes": 900, "stored": 7, "delivered": 0})

        app = web.Application()
        app.router.add_get("/admin/v1/node", node)
        app.router.add_get("/admin/v1/members", members)
        app.router.add_get("/admin/v1/hints", hints)
        runner = web.AppRunner(app)
        await runner.setup()
        site = web.TCPSite(runner, "127.0.0.1", 0)
        await site.start()
        url = f"http://127.0.0.1:{runner.addresses[0][1]}"
        try:
            async with aiohttp.ClientSession() as session:
                with_hints = await nodeapi.observe(session, {"n1": url}, 2.0, hints=True)
                without = await nodeapi.observe(session, {"n1": url}, 2.0)
                gone = await nodeapi.observe(session, {"n1": url + "/nowhere"}, 2.0, hints=True)
        finally:
            await runner.cleanup()
        return with_hints["n1"], without["n1"], gone["n1"]

    with_hints, without, gone = asyncio.run(scenario())
    assert with_hints.reachable and with_hints.mode == "normal" and with_hints.hints == {"n2": 7}
    assert without.reachable and without.hints is None  # not asked
    assert not gone.reachable and gone.hints is None


def test_ring_agreement_from_the_first_node_that_answers() -> None:
    async def scenario() -> tuple[bool | None, bool | None]:
        async def ring(request: web.Request) -> web.Response:
            return web.json_response({"digest": "d", "agreed": False, "views": {"n1": "a", "n2": "b"}})

        app = web.Application()
        app.router.add_get("/admin/v1/ring", ring)
        runner = web.AppRunner(app)
        await runner.setup()
        await web.TCPSite(runner, "127.0.0.1", 0).start()
        port = runner.addresses[0][1]
        try:
            async with aiohttp.ClientSession() as session:
                dead = f"http://127.0.0.1:{port + 1 if port < 65535 else port - 1}"
                found = await nodeapi.ring_agreed(session, [dead, f"http://127.0.0.1:{port}"], 2.0)
                none = await nodeapi.ring_agreed(session, [], 2.0)
        finally:
            await runner.cleanup()
        return found, none

    assert asyncio.run(scenario()) == (False, None)
