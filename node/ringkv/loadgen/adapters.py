"""The stores a benchmark talks to, behind one small interface (`Store`): put a string value, get a key.

Wire formats (the request encoders are pure functions, unit-tested):

- ringkv: `POST /api/v1/put` with `{"key": K, "value": V}` (V a JSON string); `GET /api/v1/getValue?key=K`,
  200 (or 300, siblings) = found, 404 `not_found` = miss. HTTP keep-alive; endpoints used in turn (a client
  spreading load over the nodes, as a load balancer would).
- etcd v3 JSON gateway: `POST {prefix}/kv/put` with `{"key": b64(K), "value": b64(V)}`; `POST {prefix}/kv/range`
  with `{"key": b64(K)}` (default linearizable read), found when the answer has `kvs`. The prefix is `/v3` on etcd
  3.4+, `/v3beta` on 3.3, `/v3alpha` on 3.2: `open_store` probes them in that order. Keep-alive, endpoints in turn.
- Redis: redis-py asyncio, `SET K V` / `GET K`, one blocking connection pool of `connections` connections.

Any answer that is not a success raises `StoreError(kind)`, `kind` a short stable label ("503 quorum_unavailable")
that the error counts are grouped by. Transport failures surface as the client library's own exceptions; the runner
names them.
"""

from __future__ import annotations

import base64
import itertools
from typing import Any, Protocol
from urllib.parse import quote

import aiohttp
import orjson
from yarl import URL

from ringkv.security.credentials import Credentials

JSON_HEADERS = {"Content-Type": "application/json"}
ETCD_PREFIXES = ("/v3", "/v3beta", "/v3alpha")


class StoreError(Exception):
    def __init__(self, kind: str) -> None:
        super().__init__(kind)
        self.kind = kind


class Store(Protocol):
    async def put(self, key: str, value: str) -> None: ...

    async def get(self, key: str) -> bool:
        """True when the key was found."""
        ...

    async def close(self) -> None: ...


# -- request encoding (pure) ----------------------------------------------------------------------------------


def ringkv_put_body(key: str, value: str) -> bytes:
    return orjson.dumps({"key": key, "value": value})


def ringkv_get_path(key: str) -> str:
    return "/api/v1/getValue?key=" + quote(key, safe="")


def b64(text: str) -> str:
    return base64.b64encode(text.encode()).decode("ascii")


def etcd_put_body(key: str, value: str) -> bytes:
    return orjson.dumps({"key": b64(key), "value": b64(value)})


def etcd_range_body(key: str) -> bytes:
    return orjson.dumps({"key": b64(key)})


def etcd_found(raw: bytes) -> bool:
    """Whether a range answer holds the key (the gateway leaves out `kvs` when there is none)."""
    doc = orjson.loads(raw)
    return bool(doc.get("kvs"))


def error_kind(status: int, raw: bytes) -> str:
    """'503 quorum_unavailable' from a JSON error body (ringkv's `error`, etcd's `message`), else '503'."""
    try:
        doc = orjson.loads(raw)
    except orjson.JSONDecodeError:
        return str(status)
    if isinstance(doc, dict):
        code = doc.get("error") or doc.get("message")
        if code:
            return f"{status} {str(code)[:60]}"
    return str(status)


# -- HTTP stores ----------------------------------------------------------------------------------------------


def _session(connections: int, timeout_s: float, creds: Credentials | None = None) -> aiohttp.ClientSession:
    creds = creds or Credentials()
    connector = aiohttp.TCPConnector(limit=connections, limit_per_host=0, keepalive_timeout=60,
                                     ssl=creds.aiohttp_ssl())
    return aiohttp.ClientSession(connector=connector, timeout=aiohttp.ClientTimeout(total=timeout_s),
                                 skip_auto_headers=("User-Agent",), headers=creds.headers())


