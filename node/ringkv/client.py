"""A small async client for the node's HTTP API (what the CLI, tests and benchmarks use).

    async with Client("http://127.0.0.1:8080") as c:
        w = await c.put("user:1", {"name": "Ada"})
        r = await c.get("user:1")            # r.value, r.siblings, r.context
        await c.put("user:1", {...}, context=r.context)
"""

from __future__ import annotations

from dataclasses import dataclass, field
from types import TracebackType
from typing import Any

import aiohttp
import orjson

from ringkv.errors import RingkvError
from ringkv.security.credentials import Credentials

JSONValue = str | list[Any] | dict[str, Any]


class ClientError(RingkvError):
    """The node answered with an error (or could not be reached: status 0)."""

    def __init__(self, status: int, code: str, message: str, body: dict[str, Any] | None = None) -> None:
        super().__init__(f"{status} {code}: {message}")
        self.status = status
        self.code = code
        self.body = body or {}


@dataclass(frozen=True)
class ReadResult:
    key: str
    found: bool
    values: list[JSONValue] = field(default_factory=list)  # one value, or the siblings
    context: str | None = None

    @property
    def value(self) -> JSONValue | None:
        """The value when there is exactly one; None when absent. Raises if there are siblings."""
        if len(self.values) > 1:
            raise ValueError(f"key {self.key!r} has {len(self.values)} siblings; see .values")
        return self.values[0] if self.values else None

    @property
    def has_siblings(self) -> bool:
        return len(self.values) > 1


class Client:
    def __init__(self, base_url: str, timeout_s: float = 10.0, connections: int = 100,
                 creds: Credentials | None = None) -> None:
        """`creds`: the token and CA to use (default: from RINGKV_TOKEN / RINGKV_TOKEN_FILE / RINGKV_CA_CERT)."""
        self.base_url = base_url.rstrip("/")
        self._creds = creds if creds is not None else Credentials.from_env()
        self._timeout = aiohttp.ClientTimeout(total=timeout_s)
        self._connections = connections
        self._session: aiohttp.ClientSession | None = None

    async def __aenter__(self) -> Client:
        return self

    async def __aexit__(self, exc_type: type[BaseException] | None, exc: BaseException | None,
                        tb: TracebackType | None) -> None:
        await self.close()

    def _http(self) -> aiohttp.ClientSession:
        if self._session is None:
            self._session = aiohttp.ClientSession(
                timeout=self._timeout, json_serialize=lambda o: orjson.dumps(o).decode(),
                connector=aiohttp.TCPConnector(limit=self._connections, ssl=self._creds.aiohttp_ssl()),
                headers=self._creds.headers(),
            )
        return self._session

    async def close(self) -> None:
        if self._session is not None:
            await self._session.close()
            self._session = None

    async def _call(self, method: str, path: str, **kwargs: Any) -> tuple[int, dict[str, Any]]:
        try:
            async with self._http().request(method, self.base_url + path, **kwargs) as response:
                raw = await response.read()
                status = response.status
        except (aiohttp.ClientError, TimeoutError) as e:
            # str, not repr: an aiohttp error's repr carries the request headers (the bearer token)
            raise ClientError(0, "unreachable", f"{method} {path}: {type(e).__name__}: {e}") from e
        try:
            body = orjson.loads(raw) if raw else {}
        except orjson.JSONDecodeError:
            body = {"error": "bad_response", "message": raw[:200].decode(errors="replace")}
        return status, body

    @staticmethod
    def _raise(status: int, body: dict[str, Any]) -> None:
        raise ClientError(status, str(body.get("error", "error")), str(body.get("message", "")), body)

    async def put(self, key: str, value: JSONValue, context: str | None = None,
                  **params: int) -> str:
        """Write; returns the new context."""
        doc: dict[str, Any] = {"key": key, "value": value}
        if context is not None:
            doc["context"] = context
        status, body = await self._call("POST", "/api/v1/put", json=doc, params=params or None)
        if status != 200:
            self._raise(status, body)
        return str(body["context"])

    async def get(self, key: str, **params: int) -> ReadResult:
        status, body = await self._call("GET", "/api/v1/getValue", params={"key": key, **params})
        if status == 200:
            return ReadResult(key, True, [body["value"]], body["context"])
        if status == 300:
            return ReadResult(key, True, list(body["siblings"]), body["context"])
        if status == 404 and body.get("error") == "not_found":
            return ReadResult(key, False, [], body.get("context"))
        self._raise(status, body)
        raise AssertionError("unreachable")

    async def delete(self, key: str, context: str | None = None, **params: int) -> str:
        """Delete (a tombstone that supersedes what `context` saw); `w=` like `put`. Returns the new context."""
        doc: dict[str, Any] = {"key": key}
        if context is not None:
            doc["context"] = context
        status, body = await self._call("POST", "/api/v1/delete", json=doc, params=params or None)
        if status != 200:
            self._raise(status, body)
        return str(body["context"])
