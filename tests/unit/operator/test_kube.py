"""The operator's Kubernetes client against kmock's emulator (in-process, on 127.0.0.1), and its re-login."""

from __future__ import annotations

import asyncio
from collections.abc import Awaitable, Callable
from typing import Any

import aiohttp
import pytest
from aiohttp import web

from ringkv_operator import kube

kmock = pytest.importorskip("kmock", reason="kmock is missing (pip install -e '.[dev]')")


def config_map(name: str, data: dict[str, str], **labels: str) -> dict[str, Any]:
    return {"apiVersion": "v1", "kind": "ConfigMap",
            "metadata": {"name": name, "namespace": "db", "labels": labels}, "data": data}


def with_api(scenario: Callable[[kube.Api, Any], Awaitable[None]]) -> None:
    async def main() -> None:
        async with kmock.KubernetesEmulator() as emulator, kmock.Server(emulator, host="127.0.0.1") as server:
            emulator.resources["v1/configmaps"] = kmock.ResourceInfo(kind="ConfigMap", namespaced=True)
            api = kube.Api(str(server.url), aiohttp.ClientSession(), lambda: "Bearer t", False)
            try:
                await scenario(api, emulator)
            finally:
                await api.close()

    asyncio.run(main())


def test_ensure_creates_then_leaves_alone_then_patches() -> None:
    async def scenario(api: kube.Api, emulator: Any) -> None:
        desired = config_map("c", {"A": "1", "B": "2"}, app="x")
        assert await api.ensure(desired) == "created"
        assert await api.ensure(desired) == "unchanged"
        assert await api.ensure(config_map("c", {"A": "9"}, app="x")) == "patched"
        got = await api.get(kube.CONFIG_MAP, "db", "c")
        assert got is not None and got["data"] == {"A": "9"}  # B removed: a ConfigMap's data is replaced
        patches = [r for r in emulator if r.method.value == "PATCH"]
        assert [r.headers.get("Content-Type") for r in patches] == ["application/merge-patch+json"]

    with_api(scenario)


def test_list_filters_by_labels_and_missing_objects_are_none() -> None:
    async def scenario(api: kube.Api, emulator: Any) -> None:
        await api.create(config_map("mine", {}, app="x", tier="a"))
        await api.create(config_map("other", {}, app="y"))
        found = await api.list(kube.CONFIG_MAP, "db", {"app": "x"})  # the emulator ignores selectors; we do not
        assert [o["metadata"]["name"] for o in found] == ["mine"]
        assert await api.get(kube.CONFIG_MAP, "db", "nope") is None
        assert await api.delete(kube.CONFIG_MAP, "db", "mine") is True
        assert await api.delete(kube.CONFIG_MAP, "db", "mine") is False
        with pytest.raises(kube.ApiError) as failed:
            await api.patch(kube.CONFIG_MAP, "db", "nope", {"data": {}})
        assert failed.value.status == 404

    with_api(scenario)


def test_a_401_loads_the_credentials_again_and_retries_once() -> None:
    async def scenario() -> tuple[list[str | None], int]:
        seen: list[str | None] = []

        async def handler(request: web.Request) -> web.Response:
            seen.append(request.headers.get("Authorization"))
            if request.headers.get("Authorization") != "Bearer fresh":
                return web.json_response({"message": "Unauthorized"}, status=401)
            return web.json_response({"metadata": {"name": "c"}})

        app = web.Application()
        app.router.add_get("/api/v1/namespaces/db/configmaps/c", handler)
        runner = web.AppRunner(app)
        await runner.setup()
        site = web.TCPSite(runner, "127.0.0.1", 0)
        await site.start()
        token = {"value": "Bearer stale"}
        relogins = 0

        async def relogin() -> None:
            nonlocal relogins
            relogins += 1
            token["value"] = "Bearer fresh"

        api = kube.Api(f"http://127.0.0.1:{runner.addresses[0][1]}", aiohttp.ClientSession(),
                       lambda: token["value"], False, relogin)
        try:
            assert await api.get(kube.CONFIG_MAP, "db", "c") == {"metadata": {"name": "c"}}
        finally:
            await api.close()
            await runner.cleanup()
        return seen, relogins

    seen, relogins = asyncio.run(scenario())
    assert seen == ["Bearer stale", "Bearer fresh"] and relogins == 1


def test_kinds_and_paths() -> None:
    assert kube.STATEFULSET.path("db", "demo") == "/apis/apps/v1/namespaces/db/statefulsets/demo"
    assert kube.SERVICE.path("db") == "/api/v1/namespaces/db/services"
    assert kube.kind_of({"kind": "PodDisruptionBudget"}) == kube.PDB