class RingkvStore:
    def __init__(self, urls: tuple[str, ...], connections: int, timeout_s: float) -> None:
        self.urls = tuple(u.rstrip("/") for u in urls)
        self._http = _session(connections, timeout_s, Credentials.from_env())  # RINGKV_TOKEN, RINGKV_CA_CERT
        self._put_urls = itertools.cycle([URL(u + "/api/v1/put", encoded=True) for u in self.urls])
        self._bases = itertools.cycle(self.urls)
        self._cached_value: tuple[str, bytes] | None = None

    async def put(self, key: str, value: str) -> None:
        async with self._http.post(next(self._put_urls), data=ringkv_put_body(key, value),
                                   headers=JSON_HEADERS) as response:
            raw = await response.read()
            if response.status != 200:
                raise StoreError(error_kind(response.status, raw))

    async def get(self, key: str) -> bool:
        url = URL(next(self._bases) + ringkv_get_path(key), encoded=True)
        async with self._http.get(url) as response:
            raw = await response.read()
            if response.status in (200, 300):
                return True
            if response.status == 404 and error_kind(404, raw) == "404 not_found":
                return False
            raise StoreError(error_kind(response.status, raw))

    async def close(self) -> None:
        await self._http.close()


class EtcdStore:
    def __init__(self, urls: tuple[str, ...], connections: int, timeout_s: float, prefix: str = "/v3") -> None:
        self.urls = tuple(u.rstrip("/") for u in urls)
        self.prefix = prefix
        self._http = _session(connections, timeout_s)
        self._set_prefix(prefix)

    def _set_prefix(self, prefix: str) -> None:
        self.prefix = prefix
        self._put_urls = itertools.cycle([URL(u + prefix + "/kv/put", encoded=True) for u in self.urls])
        self._range_urls = itertools.cycle([URL(u + prefix + "/kv/range", encoded=True) for u in self.urls])

    async def detect_prefix(self) -> str:
        """Find the gateway's path prefix (/v3, /v3beta, /v3alpha) by asking for a key."""
        seen = []
        for prefix in ETCD_PREFIXES:
            url = self.urls[0] + prefix + "/kv/range"
            async with self._http.post(url, data=etcd_range_body("ringkv-bench-probe"),
                                       headers=JSON_HEADERS) as response:
                await response.read()
                if response.status == 200:
                    self._set_prefix(prefix)
                    return prefix
                seen.append(f"{prefix}: {response.status}")
        raise StoreError("no etcd v3 JSON gateway at " + self.urls[0] + " (" + ", ".join(seen) + ")")

    async def put(self, key: str, value: str) -> None:
        async with self._http.post(next(self._put_urls), data=etcd_put_body(key, value),
                                   headers=JSON_HEADERS) as response:
            raw = await response.read()
            if response.status != 200:
                raise StoreError(error_kind(response.status, raw))

    async def get(self, key: str) -> bool:
        async with self._http.post(next(self._range_urls), data=etcd_range_body(key),
                                   headers=JSON_HEADERS) as response:
            raw = await response.read()
            if response.status != 200:
                raise StoreError(error_kind(response.status, raw))
            return etcd_found(raw)

    async def close(self) -> None:
        await self._http.close()


# -- Redis ----------------------------------------------------------------------------------------------------


class RedisStore:
    def __init__(self, url: str, connections: int, timeout_s: float) -> None:
        import redis.asyncio

        self.url = url
        self._pool: Any = redis.asyncio.BlockingConnectionPool.from_url(
            url, max_connections=connections, timeout=timeout_s, socket_timeout=timeout_s)
        self._redis: Any = redis.asyncio.Redis(connection_pool=self._pool)

    async def put(self, key: str, value: str) -> None:
        if not await self._redis.set(key, value):
            raise StoreError("set refused")

    async def get(self, key: str) -> bool:
        return await self._redis.get(key) is not None

    async def close(self) -> None:
        await self._redis.aclose()
        await self._pool.disconnect()


async def open_store(target: str, urls: tuple[str, ...], connections: int, timeout_s: float) -> Store:
    if target == "ringkv":
        return RingkvStore(urls, connections, timeout_s)
    if target == "etcd":
        store = EtcdStore(urls, connections, timeout_s)
        try:
            await store.detect_prefix()
        except BaseException:
            await store.close()
            raise
        return store
    if target == "redis":
        return RedisStore(urls[0], connections, timeout_s)
    raise ValueError(f"unknown target {target!r}")
