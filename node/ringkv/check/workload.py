"""The check's workloads over HTTP, then the settle phase and the final reads.

- *set*: `clients` clients grow a few keys, each a JSON list of unique strings: read (R) → union of the
  siblings → append a new element → put with the read's context (W). A key takes `key_capacity` elements
  (so values stay far below the 10 KB limit), then its slot moves on to a fresh key.
- *register*: `clients` clients write unique keys once, blind, each with a unique value.

Each client sends its requests to one node of `urls` (`affinity`, the default: client i to node i mod n), or
every request to a node picked at random; each is recorded as an `Op` (see `history`).
After `duration_s`: wait until no node has hints pending (up to `settle_s`), then read every key with
`final_r` (default: the replication factor, so every replica answers and read repair runs), retrying a
failed read until the settle deadline.
"""

from __future__ import annotations

import asyncio
import random
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from typing import Any

import aiohttp
import orjson

from ringkv.check.history import History, Kind, Op, Outcome, classify
from ringkv.security.credentials import Credentials


@dataclass(frozen=True)
class CheckPlan:
    urls: tuple[str, ...]
    duration_s: float = 30.0
    workloads: tuple[str, ...] = ("set", "register")
    clients: int = 8  # per workload
    set_keys: int = 4  # set keys growing at once
    key_capacity: int = 150  # elements per set key before its slot moves on to a new key
    w: int | None = None
    r: int | None = None
    final_r: int | None = None  # default: the replication factor
    timeout_s: float = 5.0
    settle_s: float = 60.0
    prefix: str = ""  # default: check-<random>
    seed: int | None = None
    # Each client sends to one node (client i to urls[i % n]), so a node that stops answering holds up only its
    # own clients and the others keep measuring the rest of the cluster; False: every request to a random node.
    affinity: bool = True


@dataclass
class Counters:
    """Live figures for the progress line."""

    ok: int = 0
    fail: int = 0
    info: int = 0
    phase: str = "run"

    def count(self, outcome: Outcome) -> None:
        if outcome is Outcome.OK:
            self.ok += 1
        elif outcome is Outcome.FAIL:
            self.fail += 1
        else:
            self.info += 1


@dataclass
class _SetSlots:
    prefix: str
    capacity: int
    generation: list[int]
    added: list[int]
    keys: list[str] = field(default_factory=list)

    def key(self, slot: int) -> str:
        return f"{self.prefix}-set-{slot}-{self.generation[slot]}"

    def note_add(self, slot: int, key: str) -> None:
        if key != self.key(slot):
            return
        self.added[slot] += 1
        if self.added[slot] >= self.capacity:
            self.keys.append(key)  # retired: read back at the end like the others
            self.generation[slot] += 1
            self.added[slot] = 0


