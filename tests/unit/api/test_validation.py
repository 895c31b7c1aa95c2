"""Request validation (pure): every rule of the API contract, the 10,240-byte boundary, and hypothesis over
the JSON values a put may carry."""

from __future__ import annotations

import json
from typing import Any

import orjson
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from ringkv.api import validation
from ringkv.api.validation import MAX_ITEM_BYTES, parse_delete, parse_key_query, parse_put
from ringkv.cluster import versions
from ringkv.cluster.versions import NodeId, VersionVector
from ringkv.errors import PayloadTooLargeError, RingkvError

CONTEXT = VersionVector.of({NodeId("n1"): 3, NodeId("n2"): 1})
TOKEN = versions.encode_context(CONTEXT)


def body(**doc: Any) -> bytes:
    return orjson.dumps(doc)


def code_of(call: Any, *args: Any) -> str:
    """The stable code of the error `call(*args)` raises (every one the API maps to a 4xx)."""
    with pytest.raises(RingkvError) as info:
        call(*args)
    return info.value.code


def test_limit_is_10240_bytes() -> None:
    assert MAX_ITEM_BYTES == 10_240


# -- put ----------------------------------------------------------------------------------------------------


def test_put_without_context() -> None:
    req = parse_put(b'{"key": "k\xc3\xa9", "value": {"a": [1, 2.5, "\xe2\x9c\x93"], "b": null}}')
    assert req.key == "ké" and req.key_bytes == "ké".encode()
    assert req.value_json == orjson.dumps({"a": [1, 2.5, "✓"], "b": None}) == b'{"a":[1,2.5,"\xe2\x9c\x93"],"b":null}'
    assert req.context is None


def test_put_with_context_and_with_null_context() -> None:
    assert parse_put(body(key="k", value="v", context=TOKEN)).context == CONTEXT
    assert parse_put(body(key="k", value="v", context=None)).context is None


@pytest.mark.parametrize("value", ["", [], {}, "text", ["a", 1], {"k": {"n": [None, True]}}])
def test_put_accepts_strings_lists_and_objects(value: Any) -> None:
    assert parse_put(body(key="k", value=value)).value_json == orjson.dumps(value)


@pytest.mark.parametrize(("raw", "code"), [
    (b"", "invalid_json"),
    (b'{"key": "k", "value": "v"', "invalid_json"),
    (b'{"key": "k", "value": "\xff"}', "invalid_json"),  # not UTF-8
    (b'{"key": "\\ud800", "value": "v"}', "invalid_json"),  # lone surrogate
    (b"NaN", "invalid_json"),
    (b'["k", "v"]', "invalid_body"),
    (b'"k"', "invalid_body"),
    (b"null", "invalid_body"),
    (b"5", "invalid_body"),
    (b'{"value": "v"}', "missing_field"),
    (b'{"key": null, "value": "v"}', "missing_field"),
    (b'{"key": "k"}', "missing_field"),
    (b'{"key": "k", "value": "v", "ttl": 1}', "unknown_field"),
    (b'{"key": "k", "value": "v", "Key": "k"}', "unknown_field"),
    (b'{"key": 5, "value": "v"}', "invalid_key"),
    (b'{"key": ["k"], "value": "v"}', "invalid_key"),
    (b'{"key": {}, "value": "v"}', "invalid_key"),
    (b'{"key": true, "value": "v"}', "invalid_key"),
    (b'{"key": "", "value": "v"}', "invalid_key"),
    (b'{"key": "k", "value": 5}', "invalid_value"),
    (b'{"key": "k", "value": -1.5e3}', "invalid_value"),
    (b'{"key": "k", "value": true}', "invalid_value"),
    (b'{"key": "k", "value": false}', "invalid_value"),
    (b'{"key": "k", "value": null}', "invalid_value"),
    (b'{"key": "k", "value": ' + b"[" * 300 + b"]" * 300 + b"}", "invalid_value"),  # deeper than orjson writes
    (b'{"key": "k", "value": "v", "context": 5}', "invalid_context"),
    (b'{"key": "k", "value": "v", "context": ["x"]}', "invalid_context"),
    (b'{"key": "k", "value": "v", "context": {"n1": 3}}', "invalid_context"),
    (b'{"key": "k", "value": "v", "context": ""}', "invalid_context"),
    (b'{"key": "k", "value": "v", "context": "not base64!"}', "invalid_context"),
    (b'{"key": "k", "value": "v", "context": "AAAA"}', "invalid_context"),  # unknown format byte
    (b'{"key": "k", "value": "v", "context": "' + TOKEN.encode() + b'="}', "invalid_context"),  # padded
])
def test_put_errors(raw: bytes, code: str) -> None:
    assert code_of(parse_put, raw) == code


def test_long_context_refused() -> None:
    assert code_of(parse_put, body(key="k", value="v", context="A" * (versions.MAX_CONTEXT_CHARS + 1))) \
        == "invalid_context"


def test_key_must_be_valid_unicode() -> None:
    assert code_of(validation.check_key, "lone \ud800 surrogate") == "invalid_key"


# -- the boundary -------------------------------------------------------------------------------------------


