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