class Runner:
    def __init__(self, plan: CheckPlan, on_event: Callable[[str], None] = lambda line: None) -> None:
        self.plan = plan
        self.rng = random.Random(plan.seed)
        self.prefix = plan.prefix or f"check-{random.Random().getrandbits(40):010x}"
        self.history = History()
        self.counters = Counters()
        self.register_keys: list[str] = []
        self._t0 = time.monotonic()
        self._on_event = on_event
        self._session: aiohttp.ClientSession | None = None

    def now(self) -> float:
        return time.monotonic() - self._t0

    def event(self, what: str) -> None:
        """Note something that happened (a nemesis event), in the history's time base."""
        self.history.events.append((self.now(), what))
        self._on_event(what)

    # -- HTTP -----------------------------------------------------------------------------------------

    async def _call(self, method: str, url: str, params: dict[str, str] | None = None,
                    body: Any = None) -> tuple[int, Any, bool]:
        """(status, parsed body, refused); status 0 when no answer came back."""
        assert self._session is not None
        try:
            async with self._session.request(method, url, params=params,
                                             data=None if body is None else orjson.dumps(body),
                                             headers={"Content-Type": "application/json"}) as response:
                raw = await response.read()
                try:
                    doc = orjson.loads(raw) if raw else None
                except orjson.JSONDecodeError:
                    doc = None
                return response.status, doc, False
        except aiohttp.ClientConnectorError as e:
            return 0, None, isinstance(e.os_error, ConnectionRefusedError)
        except (aiohttp.ClientError, TimeoutError, OSError):
            return 0, None, False

    def _url(self, client: int) -> str:
        if self.plan.affinity and client >= 0:
            return self.plan.urls[client % len(self.plan.urls)]
        return self.rng.choice(self.plan.urls)

    def _quorum(self, name: str, value: int | None) -> dict[str, str]:
        return {} if value is None else {name: str(value)}

    async def read(self, client: int, key: str, url: str | None = None, r: int | None = None,
                   record: bool = True) -> tuple[Outcome, list[Any], str | None]:
        """GET: (outcome, the sibling values, the context)."""
        url = url or self._url(client)
        start = self.now()
        status, doc, refused = await self._call("GET", url + "/api/v1/getValue",
                                                {"key": key, **self._quorum("r", r or self.plan.r)})
        outcome = classify(status, write=False, refused=refused,
                           error=doc.get("error") if isinstance(doc, dict) else None)
        values: list[Any] = []
        context = None
        if outcome is Outcome.OK and isinstance(doc, dict):
            values = [doc["value"]] if status == 200 else list(doc.get("siblings", [])) if status == 300 else []
            context = doc.get("context")
        seen = tuple(sorted({str(e) for v in values for e in (v if isinstance(v, list) else [v])}))
        if record:
            self.history.record(Op(client, Kind.READ, key, None, start, self.now(), outcome, url, status, seen,
                                   len(values)))
            self.counters.count(outcome)
        return outcome, values, context

    async def put(self, client: int, kind: Kind, key: str, element: str, value: Any,
                  context: str | None) -> Outcome:
        url = self._url(client)
        body: dict[str, Any] = {"key": key, "value": value}
        if context is not None:
            body["context"] = context
        start = self.now()
        status, doc, refused = await self._call("POST", url + "/api/v1/put", self._quorum("w", self.plan.w), body)
        outcome = classify(status, write=True, refused=refused,
                           error=doc.get("error") if isinstance(doc, dict) else None)
        self.history.record(Op(client, kind, key, element, start, self.now(), outcome, url, status))
        self.counters.count(outcome)
        return outcome

    # -- workloads ------------------------------------------------------------------------------------

    async def _set_client(self, client: int, slots: _SetSlots, until: float) -> None:
        seq = 0
        while self.now() < until:
            slot = self.rng.randrange(len(slots.generation))
            key = slots.key(slot)
            outcome, values, context = await self.read(client, key)
            if outcome is not Outcome.OK:
                await asyncio.sleep(0.05)  # pacing after a failure, so a dead cluster is not hammered
                continue
            merged = sorted({str(e) for v in values if isinstance(v, list) for e in v})
            seq += 1
            element = f"s{client}-{seq}"
            if await self.put(client, Kind.ADD, key, element, [*merged, element], context) is Outcome.OK:
                slots.note_add(slot, key)

    async def _register_client(self, client: int, until: float) -> None:
        seq = 0
        while self.now() < until:
            seq += 1
            key = f"{self.prefix}-reg-{client}-{seq}"
            self.register_keys.append(key)
            if await self.put(client, Kind.WRITE, key, key, key, None) is not Outcome.OK:
                await asyncio.sleep(0.05)

    async def run(self) -> History:
        """The whole check: workloads for `duration_s`, settle, final reads. Returns the history."""
        plan = self.plan
        timeout = aiohttp.ClientTimeout(total=plan.timeout_s, sock_connect=min(plan.timeout_s, 2.0))
        creds = Credentials.from_env()
        async with aiohttp.ClientSession(timeout=timeout, headers=creds.headers(),
                                         connector=aiohttp.TCPConnector(limit=4 * plan.clients + 16,
                                                                        ssl=creds.aiohttp_ssl())) as s:
            self._session = s
            self._t0 = time.monotonic()
            until = plan.duration_s
            slots = _SetSlots(self.prefix, plan.key_capacity, [0] * plan.set_keys, [0] * plan.set_keys)
            tasks = []
            if "set" in plan.workloads:
                tasks += [self._set_client(i, slots, until) for i in range(plan.clients)]
            if "register" in plan.workloads:
                tasks += [self._register_client(plan.clients + i, until) for i in range(plan.clients)]
            await asyncio.gather(*tasks)
            set_keys = sorted(set(slots.keys) | {slots.key(i) for i in range(plan.set_keys)}) \
                if "set" in plan.workloads else []
            self.counters.phase = "settle"
            deadline = self.now() + plan.settle_s
            await self._await_hints(deadline)
            self.counters.phase = "final reads"
            await self._final_reads(set_keys + self.register_keys, deadline)
            self._session = None
        return self.history

    async def cluster_doc(self, path: str) -> Any:
        for url in self.plan.urls:
            status, doc, _ = await self._call("GET", url + path)
            if status == 200:
                return doc
        return None

    async def _await_hints(self, deadline: float) -> None:
        while self.now() < deadline:
            pending = 0
            for url in self.plan.urls:
                status, doc, _ = await self._call("GET", url + "/admin/v1/hints")
                if status != 200 or not isinstance(doc, dict):
                    pending += 1  # an unreachable node may hold hints
                    continue
                pending += sum(int(v) for v in (doc.get("pending") or {}).values())
            if not pending:
                return
            await asyncio.sleep(0.5)

    async def _final_reads(self, keys: Sequence[str], deadline: float) -> None:
        ring = await self.cluster_doc("/admin/v1/ring")
        final_r = self.plan.final_r or (int(ring["replication_factor"]) if isinstance(ring, dict) else None)
        todo = list(keys)
        queue: asyncio.Queue[str] = asyncio.Queue()
        for key in todo:
            queue.put_nowait(key)

        async def reader() -> None:
            while not queue.empty():
                key = queue.get_nowait()
                while True:
                    outcome, values, _ = await self.read(-1, key, r=final_r, record=False)
                    if outcome is Outcome.OK:
                        self.history.final[key] = frozenset(
                            str(e) for v in values for e in (v if isinstance(v, list) else [v]))
                        break
                    if self.now() >= deadline:
                        self.history.final_unreadable.add(key)
                        break
                    await asyncio.sleep(0.2)

        await asyncio.gather(*(reader() for _ in range(32)))
