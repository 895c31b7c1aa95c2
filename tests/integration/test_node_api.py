"""The node's public HTTP API against a real `ringkv node` process: the contract of issue 3.

One node serves the whole module (each test uses its own keys); the SIGTERM tests start their own. Requests
go through `ringkv.client.Client` where it can express them and through raw aiohttp where they must be
malformed. Every error answer is checked for its status, its stable `error` code, a message, JSON, and the
absence of a traceback; every rejected write is followed by a read proving the key's previous value (and
context) intact.
"""

from __future__ import annotations

import asyncio
import json
import signal
import time
from collections.abc import Iterator, Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import aiohttp
import orjson
import pytest
from prometheus_client.parser import text_string_to_metric_families

import ringkv
from ringkv.client import Client, ClientError, JSONValue
from tests.integration.nodes import NodeProcess

MAX_ITEM_BYTES = 10 * 1024  # the contract's number, not imported: the test states it independently
TIMEOUT = aiohttp.ClientTimeout(total=10)


@pytest.fixture(scope="module")
def node(tmp_path_factory: pytest.TempPathFactory) -> Iterator[NodeProcess]:
    with NodeProcess(tmp_path_factory.mktemp("api") / "data", node_id="api") as n:
        yield n
        log = n.stderr()
        assert "Traceback" not in log and "ERROR" not in log, log[-4000:]  # no request failed unexpectedly


# -- raw HTTP -----------------------------------------------------------------------------------------------


@dataclass(frozen=True)
class Reply:
    status: int
    content_type: str
    headers: Mapping[str, str]
    body: bytes

    @property
    def doc(self) -> Any:
        return orjson.loads(self.body)


async def call(url: str, method: str, path: str, *, body: bytes | None = None,
               content_type: str | None = "application/json", params: Mapping[str, str] | None = None) -> Reply:
    headers = {"Content-Type": content_type} if content_type is not None and body is not None else {}
    skip = ["Content-Type"] if content_type is None else []
    async with aiohttp.ClientSession(timeout=TIMEOUT, skip_auto_headers=skip) as session, \
            session.request(method, url + path, data=body, headers=headers, params=params) as response:
        return Reply(response.status, response.content_type, dict(response.headers), await response.read())


def run(coro: Any) -> Any:
    return asyncio.run(coro)


def assert_error(reply: Reply, status: int, code: str) -> dict[str, Any]:
    assert b"Traceback" not in reply.body and b'File "' not in reply.body, reply.body
    assert reply.status == status, reply.body
    assert reply.content_type == "application/json", reply
    doc = reply.doc
    assert isinstance(doc, dict), doc
    assert doc.get("error") == code, doc
    assert isinstance(doc.get("message"), str) and doc["message"], doc
    return doc


def put_body(key: object, value: object, **extra: object) -> bytes:
    return orjson.dumps({"key": key, "value": value, **extra})


def item_bytes(key: str, value: JSONValue) -> int:
    """The size the contract limits: UTF-8 key plus the compact JSON of the value."""
    return len(key.encode()) + len(orjson.dumps(value))


def sized_value(key: str, size: int, prefix: str = "") -> str:
    """A string value (`prefix` then ASCII filler) for which `item_bytes(key, value) == size`."""
    filler = size - len(key.encode()) - len(orjson.dumps(prefix))
    assert filler >= 0
    value = prefix + "x" * filler
    assert item_bytes(key, value) == size
    return value


# -- the contract -------------------------------------------------------------------------------------------


def test_put_answers_key_and_context_and_both_read_routes_answer_value(node: NodeProcess) -> None:
    async def scenario() -> None:
        put = await call(node.url, "POST", "/api/v1/put", body=put_body("contract", {"a": 1}))
        assert put.status == 200 and put.content_type == "application/json"
        assert set(put.doc) == {"key", "context"} and put.doc["key"] == "contract"
        assert isinstance(put.doc["context"], str) and put.doc["context"]
        for route in ("/api/v1/getValue", "/api/v1/get"):
            got = await call(node.url, "GET", route, params={"key": "contract"})
            assert got.status == 200 and got.content_type == "application/json"
            assert got.doc == {"key": "contract", "value": {"a": 1}, "context": put.doc["context"]}

    run(scenario())