def sized(key: str, size: int, prefix: str = "") -> str:
    filler = size - len(key.encode()) - len(orjson.dumps(prefix))
    value = prefix + "x" * filler
    assert len(key.encode()) + len(orjson.dumps(value)) == size
    return value


@pytest.mark.parametrize(("key", "prefix"), [("k", ""), ("ключ€𝄞", ""), ("k", "é€𝄞" * 50), ("€" * 3000, "\n\t\"")])
def test_boundary_counts_utf8_bytes_of_key_and_compact_value(key: str, prefix: str) -> None:
    fits = sized(key, MAX_ITEM_BYTES - 1, prefix)
    req = parse_put(body(key=key, value=fits))
    assert len(req.key_bytes) + len(req.value_json) == MAX_ITEM_BYTES - 1
    with pytest.raises(PayloadTooLargeError) as info:
        parse_put(body(key=key, value=sized(key, MAX_ITEM_BYTES, prefix)))
    assert info.value.code == "value_too_large"


def test_boundary_is_on_compact_json_not_on_the_request() -> None:
    value = {"list": ["a", "b"], "pad": ""}
    value["pad"] = "x" * (MAX_ITEM_BYTES - 1 - 1 - len(orjson.dumps(value)))
    pretty = json.dumps({"key": "k", "value": value}, indent=8).encode()
    assert len(pretty) > MAX_ITEM_BYTES
    assert len(parse_put(pretty).value_json) == MAX_ITEM_BYTES - 2


def test_key_alone_at_the_limit_is_key_too_large() -> None:
    for call, raw in ((parse_put, body(key="k" * MAX_ITEM_BYTES, value="")),
                      (parse_delete, body(key="€" * (MAX_ITEM_BYTES // 3 + 1)))):
        with pytest.raises(PayloadTooLargeError) as info:
            call(raw)
        assert info.value.code == "key_too_large"
    assert parse_delete(body(key="k" * (MAX_ITEM_BYTES - 1))).key_bytes == b"k" * (MAX_ITEM_BYTES - 1)


# -- delete and the key query -------------------------------------------------------------------------------


def test_delete() -> None:
    req = parse_delete(body(key="ké"))
    assert (req.key, req.key_bytes, req.context) == ("ké", "ké".encode(), None)
    assert parse_delete(body(key="k", context=TOKEN)).context == CONTEXT


@pytest.mark.parametrize(("raw", "code"), [
    (b"{", "invalid_json"),
    (b"[]", "invalid_body"),
    (b"{}", "missing_field"),
    (b'{"key": "k", "value": "v"}', "unknown_field"),
    (b'{"key": 1}', "invalid_key"),
    (b'{"key": ""}', "invalid_key"),
    (b'{"key": "k", "context": "%%"}', "invalid_context"),
])
def test_delete_errors(raw: bytes, code: str) -> None:
    assert code_of(parse_delete, raw) == code


def test_key_query() -> None:
    assert parse_key_query({"key": "ké"}) == ("ké", "ké".encode())
    assert code_of(parse_key_query, {}) == "missing_field"
    assert code_of(parse_key_query, {"other": "k"}) == "missing_field"
    assert code_of(parse_key_query, {"key": ""}) == "invalid_key"
    with pytest.raises(PayloadTooLargeError):
        parse_key_query({"key": "k" * MAX_ITEM_BYTES})


# -- properties ---------------------------------------------------------------------------------------------

texts = st.text(st.characters(blacklist_categories=("Cs",)), max_size=40)
keys = st.text(st.characters(blacklist_categories=("Cs",)), min_size=1, max_size=40)
scalars = st.none() | st.booleans() | st.integers(-(2**63), 2**63 - 1) | st.floats(allow_nan=False,
                                                                                     allow_infinity=False)
json_any = st.recursive(scalars | texts, lambda inner: st.lists(inner, max_size=5)
                        | st.dictionaries(texts, inner, max_size=5), max_leaves=20)
values = texts | st.lists(json_any, max_size=8) | st.dictionaries(texts, json_any, max_size=8)


@settings(max_examples=100, deadline=None)
@given(key=keys, value=values, pretty=st.booleans())
def test_any_string_list_or_object_is_accepted_as_its_compact_json(key: str, value: Any, pretty: bool) -> None:
    raw = json.dumps({"key": key, "value": value}, indent=2).encode() if pretty else body(key=key, value=value)
    req = parse_put(raw)
    assert req.key == key and req.key_bytes == key.encode()
    assert req.value_json == orjson.dumps(value)
    assert orjson.loads(req.value_json) == value


@settings(max_examples=100, deadline=None)
@given(key=keys, value=scalars)
def test_numbers_booleans_and_null_are_refused(key: str, value: Any) -> None:
    assert code_of(parse_put, body(key=key, value=value)) == "invalid_value"


@settings(max_examples=100, deadline=None)
@given(key=keys, prefix=texts, over=st.integers(0, 50))
def test_the_boundary_for_any_key_and_value(key: str, prefix: str, over: int) -> None:
    parse_put(body(key=key, value=sized(key, MAX_ITEM_BYTES - 1, prefix)))
    with pytest.raises(PayloadTooLargeError):
        parse_put(body(key=key, value=sized(key, MAX_ITEM_BYTES + over, prefix)))
