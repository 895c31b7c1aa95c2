"""Helpers shared by the topology-change tests (`test_join.py`, `test_decommission.py`, `test_removenode.py`):
batched HTTP (aiohttp), what one node's own storage holds, rings, node logs, nodes added to a running cluster,
and a continuous load that records every acknowledged write.

    load = Load([n1, n2, n3])                  # W=2 writes + R=2 reads of acknowledged keys, in a thread
    preload(load, [n1, n2, n3], 2000)          # optional: keys the load's writers then overwrite
    load.start()
    ...                                        # the topology change
    load.stop()
    acked = load.acknowledged()                # key -> KeyLog: the last acknowledged seq and what may show
    prefs = preferences(n1, sorted(acked))     # /admin/v1/ring?key=
    missing_on(n4, acked, prefs)               # what n4's own storage lacks of what it replicates
    read_all(n1, sorted(acked), r=3)           # (status, values) per key

Every HTTP call has a timeout (`REQUEST_TIMEOUT_S`, connect included) and goes to 127.0.0.1 only; the batch
helpers each run one `asyncio.run` (the tests themselves are synchronous). Waiting is left to
`cluster_helpers.wait_until` (a condition with a deadline); the load's pacing sleep only sets its rate.
"""

from __future__ import annotations

import ast
import asyncio
import datetime
import itertools
import json
import os
import random
import threading
import time
import urllib.error
import urllib.request
from collections import Counter
from collections.abc import Iterable, Iterator, Sequence
from dataclasses import dataclass, field
from typing import Any

import aiohttp

from ringkv import local
from ringkv.local import LocalCluster, LocalNode
from ringkv.security.credentials import Credentials
from tests.integration.cluster_helpers import HTTP_TIMEOUT_S, http_json, pick_base_port

REQUEST_TIMEOUT_S = 5.0  # every aiohttp call of these helpers, connect included
CONCURRENCY = 32  # batch calls in flight at once


# -- HTTP -----------------------------------------------------------------------------------------------------


def post_json(url: str, body: Any = None) -> tuple[int, Any]:
    """POST JSON to `url` (127.0.0.1 only); (status, parsed body). Status 0 if the node cannot be reached."""
    assert url.startswith("http://127.0.0.1:"), url
    request = urllib.request.Request(url, data=json.dumps(body if body is not None else {}).encode(),
                                     headers={"Content-Type": "application/json"}, method="POST")
    try:
        with urllib.request.urlopen(request, timeout=HTTP_TIMEOUT_S) as response:
            return response.status, json.loads(response.read() or b"{}")
    except urllib.error.HTTPError as e:
        raw = e.read()
        try:
            return e.code, json.loads(raw or b"{}")
        except ValueError:
            return e.code, raw.decode(errors="replace")
    except (urllib.error.URLError, OSError):
        return 0, None


def _timeout() -> aiohttp.ClientTimeout:
    return aiohttp.ClientTimeout(total=REQUEST_TIMEOUT_S, sock_connect=REQUEST_TIMEOUT_S)


async def _request(session: aiohttp.ClientSession, method: str, url: str, params: dict[str, str] | None = None,
                   body: Any = None) -> tuple[int, Any]:
    """One HTTP call (127.0.0.1 only): (status, parsed JSON body or None)."""
    assert url.startswith("http://127.0.0.1:"), url
    async with session.request(method, url, params=params, json=body) as response:
        raw = await response.read()
        try:
            doc = json.loads(raw) if raw else None
        except ValueError:
            doc = None
        return response.status, doc


def _batch(calls: Sequence[tuple[str, str, dict[str, str] | None, Any]]) -> list[tuple[int, Any]]:
    """Every (method, url, params, body), CONCURRENCY at a time; (status, body) each, in order. Status -1 when
    the call failed without an answer (timeout, refused)."""
    async def go() -> list[tuple[int, Any]]:
        semaphore = asyncio.Semaphore(CONCURRENCY)
        async with aiohttp.ClientSession(timeout=_timeout(), headers=Credentials.from_env().headers()) as session:
            async def one(method: str, url: str, params: dict[str, str] | None, body: Any) -> tuple[int, Any]:
                async with semaphore:
                    try:
                        return await _request(session, method, url, params, body)
                    except (aiohttp.ClientError, TimeoutError) as e:
                        return -1, repr(e)
            return list(await asyncio.gather(*(one(*c) for c in calls)))
    return asyncio.run(go())