VALUES: list[JSONValue] = [
    "plain",
    "",
    [],
    {},
    ["a", 1, 2.5, -0.0, True, False, None, 10**18],
    {"name": "Ada", "age": 36, "tags": ["x", "y"]},
    {"deep": {"er": [{"and": ["deeper", {"still": {}}]}]}},
    "ключ ✓ 𝄞 日本語 é",
    {"ключ": ["✓", "𝄞"], "": ""},
    'quotes " backslash \\ newline \n tab \t nul \u0000',
    [[[[[[[[[["nested"]]]]]]]]]],
]


@pytest.mark.parametrize("index", range(len(VALUES)))
def test_every_kind_of_value_round_trips_exactly(node: NodeProcess, index: int) -> None:
    key, value = f"roundtrip-{index}", VALUES[index]

    async def scenario() -> None:
        async with Client(node.url) as client:
            context = await client.put(key, value)
            got = await client.get(key)
        assert got.found and got.values == [value] and got.context == context
        raw = await call(node.url, "GET", "/api/v1/get", params={"key": key})
        assert orjson.dumps(value) in raw.body  # stored and answered as compact JSON

    run(scenario())


ODD_KEYS = ["\x00", "a/b?c=d&e=f#g", " ", "+plus+", "%41", "line\nbreak", "\ufeff", "🙂", "ключ"]


def test_any_non_empty_string_is_a_key(node: NodeProcess) -> None:
    async def scenario() -> None:
        async with Client(node.url) as client:
            for key in ODD_KEYS:
                await client.put(key, {"key": key})
            for key in ODD_KEYS:
                assert (await client.get(key)).values == [{"key": key}], key
            reply = await call(node.url, "GET", "/api/v1/get", params={"key": "a/b?c=d&e=f#g"})
            assert reply.doc["key"] == "a/b?c=d&e=f#g"

    run(scenario())


def test_absent_key_is_404_not_found(node: NodeProcess) -> None:
    async def scenario() -> None:
        for route in ("/api/v1/getValue", "/api/v1/get"):
            doc = assert_error(await call(node.url, "GET", route, params={"key": "never-written"}), 404,
                               "not_found")
            assert doc["key"] == "never-written" and isinstance(doc["context"], str)
        async with Client(node.url) as client:
            got = await client.get("never-written")
        assert not got.found and got.value is None and got.context is not None

    run(scenario())


def test_concurrent_creates_with_the_404_context_are_both_kept(node: NodeProcess) -> None:
    # Found by `ringkv check`'s set workload: a 404 carried no context, so two clients that read a new key and
    # created it wrote blind, and the later put superseded the acknowledged earlier one.
    async def scenario() -> None:
        async with Client(node.url) as client:
            first, second = await client.get("created-twice"), await client.get("created-twice")
            await client.put("created-twice", ["a"], context=first.context)
            await client.put("created-twice", ["b"], context=second.context)
            got = await client.get("created-twice")
        assert sorted(got.values) == [["a"], ["b"]]  # siblings: nothing acknowledged was lost

    run(scenario())


def test_sequential_plain_puts_overwrite(node: NodeProcess) -> None:
    async def scenario() -> None:
        async with Client(node.url) as client:
            for i in range(5):
                await client.put("sequential", {"n": i})
            got = await client.get("sequential")
        assert got.values == [{"n": 4}] and not got.has_siblings

    run(scenario())


