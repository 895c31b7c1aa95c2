"""The adapters' wire encoding, pure and against small in-process HTTP servers that record what they receive."""

from __future__ import annotations

import asyncio
import base64
from collections.abc import Awaitable, Callable
from typing import Any

import orjson
import pytest
from aiohttp import web
from aiohttp.test_utils import TestServer

from ringkv.loadgen import adapters
from ringkv.loadgen.adapters import EtcdStore, RingkvStore, StoreError


def test_ringkv_put_body_is_the_documented_json() -> None:
    value = "x" * 1024
    doc = orjson.loads(adapters.ringkv_put_body("user:1", value))
    assert doc == {"key": "user:1", "value": value}  # the value is a JSON string of that size


def test_ringkv_get_path_quotes_the_key() -> None:
    assert adapters.ringkv_get_path("key0000000001") == "/api/v1/getValue?key=key0000000001"
    assert adapters.ringkv_get_path("a b&c=d/é") == "/api/v1/getValue?key=a%20b%26c%3Dd%2F%C3%A9"


def test_etcd_bodies_are_base64() -> None:
    put = orjson.loads(adapters.etcd_put_body("k1", "v" * 10))
    assert base64.b64decode(put["key"]) == b"k1" and base64.b64decode(put["value"]) == b"v" * 10
    assert orjson.loads(adapters.etcd_range_body("é")) == {"key": base64.b64encode("é".encode()).decode()}


def test_etcd_found() -> None:
    assert adapters.etcd_found(b'{"header":{},"kvs":[{"key":"azE=","value":"dg=="}],"count":"1"}')
    assert not adapters.etcd_found(b'{"header":{"revision":"3"}}')


def test_error_kinds() -> None:
    assert adapters.error_kind(503, b'{"error":"quorum_unavailable","required":2}') == "503 quorum_unavailable"
    assert adapters.error_kind(400, b'{"error":"etcdserver: bad","code":3,"message":"etcdserver: bad"}') \
        == "400 etcdserver: bad"
    assert adapters.error_kind(502, b"<html>bad gateway</html>") == "502"


Handler = Callable[[web.Request], Awaitable[web.StreamResponse]]


async def serve(routes: list[tuple[str, str, Handler]], body: Callable[[TestServer], Awaitable[None]]) -> None:
    app = web.Application()
    for method, path, handler in routes:
        app.router.add_route(method, path, handler)
    server = TestServer(app)
    await server.start_server()
    try:
        await body(server)
    finally:
        await server.close()


def test_ringkv_store_against_a_fake_node() -> None:
    seen: list[dict[str, Any]] = []
    data: dict[str, str] = {}

    async def put(request: web.Request) -> web.Response:
        assert request.content_type == "application/json"
        doc = orjson.loads(await request.read())
        seen.append(doc)
        if doc["key"] == "refused":
            return web.json_response({"error": "quorum_unavailable", "required": 2, "acknowledged": 1}, status=503)
        data[doc["key"]] = doc["value"]
        return web.json_response({"key": doc["key"], "context": "AAE"})

    async def get(request: web.Request) -> web.Response:
        key = request.query["key"]
        if key in data:
            return web.json_response({"key": key, "value": data[key], "context": "AAE"})
        return web.json_response({"error": "not_found", "message": "key not found"}, status=404)

    async def body(server: TestServer) -> None:
        url = str(server.make_url("")).rstrip("/")
        store = RingkvStore((url, url + "/"), connections=4, timeout_s=5)
        try:
            await store.put("k 1", "v" * 1024)
            assert await store.get("k 1") is True
            assert await store.get("absent") is False
            with pytest.raises(StoreError) as failure:
                await store.put("refused", "v")
            assert failure.value.kind == "503 quorum_unavailable"
        finally:
            await store.close()

    asyncio.run(serve([("POST", "/api/v1/put", put), ("GET", "/api/v1/getValue", get)], body))
    assert seen[0] == {"key": "k 1", "value": "v" * 1024}


def test_ringkv_store_counts_an_unknown_404_as_an_error() -> None:
    async def body(server: TestServer) -> None:
        store = RingkvStore((str(server.make_url("")),), connections=1, timeout_s=5)
        try:
            with pytest.raises(StoreError, match="404"):
                await store.get("k")
        finally:
            await store.close()

    asyncio.run(serve([], body))


def test_etcd_store_finds_the_gateway_prefix_and_encodes_base64() -> None:
    kv: dict[bytes, bytes] = {}
    calls: list[str] = []

    async def put(request: web.Request) -> web.Response:
        calls.append(request.path)
        doc = orjson.loads(await request.read())
        kv[base64.b64decode(doc["key"])] = base64.b64decode(doc["value"])
        return web.json_response({"header": {"revision": "2"}})

    async def range_(request: web.Request) -> web.Response:
        calls.append(request.path)
        key = base64.b64decode(orjson.loads(await request.read())["key"])
        if key in kv:
            return web.json_response({"header": {}, "kvs": [{"key": "", "value": ""}], "count": "1"})
        return web.json_response({"header": {}})

    async def body(server: TestServer) -> None:
        store = await adapters.open_store("etcd", (str(server.make_url("")),), 4, 5.0)
        assert isinstance(store, EtcdStore)
        try:
            assert store.prefix == "/v3beta"  # /v3 answered 404: an etcd 3.3 gateway
            await store.put("k1", "value-1")
            assert await store.get("k1") is True
            assert await store.get("k2") is False
        finally:
            await store.close()

    asyncio.run(serve([("POST", "/v3beta/kv/put", put), ("POST", "/v3beta/kv/range", range_)], body))
    assert kv == {b"k1": b"value-1"}
    assert calls.count("/v3beta/kv/range") == 3  # the probe, then two gets


def test_etcd_store_without_a_gateway_says_so() -> None:
    async def body(server: TestServer) -> None:
        with pytest.raises(StoreError, match="no etcd v3 JSON gateway"):
            await adapters.open_store("etcd", (str(server.make_url("")),), 1, 5.0)

    asyncio.run(serve([], body))