Write = tuple[LocalNode, str, Any] | tuple[LocalNode, str, Any, str | None]


def put_all(writes: Sequence[Write], w: int = 2) -> list[tuple[int, Any]]:
    """Put every (node, key, value) or (node, key, value, context) at W=w (no context, or None: a new key);
    (status, body) each, in order."""
    calls = []
    for write in writes:
        node, key, value = write[0], write[1], write[2]
        context = write[3] if len(write) > 3 else None
        body: dict[str, Any] = {"key": key, "value": value}
        if context is not None:
            body["context"] = context
        calls.append(("POST", node.url + "/api/v1/put", {"w": str(w)}, body))
    return _batch(calls)


def read_all(node: LocalNode, keys: Sequence[str], r: int) -> dict[str, tuple[int, list[Any]]]:
    """Each key read through `node` at R=r: (status, live values: one, the siblings, or none)."""
    answers = _batch([("GET", node.url + "/api/v1/getValue", {"key": k, "r": str(r)}, None) for k in keys])
    out = {}
    for key, (status, body) in zip(keys, answers, strict=True):
        values: list[Any] = []
        if status == 200:
            values = [body["value"]]
        elif status == 300:
            values = list(body["siblings"])
        out[key] = (status, values)
    return out


def preferences(node: LocalNode, keys: Sequence[str]) -> dict[str, list[str]]:
    """Each key's preference list as `node` sees it (`/admin/v1/ring?key=`)."""
    answers = _batch([("GET", node.url + "/admin/v1/ring", {"key": k}, None) for k in keys])
    out = {}
    for key, (status, body) in zip(keys, answers, strict=True):
        assert status == 200, f"{node.node_id} /admin/v1/ring?key={key}: {status} {body}"
        out[key] = list(body["key"]["preference_list"])
    return out


def local_values(node: LocalNode, keys: Sequence[str]) -> dict[str, list[Any]]:
    """The live values `node`'s own storage holds for each key (`/admin/v1/local`: no quorum, no read repair);
    [] for none."""
    answers = _batch([("GET", node.url + "/admin/v1/local", {"key": k}, None) for k in keys])
    out: dict[str, list[Any]] = {}
    for key, (status, body) in zip(keys, answers, strict=True):
        if status == 404:
            out[key] = []
            continue
        assert status == 200, f"{node.node_id} /admin/v1/local?key={key}: {status} {body}"
        out[key] = [v["value"] for v in body["versions"] if not v["deleted"]]
    return out


# -- processes, nodes added to a cluster, logs --------------------------------------------------------------


def alive(node: LocalNode) -> bool:
    return local._alive(node.pid)  # same notion of "running" as LocalCluster's own waits


def exit_code(node: LocalNode) -> int | None:
    """The exit code of `node`'s process once it has exited (reaped here), else None. Our child: started by
    `LocalCluster.start` with Popen, so a zombie until someone waits for it."""
    try:
        pid, status = os.waitpid(node.pid, os.WNOHANG)
    except ChildProcessError:  # reaped already (by someone else): gone, its code unknown
        return -999
    if pid == 0:
        return None
    return os.waitstatus_to_exitcode(status)


def add_nodes(cluster: LocalCluster, node_ids: Sequence[str]) -> list[LocalNode]:
    """New nodes with no tokens (so they join, streaming, or take over a dead node's tokens with
    `--replace-node`), on free ports outside the cluster's, appended to `cluster.nodes` (so the cluster's seeds
    and extra args reach them and leaving the `with` block kills them). Not started."""
    taken = {p for n in cluster.nodes for p in (n.http_port, n.peer_port)}
    for _ in range(50):
        base = pick_base_port(len(node_ids))
        ports = {p for i in range(len(node_ids)) for p in (base + i, base + local.PEER_PORT_OFFSET + i)}
        if not ports & taken:
            break
    else:
        raise AssertionError(f"no free ports for {list(node_ids)} outside the cluster's")
    out = []
    for i, node_id in enumerate(node_ids):
        node = LocalNode(node_id=node_id, http_port=base + i, peer_port=base + local.PEER_PORT_OFFSET + i,
                         data_dir=os.path.join(cluster.data_dir, node_id), tokens=[])
        cluster.nodes.append(node)
        out.append(node)
    return out