def test_two_puts_with_one_stale_context_are_siblings_until_a_put_with_their_context(node: NodeProcess) -> None:
    async def scenario() -> None:
        async with Client(node.url) as client:
            stale = await client.put("siblings", "v0")
            await client.put("siblings", "left", context=stale)
            await client.put("siblings", "right", context=stale)
            for route in ("/api/v1/getValue", "/api/v1/get"):
                reply = await call(node.url, "GET", route, params={"key": "siblings"})
                assert reply.status == 300, reply.body
                assert set(reply.doc) == {"key", "siblings", "context"} and reply.doc["key"] == "siblings"
                assert sorted(reply.doc["siblings"]) == ["left", "right"]
            got = await client.get("siblings")
            assert got.has_siblings and got.context == reply.doc["context"]
            await client.put("siblings", "merged", context=got.context)
            resolved = await client.get("siblings")
        assert resolved.values == ["merged"]

    run(scenario())


def test_a_lone_node_is_a_single_node_store_and_the_client_sends_w_on_deletes(node: NodeProcess) -> None:
    # No seeds: N = W = R = 1 (a node never lowers a quorum it was given, so N=3 alone would answer 503).
    # Client.delete used to drop `w`; w=2 must reach the node and be refused as more than N.
    async def scenario() -> None:
        async with Client(node.url) as client:
            await client.put("lone", "v", w=1)
            with pytest.raises(ClientError) as refused:
                await client.delete("lone", w=2)
            assert (refused.value.status, refused.value.code) == (400, "invalid_quorum")
            await client.delete("lone", w=1)
            assert not (await client.get("lone", r=1)).found

    run(scenario())


def test_delete_then_404_with_context_then_put_again(node: NodeProcess) -> None:
    async def scenario() -> None:
        async with Client(node.url) as client:
            await client.put("deleted", "here")
            reply = await call(node.url, "POST", "/api/v1/delete", body=orjson.dumps({"key": "deleted"}))
            assert reply.status == 200 and set(reply.doc) == {"key", "context"}
            doc = assert_error(await call(node.url, "GET", "/api/v1/getValue", params={"key": "deleted"}), 404,
                               "not_found")
            assert doc["context"] == reply.doc["context"]  # the tombstone's context
            await client.put("deleted", "back", context=doc["context"])
            assert (await client.get("deleted")).values == ["back"]
            await client.delete("deleted")
            await client.put("deleted", "plain put after delete")
            assert (await client.get("deleted")).values == ["plain put after delete"]
            await client.delete("never-existed-deleted")  # deleting an absent key is fine
            assert not (await client.get("never-existed-deleted")).found

    run(scenario())


def test_delete_with_stale_context_keeps_a_concurrent_put(node: NodeProcess) -> None:
    async def scenario() -> None:
        async with Client(node.url) as client:
            stale = await client.put("del-race", "old")
            await client.put("del-race", "concurrent")  # happened after the deleter's read
            await client.delete("del-race", context=stale)
            got = await client.get("del-race")
            assert got.values == ["concurrent"]
            await client.delete("del-race", context=got.context)  # a delete that saw it removes it
            assert not (await client.get("del-race")).found

    run(scenario())


def test_more_than_100_siblings_is_409_and_the_returned_context_resolves_them(node: NodeProcess) -> None:
    async def scenario() -> None:
        async with Client(node.url) as client:
            stale = await client.put("crowd", "v0")
            await asyncio.gather(*(client.put("crowd", f"s{i}", context=stale) for i in range(100)))
            before = await client.get("crowd")
            assert len(before.values) == 100
            reply = await call(node.url, "POST", "/api/v1/put", body=put_body("crowd", "one too many",
                                                                              context=stale))
            assert_error(reply, 409, "too_many_siblings")
            after = await client.get("crowd")
            assert after.values == before.values and after.context == before.context
            await client.put("crowd", "resolved", context=after.context)
            assert (await client.get("crowd")).values == ["resolved"]
            metrics = await call(node.url, "GET", "/metrics")
        samples = scrape(metrics.body)
        assert samples[("ringkv_sibling_warnings_total", ())] >= 1
        assert samples[("ringkv_read_siblings_bucket", (("le", "100.0"),))] >= 1

    run(scenario())


# -- errors -------------------------------------------------------------------------------------------------

OLD = {"old": ["value"]}


@dataclass(frozen=True)
class BadWrite:
    path: str
    body: bytes
    status: int
    code: str
    content_type: str | None = "application/json"


def bad_writes(key: str) -> dict[str, BadWrite]:
    put, delete = "/api/v1/put", "/api/v1/delete"
    ok_put = put_body(key, "new")
    return {
        "json_truncated": BadWrite(put, ok_put[:-1], 400, "invalid_json"),
        "json_empty": BadWrite(put, b"", 400, "invalid_json"),
        "json_not_utf8": BadWrite(put, b'{"key": "' + key.encode() + b'", "value": "\xff"}', 400, "invalid_json"),
        "json_lone_surrogate": BadWrite(put, b'{"key": "' + key.encode() + b'", "value": "\\ud800"}', 400,
                                        "invalid_json"),
        "delete_json_garbage": BadWrite(delete, b"{key: 1}", 400, "invalid_json"),
        "body_list": BadWrite(put, orjson.dumps([key, "new"]), 400, "invalid_body"),
        "body_string": BadWrite(put, b'"text"', 400, "invalid_body"),
        "body_null": BadWrite(put, b"null", 400, "invalid_body"),
        "delete_body_list": BadWrite(delete, orjson.dumps([key]), 400, "invalid_body"),
        "missing_key": BadWrite(put, orjson.dumps({"value": "new"}), 400, "missing_field"),
        "missing_value": BadWrite(put, orjson.dumps({"key": key}), 400, "missing_field"),
        "null_key": BadWrite(put, put_body(None, "new"), 400, "missing_field"),
        "delete_missing_key": BadWrite(delete, b"{}", 400, "missing_field"),
        "unknown_field": BadWrite(put, put_body(key, "new", ttl=5), 400, "unknown_field"),
        "delete_unknown_field": BadWrite(delete, put_body(key, "new"), 400, "unknown_field"),
        "key_number": BadWrite(put, put_body(5, "new"), 400, "invalid_key"),
        "key_list": BadWrite(put, put_body([key], "new"), 400, "invalid_key"),
        "key_empty": BadWrite(put, put_body("", "new"), 400, "invalid_key"),
        "delete_key_empty": BadWrite(delete, orjson.dumps({"key": ""}), 400, "invalid_key"),
        "value_int": BadWrite(put, put_body(key, 5), 400, "invalid_value"),
        "value_float": BadWrite(put, put_body(key, 1.5), 400, "invalid_value"),
        "value_true": BadWrite(put, put_body(key, True), 400, "invalid_value"),
        "value_false": BadWrite(put, put_body(key, False), 400, "invalid_value"),
        "value_null": BadWrite(put, put_body(key, None), 400, "invalid_value"),
        "value_nested_too_deep": BadWrite(put, b'{"key": "' + key.encode() + b'", "value": ' + b"[" * 300
                                          + b"]" * 300 + b"}", 400, "invalid_value"),
        "context_garbage": BadWrite(put, put_body(key, "new", context="not a context!"), 400, "invalid_context"),
        "context_empty": BadWrite(put, put_body(key, "new", context=""), 400, "invalid_context"),
        "context_bad_format": BadWrite(put, put_body(key, "new", context="AAAA"), 400, "invalid_context"),
        "context_not_canonical": BadWrite(put, put_body(key, "new", context="AYGibjEB="), 400, "invalid_context"),
        "context_too_long": BadWrite(put, put_body(key, "new", context="A" * 5000), 400, "invalid_context"),
        "context_number": BadWrite(put, put_body(key, "new", context=5), 400, "invalid_context"),
        "context_object": BadWrite(put, put_body(key, "new", context={"n1": 1}), 400, "invalid_context"),
        "delete_context_garbage": BadWrite(delete, orjson.dumps({"key": key, "context": "%%%"}), 400,
                                           "invalid_context"),
        "text_plain": BadWrite(put, ok_put, 415, "unsupported_media_type", "text/plain"),
        "form": BadWrite(put, ok_put, 415, "unsupported_media_type", "application/x-www-form-urlencoded"),
        "no_content_type": BadWrite(put, ok_put, 415, "unsupported_media_type", None),
        "delete_text_plain": BadWrite(delete, orjson.dumps({"key": key}), 415, "unsupported_media_type",
                                      "text/plain"),
        "body_over_max_request_bytes": BadWrite(put, put_body(key, "x" * 70_000), 413, "request_too_large"),
        "garbage_over_max_request_bytes": BadWrite(put, b"{" * 70_000, 413, "request_too_large"),
        "delete_over_max_request_bytes": BadWrite(delete, orjson.dumps({"key": key, "pad": "x" * 70_000}), 413,
                                                  "request_too_large"),
        "item_at_limit": BadWrite(put, put_body(key, sized_value(key, MAX_ITEM_BYTES)), 413, "value_too_large"),
        "key_at_limit": BadWrite(put, put_body("k" * MAX_ITEM_BYTES, "new"), 413, "key_too_large"),
    }