def identity_file(node: LocalNode) -> dict[str, Any]:
    """`node`'s data/node.json (its id, tokens, generation, joining flag)."""
    with open(os.path.join(node.data_dir, "node.json")) as f:
        return dict(json.load(f))


def log_lines(node: LocalNode, *needles: str) -> list[str]:
    """The lines of `node`'s log (all its runs) that contain any of `needles` ("" matches every line)."""
    try:
        with open(node.log_path, errors="replace") as f:
            return [line.rstrip() for line in f if any(n in line for n in needles)]
    except FileNotFoundError:
        return []


def timed_log_lines(node: LocalNode, needle: str) -> list[tuple[datetime.datetime, str]]:
    """The lines of `node`'s log (all its runs) that contain `needle`, with their timestamps (lines without
    one, such as the "ready on" line, are left out)."""
    out = []
    for line in log_lines(node, needle):
        try:
            stamp = datetime.datetime.strptime(line[:23], "%Y-%m-%d %H:%M:%S,%f")
        except ValueError:
            continue
        out.append((stamp, line))
    return out


def final_progress(node: LocalNode, op_id: str) -> dict[str, Any] | None:
    """The progress `node` logged when operation `op_id` ended well (`operations.py`: `operation <id> done: `)."""
    marker = f"operation {op_id} done: "
    for line in log_lines(node, marker):
        return dict(ast.literal_eval(line.split(marker, 1)[1]))
    return None


# -- rings ----------------------------------------------------------------------------------------------------


def ring_of(node: LocalNode, **query: str) -> dict[str, Any] | None:
    """`node`'s /admin/v1/ring (with `query`, e.g. tokens="1"), or None if it does not answer 200."""
    suffix = "?" + "&".join(f"{k}={v}" for k, v in query.items()) if query else ""
    status, body = http_json(node.url + "/admin/v1/ring" + suffix)
    return body if status == 200 else None


def rings_settled(nodes: Sequence[LocalNode]) -> bool:
    """Every node in `nodes` places keys on a ring of exactly these nodes, with nothing in flight, every live
    member's view agreeing, and one digest."""
    expected = {n.node_id for n in nodes}
    docs = [ring_of(n) for n in nodes]
    return all(d is not None and {x["node_id"] for x in d["nodes"]} == expected and d["agreed"]
               and not d["joining"] and d["view"] == d["digest"] and set(d["views"]) == expected
               for d in docs) and len({d["digest"] for d in docs if d is not None}) == 1


def ring_holds(cluster: LocalCluster, node_id: str) -> dict[str, Any] | None:
    """Every live node's /admin/v1/ring (by node) if each has `node_id` in its ring, agrees, and has no join in
    flight; else None."""
    rings = {}
    for n in cluster.nodes:
        if not alive(n):
            continue
        body = ring_of(n)
        if body is None or not body["agreed"] or body["joining"] \
                or node_id not in {m["node_id"] for m in body["nodes"]}:
            return None
        rings[n.node_id] = body
    return rings


def ring_summary(nodes: Sequence[LocalNode]) -> dict[str, Any]:
    """What each node's /admin/v1/ring shows, in short (for failure messages); None when it does not answer."""
    out: dict[str, Any] = {}
    for n in nodes:
        d = ring_of(n)
        out[n.node_id] = None if d is None else {
            "nodes": [x["node_id"] for x in d["nodes"]],
            **{k: d.get(k) for k in ("digest", "view", "agreed", "joining", "views", "conflicts")}}
    return out


# -- the load -------------------------------------------------------------------------------------------------


@dataclass
class KeyLog:
    """One key's writes, from its only writer, one at a time (each put carries the last acknowledged context,
    so nothing the test itself did concurrently can leave siblings, except a put whose outcome is unknown but
    was applied): the seq of the last acknowledged value (-1: none yet) and its context, and the seqs of the
    attempts whose outcome is unknown (a 503, an error or no answer: applied or not)."""

    acked: int = -1
    context: str | None = None
    unknown: set[int] = field(default_factory=set)

    def acceptable(self, seq: int) -> bool:
        """A live value this key may show: the last acknowledged one, or any attempt of unknown outcome."""
        return seq == self.acked or seq in self.unknown

    def current(self, seqs: Iterable[int]) -> bool:
        """Whether these values still show the last acknowledged write (or a later attempt that superseded it)."""
        return any(s == self.acked or (s in self.unknown and s > self.acked) for s in seqs)

    @property
    def retired(self) -> bool:
        """An attempt's outcome is unknown: a later write with the old context could make a sibling."""
        return bool(self.unknown)