BAD_WRITE_NAMES = list(bad_writes("k"))


@pytest.mark.parametrize("name", BAD_WRITE_NAMES)
def test_rejected_write_answers_its_error_and_writes_nothing(node: NodeProcess, name: str) -> None:
    key = f"rejected-{name}"
    bad = bad_writes(key)[name]

    async def scenario() -> None:
        async with Client(node.url) as client:
            await client.put(key, OLD)
            before = await client.get(key)
            assert_error(await call(node.url, "POST", bad.path, body=bad.body, content_type=bad.content_type),
                         bad.status, bad.code)
            after = await client.get(key)
        assert after.values == [OLD] and after.context == before.context

    run(scenario())


def test_read_errors(node: NodeProcess) -> None:
    async def scenario() -> None:
        for route in ("/api/v1/getValue", "/api/v1/get"):
            assert_error(await call(node.url, "GET", route), 400, "missing_field")
            assert_error(await call(node.url, "GET", route, params={"other": "x"}), 400, "missing_field")
            assert_error(await call(node.url, "GET", route, params={"key": ""}), 400, "invalid_key")
            assert_error(await call(node.url, "GET", route, params={"key": "k" * MAX_ITEM_BYTES}), 413,
                         "key_too_large")

    run(scenario())


@pytest.mark.parametrize(("method", "path", "status", "code"), [
    ("GET", "/nope", 404, "not_found"),
    ("GET", "/api/v1/getvalue", 404, "not_found"),
    ("POST", "/api/v2/put", 404, "not_found"),
    ("GET", "/api/v1/put", 405, "method_not_allowed"),
    ("PUT", "/api/v1/put", 405, "method_not_allowed"),
    ("GET", "/api/v1/delete", 405, "method_not_allowed"),
    ("DELETE", "/api/v1/delete", 405, "method_not_allowed"),
    ("POST", "/api/v1/getValue", 405, "method_not_allowed"),
    ("POST", "/health", 405, "method_not_allowed"),
])
def test_routing_errors(node: NodeProcess, method: str, path: str, status: int, code: str) -> None:
    reply = run(call(node.url, method, path, body=b"{}"))
    assert_error(reply, status, code)
    if status == 405:
        assert reply.headers.get("Allow"), reply.headers


# -- the 10,240-byte boundary -------------------------------------------------------------------------------


@pytest.mark.parametrize(("key", "prefix"), [
    ("boundary-ascii", ""),
    ("граница-€-𝄞", ""),  # 2-, 3- and 4-byte characters in the key: counted in bytes
    ("boundary-value-utf8", "é€𝄞" * 100),  # multi-byte characters in the value: counted in bytes
    ("€" * 3000, "𝄞" * 200),  # more than a third of the limit is key, and 3 bytes per character
])
def test_key_plus_value_must_be_under_10240_bytes(node: NodeProcess, key: str, prefix: str) -> None:
    fits = sized_value(key, MAX_ITEM_BYTES - 1, prefix)
    too_big = sized_value(key, MAX_ITEM_BYTES, prefix)
    if not key.isascii() or prefix:
        assert len(key) + len(too_big) + 2 < MAX_ITEM_BYTES  # counting characters would wrongly accept it

    async def scenario() -> None:
        async with Client(node.url) as client:
            await client.put(key, fits)
            assert (await client.get(key)).values == [fits]
            reply = await call(node.url, "POST", "/api/v1/put", body=put_body(key, too_big))
            assert_error(reply, 413, "value_too_large")
            assert (await client.get(key)).values == [fits]

    run(scenario())


def test_limit_counts_compact_json_not_request_bytes(node: NodeProcess) -> None:
    """An object value sent pretty-printed with \\u escapes: the compact UTF-8 JSON is what counts."""
    key = "boundary-object"
    base: dict[str, JSONValue] = {"list": ["a", "b"], "text": "ü" * 10, "pad": ""}
    pad = MAX_ITEM_BYTES - 1 - item_bytes(key, base)
    fits = {**base, "pad": "x" * pad}
    too_big = {**base, "pad": "x" * (pad + 1)}
    assert item_bytes(key, fits) == MAX_ITEM_BYTES - 1 and item_bytes(key, too_big) == MAX_ITEM_BYTES

    async def scenario() -> None:
        pretty = json.dumps({"key": key, "value": fits}, indent=4, ensure_ascii=True).encode()
        assert len(pretty) > MAX_ITEM_BYTES
        assert (await call(node.url, "POST", "/api/v1/put", body=pretty)).status == 200
        pretty = json.dumps({"key": key, "value": too_big}, indent=4, ensure_ascii=True).encode()
        assert_error(await call(node.url, "POST", "/api/v1/put", body=pretty), 413, "value_too_large")
        async with Client(node.url) as client:
            assert (await client.get(key)).values == [fits]

    run(scenario())


def test_longest_key_can_be_read_back(node: NodeProcess) -> None:
    """A key a put accepts must be readable: the query carries it percent-encoded, 3 characters a byte."""
    key = "€" * 3412 + "k"
    assert item_bytes(key, "") == MAX_ITEM_BYTES - 1

    async def scenario() -> None:
        async with Client(node.url) as client:
            await client.put(key, "")
            assert (await client.get(key)).values == [""]
            await client.delete(key)
            assert not (await client.get(key)).found

    run(scenario())


# -- health, readiness, metrics, OpenAPI --------------------------------------------------------------------


def test_health_and_ready(node: NodeProcess) -> None:
    health = run(call(node.url, "GET", "/health"))
    assert health.status == 200 and health.doc == {"status": "ok", "node_id": "api", "phase": "serving"}
    ready = run(call(node.url, "GET", "/ready"))
    assert ready.status == 200 and ready.doc == {"status": "ready", "node_id": "api"}


def scrape(text: bytes) -> dict[tuple[str, tuple[tuple[str, str], ...]], float]:
    return {(s.name, tuple(sorted(s.labels.items()))): s.value
            for family in text_string_to_metric_families(text.decode()) for s in family.samples}