def value(key: str, seq: int, pad: int = 64) -> dict[str, Any]:
    """The value the load (and the tests' preloads) write: the key, its seq, and `pad` bytes of padding."""
    doc: dict[str, Any] = {"key": key, "seq": seq}
    if pad:
        doc["pad"] = "v" * pad
    return doc


class Load:
    """W=2 writes (new keys, and overwrites with the last acknowledged context) and R=2 reads of acknowledged
    keys, through random nodes of `via` (a list the test may change: e.g. a joiner added once it is normal),
    from asyncio tasks on a thread of its own. Every key is written by one writer, one write at a time, so what
    it should read is known exactly (`keys`: its `KeyLog`); seqs come from one counter, so they only grow.

    - `writers` tasks; each write is a new key with probability 1 - `overwrite_share`, else an overwrite of one
      of the writer's acknowledged keys (its own, and those `preload` gave it).
    - `retire_unknown`: a key whose write had an unknown outcome is not written again (so it cannot get a
      sibling); if False, its writer goes on with the last acknowledged context (siblings become possible:
      check with `KeyLog.current`).
    - reads: after each write, one of the writer's acknowledged keys (`read_after_write`), and/or `readers`
      tasks reading any acknowledged key. A 404 is recorded in `not_found`; a read that shows no value at least
      as new as the last write acknowledged before it was sent, in `stale`.
    - `counts`: "writes ok", "writes <status>", "reads <status>" (-1: no answer); any answer other than 200,
      300, 404, 503 or none is also recorded in `errors`.
    """

    def __init__(self, via: Sequence[LocalNode], writers: int = 4, pace_s: float = 0.01, *,
                 readers: int = 0, read_after_write: bool = True, overwrite_share: float = 0.4,
                 retire_unknown: bool = True, pad: int = 64, prefix: str = "load") -> None:
        self.via = list(via)
        self.writers = writers
        self.readers = readers
        self.pace_s = pace_s
        self.read_after_write = read_after_write
        self.overwrite_share = overwrite_share
        self.retire_unknown = retire_unknown
        self.pad = pad
        self.prefix = prefix
        self.keys: dict[str, KeyLog] = {}
        # by writer: its keys with an acknowledged value (preloaded ones included), and those it may overwrite
        self.owned: list[list[str]] = [[] for _ in range(writers)]
        self.writable: list[list[str]] = [[] for _ in range(writers)]
        self.readable: list[str] = []  # keys with an acknowledged value, in the order they got one
        self.counts: Counter[str] = Counter()
        self.not_found: list[tuple[str, str, float]] = []  # (key, through, monotonic time)
        self.stale: list[tuple[str, str, int, list[Any]]] = []  # (key, through, acked seq, values read)
        self.errors: list[str] = []
        self.error: BaseException | None = None  # what killed the load's thread, if anything did
        self._seq: Iterator[int] = itertools.count(1)
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, name="load", daemon=True)

    def next_seq(self) -> int:
        return next(self._seq)

    def start(self) -> None:
        self._thread.start()

    def running(self) -> bool:
        return self._thread.is_alive() and self.error is None

    def stop(self) -> None:
        self._stop.set()
        self._thread.join(timeout=30)
        assert not self._thread.is_alive(), "the load did not stop"
        assert self.error is None, f"the load failed: {self.error!r}"

    def acknowledged(self) -> dict[str, KeyLog]:
        return {k: s for k, s in self.keys.items() if s.acked >= 0}

    def summary(self) -> str:
        return (f"{dict(self.counts)}; {len(self.acknowledged())} keys acknowledged; not found: "
                f"{len(self.not_found)}; stale: {len(self.stale)}; errors: {len(self.errors)}")

    def _run(self) -> None:
        try:
            asyncio.run(self._main())
        except BaseException as e:  # reported by the test thread (`stop`, `running`)
            self.error = e

    async def _main(self) -> None:
        async with aiohttp.ClientSession(timeout=_timeout(), connector=aiohttp.TCPConnector(limit=0),
                                         headers=Credentials.from_env().headers()) as session:
            await asyncio.gather(*(self._writer(session, i) for i in range(self.writers)),
                                 *(self._reader(session, i) for i in range(self.readers)))

    async def _writer(self, session: aiohttp.ClientSession, index: int) -> None:
        rng = random.Random(index)
        owned, writable = self.owned[index], self.writable[index]
        fresh = 0
        while not self._stop.is_set():
            if writable and rng.random() < self.overwrite_share:
                key = rng.choice(writable)
            else:
                key, fresh = f"{self.prefix}-{index}-{fresh:06d}", fresh + 1
                self.keys[key] = KeyLog()
            await self._write(session, rng.choice(self.via), key, index)
            if self.read_after_write and owned:
                await self._read(session, rng.choice(self.via), rng.choice(owned))
            await asyncio.sleep(self.pace_s)

    async def _reader(self, session: aiohttp.ClientSession, index: int) -> None:
        rng = random.Random(1000 + index)
        while not self._stop.is_set():
            if self.readable:
                await self._read(session, rng.choice(self.via), rng.choice(self.readable))
            await asyncio.sleep(self.pace_s)

    async def _write(self, session: aiohttp.ClientSession, node: LocalNode, key: str, writer: int) -> None:
        log = self.keys[key]
        seq = self.next_seq()
        body: dict[str, Any] = {"key": key, "value": value(key, seq, self.pad)}
        if log.context is not None:
            body["context"] = log.context
        try:
            status, doc = await _request(session, "POST", node.url + "/api/v1/put", {"w": "2"}, body)
        except (aiohttp.ClientError, TimeoutError):
            status, doc = -1, None
        if status == 200:
            first = log.acked < 0
            log.acked, log.context = seq, doc["context"]
            self.counts["writes ok"] += 1
            if first:
                self.owned[writer].append(key)
                self.writable[writer].append(key)
                self.readable.append(key)
            return
        if self.retire_unknown and log.acked >= 0 and not log.retired:
            self.writable[writer].remove(key)  # rare: an unknown outcome
        log.unknown.add(seq)
        self.counts[f"writes {status}"] += 1
        if status not in (503, -1):
            self.errors.append(f"put {key} via {node.node_id}: {status} {doc}")

    async def _read(self, session: aiohttp.ClientSession, node: LocalNode, key: str) -> None:
        log = self.keys[key]
        acked = log.acked  # acknowledged before this read is sent
        try:
            status, doc = await _request(session, "GET", node.url + "/api/v1/getValue", {"key": key, "r": "2"},
                                         None)
        except (aiohttp.ClientError, TimeoutError):
            status, doc = -1, None
        self.counts[f"reads {status}"] += 1
        if status == 404:
            self.not_found.append((key, node.node_id, time.monotonic()))
        elif status in (200, 300):
            values = [doc["value"]] if status == 200 else list(doc["siblings"])
            if not any(v["seq"] >= acked for v in values):
                self.stale.append((key, node.node_id, acked, values))
        elif status not in (503, -1):
            self.errors.append(f"get {key} via {node.node_id}: {status} {doc}")