def test_metrics(node: NodeProcess) -> None:
    async def scenario() -> Reply:
        async with Client(node.url) as client:
            await client.put("metrics", "m")
            await client.get("metrics")
            await client.get("metrics-absent")
        await call(node.url, "POST", "/api/v1/put", body=b"{")
        await call(node.url, "GET", "/no-such-route")
        return await call(node.url, "GET", "/metrics")

    reply = run(scenario())
    assert reply.status == 200 and reply.content_type == "text/plain"
    samples = scrape(reply.body)

    def value(name: str, **labels: str) -> float:
        return samples[(name, tuple(sorted(labels.items())))]

    assert value("ringkv_http_requests_total", route="/api/v1/put", method="POST", status="200") >= 1
    assert value("ringkv_http_requests_total", route="/api/v1/put", method="POST", status="400") >= 1
    assert value("ringkv_http_requests_total", route="/api/v1/getValue", method="GET", status="200") >= 1
    assert value("ringkv_http_requests_total", route="/api/v1/getValue", method="GET", status="404") >= 1
    assert value("ringkv_http_requests_total", route="unmatched", method="GET", status="404") >= 1
    assert value("ringkv_http_request_duration_seconds_count", route="/api/v1/put", method="POST") >= 2
    assert value("ringkv_http_request_duration_seconds_bucket", route="/api/v1/put", method="POST",
                 le="+Inf") >= 2
    for gauge in ("ringkv_storage_memtable_bytes", "ringkv_storage_sstables", "ringkv_storage_sstable_bytes"):
        assert value(gauge) >= 0
    assert value("ringkv_storage_memtable_bytes") > 0
    assert value("ringkv_storage_commitlog_fsync_duration_seconds_count") >= 1  # durability sync
    assert value("ringkv_storage_bloom_filter_checks_total", outcome="negative") >= 0
    # errors by their stable code (the JSON body's `error`), for the dashboard's "errors by code"
    assert value("ringkv_http_errors_total", code="not_found") >= 2  # the absent key, the unknown route
    assert value("ringkv_http_errors_total", code="invalid_json") >= 1
    # the data directory's file system, for the disk-full alerts
    assert 0 < value("ringkv_storage_disk_free_bytes") <= value("ringkv_storage_disk_capacity_bytes")
    assert value("ringkv_node_info", node=node.node_id, node_rack="rack1", node_datacenter="dc1",
                 version=ringkv.__version__) == 1
    assert value("ringkv_cluster_member_up", member=node.node_id, member_rack="rack1", member_datacenter="dc1",
                 member_status="normal") == 1
    for kind in ("repair", "decommission", "removenode", "cleanup", "drain"):
        assert value("ringkv_operation_age_seconds", kind=kind) == 0
        assert value("ringkv_operation_progress_ratio", kind=kind) == 0


def test_openapi_document(node: NodeProcess) -> None:
    reply = run(call(node.url, "GET", "/api/v1/openapi.json"))
    assert reply.status == 200 and reply.content_type == "application/json"
    doc = reply.doc
    assert doc["openapi"].startswith("3.") and doc["info"]["title"] and doc["info"]["version"]
    operations = {("post", "/api/v1/put"), ("get", "/api/v1/getValue"), ("get", "/api/v1/get"),
                  ("post", "/api/v1/delete"), ("get", "/health"), ("get", "/ready"), ("get", "/metrics")}
    for method, path in operations:
        assert doc["paths"][path][method]["responses"], (method, path)
    schemas = doc["components"]["schemas"]

    def refs(node: object) -> Iterator[str]:
        if isinstance(node, dict):
            for k, v in node.items():
                if k == "$ref":
                    yield v
                else:
                    yield from refs(v)
        elif isinstance(node, list):
            for v in node:
                yield from refs(v)

    for ref in refs(doc):
        assert ref.startswith("#/components/schemas/") and ref.rsplit("/", 1)[1] in schemas, ref


def test_answers_match_the_openapi_document(node: NodeProcess) -> None:
    """Each answer's status is documented for its operation and its body validates against the schema."""
    jsonschema_rs = pytest.importorskip("jsonschema_rs")
    doc = run(call(node.url, "GET", "/api/v1/openapi.json")).doc

    async def scenario() -> list[tuple[str, str, Reply]]:
        replies: list[tuple[str, str, Reply]] = []

        async def record(method: str, path: str, **kwargs: Any) -> Reply:
            reply = await call(node.url, method, path, **kwargs)
            replies.append((method.lower(), path, reply))
            return reply

        stale = (await record("POST", "/api/v1/put", body=put_body("doc", "a"))).doc["context"]
        await record("GET", "/api/v1/getValue", params={"key": "doc"})
        await record("POST", "/api/v1/put", body=put_body("doc", "b", context=stale))
        await record("POST", "/api/v1/put", body=put_body("doc", "c", context=stale))
        await record("GET", "/api/v1/get", params={"key": "doc"})  # 300
        await record("GET", "/api/v1/get", params={"key": "doc-absent"})  # 404
        await record("GET", "/api/v1/get")  # 400
        await record("GET", "/api/v1/get", params={"key": "k" * MAX_ITEM_BYTES})  # 413
        await record("POST", "/api/v1/put", body=b"[")  # 400
        await record("POST", "/api/v1/put", body=put_body("doc", "x" * MAX_ITEM_BYTES))  # 413
        await record("POST", "/api/v1/put", body=b"{}", content_type="text/plain")  # 415
        await record("POST", "/api/v1/delete", body=orjson.dumps({"key": "doc"}))
        await record("GET", "/api/v1/get", params={"key": "doc"})  # 404 with context
        await record("GET", "/health")
        await record("GET", "/ready")
        return replies

    replies = run(scenario())
    statuses = set()
    for method, path, reply in replies:
        responses = doc["paths"][path][method]["responses"]
        assert str(reply.status) in responses, (method, path, reply.status, reply.body)
        statuses.add(reply.status)
        schema = responses[str(reply.status)]["content"]["application/json"]["schema"]
        validator = jsonschema_rs.Draft4Validator({**schema, "components": doc["components"]})
        errors = [e.message for e in validator.iter_errors(reply.doc)]
        assert not errors, (method, path, reply.status, reply.body, errors)
    assert statuses == {200, 300, 400, 404, 413, 415}