def preload(load: Load, nodes: Sequence[LocalNode], count: int, prefix: str = "pre") -> list[str]:
    """`count` keys `prefix-i` written (W=2) through `nodes` in turn, owned by the load's writers in turn (so
    they overwrite them); all must be acknowledged. Returns the keys."""
    keys = [f"{prefix}-{i}" for i in range(count)]
    seqs = [load.next_seq() for _ in keys]
    answers = put_all([(nodes[i % len(nodes)], k, value(k, s, load.pad), None)
                       for i, (k, s) in enumerate(zip(keys, seqs, strict=True))])
    for i, (key, seq, (status, body)) in enumerate(zip(keys, seqs, answers, strict=True)):
        assert status == 200, f"preload put {key}: {status} {body}"
        load.keys[key] = KeyLog(acked=seq, context=body["context"])
        load.owned[i % load.writers].append(key)
        load.writable[i % load.writers].append(key)
        load.readable.append(key)
    return keys


def missing_on(node: LocalNode, keys: dict[str, KeyLog], prefs: dict[str, list[str]]) -> list[str]:
    """Keys `node` replicates (by `prefs`) whose last acknowledged write its own storage does not show."""
    mine = [k for k, p in prefs.items() if node.node_id in p]
    held = local_values(node, mine)
    return [f"{k} (seq {keys[k].acked}, holds {[v['seq'] for v in held[k]]})" for k in mine
            if not keys[k].current(v["seq"] for v in held[k])]