# -- SIGTERM ------------------------------------------------------------------------------------------------


def test_sigterm_exits_0_and_keeps_every_acknowledged_write(tmp_path: Path) -> None:
    with NodeProcess(tmp_path / "data", node_id="term") as node:
        assert node.stop() == 0, node.stderr()  # SIGTERM the moment the ready line is read: graceful too
        node.start()

        async def write_all() -> dict[str, JSONValue]:
            async with Client(node.url) as client:
                values: dict[str, JSONValue] = {f"term-{i}": {"i": i} for i in range(100)}
                await asyncio.gather(*(client.put(k, v) for k, v in values.items()))
                await client.put("term-0", "overwritten")
                await client.delete("term-1")
                values["term-0"] = "overwritten"
                del values["term-1"]
                return values

        values = run(write_all())
        started = time.monotonic()
        assert node.stop() == 0, node.stderr()
        assert time.monotonic() - started < 10.0
        assert "stopped" in node.stderr()
        node.start()

        async def read_all() -> None:
            async with Client(node.url) as client:
                for k, v in values.items():
                    assert (await client.get(k)).values == [v], k
                assert not (await client.get("term-1")).found

        run(read_all())


def test_sigterm_during_writes_finishes_in_flight_requests(tmp_path: Path) -> None:
    """Writers keep writing while SIGTERM arrives: every answer is 200, or 503 `shutting_down`, or no answer
    (connection refused or closed); never a 5xx of another kind. Every 200 survives the restart."""
    writers, per_writer = 8, 400
    with NodeProcess(tmp_path / "data", node_id="drain") as node:
        acked: dict[str, str] = {}
        in_flight: dict[str, str] = {}
        outcomes: list[str] = []

        async def writer(client: Client, w: int, signalled: asyncio.Event) -> None:
            for i in range(per_writer):
                key, value = f"drain-{w}-{i % 10}", f"{w}-{i}"
                in_flight[key] = value
                try:
                    await client.put(key, value)
                except ClientError as e:
                    outcomes.append(f"{e.status} {e.code}")
                    return
                del in_flight[key]
                acked[key] = value
                outcomes.append("200")
                if len(acked) == 40 and not signalled.is_set():
                    signalled.set()
                    node.send_signal(signal.SIGTERM)  # mid-stream, from the loop
            raise AssertionError("the writers ran out of work before the node stopped")

        async def scenario() -> None:
            signalled = asyncio.Event()
            async with Client(node.url, timeout_s=15) as client:
                await asyncio.gather(*(writer(client, w, signalled) for w in range(writers)))

        run(scenario())
        assert node.stop() == 0, node.stderr()
        assert set(outcomes) <= {"200", "503 shutting_down", "0 unreachable"}, outcomes
        node.start()

        async def verify() -> None:
            async with Client(node.url) as client:
                for key, value in acked.items():
                    got = (await client.get(key)).values
                    assert got in ([value], [in_flight.get(key)]), (key, value, got)

        run(verify())
