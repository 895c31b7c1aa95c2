"""Real multi-node clusters for integration tests, and the admin-endpoint reads that check them.

    with running_cluster(tmp_path, nodes=3) as cluster:          # started, ready, gossip converged
        n1 = cluster.node("n1")
        pref = preference(n1, "k")                               # /admin/v1/ring?key=k
        cluster.kill(cluster.node(pref[0]))                      # SIGKILL, waits until the process is gone
        wait_until(lambda: sees(n1, pref[0], up=False), 15, "n1 sees the victim down")
        local_values(cluster.node(pref[1]), "k")                 # what that ONE node's storage holds

Processes come from `ringkv.local.LocalCluster` (fixed ports, data under pytest's `tmp_path`, gossip every
0.5 s, durability `batch` unless told otherwise). Ports are taken from 20000-28999, below Linux's ephemeral
range (32768+), so they cannot collide with the OS-assigned ports other tests use: a base picked at random,
probed free for every node's HTTP and peer port, and a start that still loses the race is retried on another
base. Leaving the `with` block SIGKILLs every node (printing every node's log tail first if the body failed).

Waiting is always on a condition with a deadline (`wait_until`), never a bare sleep; every HTTP call here
has a timeout and goes to 127.0.0.1 only.
"""

from __future__ import annotations

import contextlib
import json
import os
import random
import re
import signal
import time
import urllib.error
import urllib.parse
import urllib.request
from collections.abc import Callable, Iterator, Sequence
from pathlib import Path
from typing import Any, TypeVar

from ringkv import local
from ringkv.local import LocalCluster, LocalNode

T = TypeVar("T")

PORT_LOW, PORT_HIGH = 20000, 29000 - local.PEER_PORT_OFFSET  # HTTP ports; peer ports are +1000
FAST_GOSSIP_S = 0.5  # gossip interval of test clusters (the default is 1 s): quicker detection and delivery
HTTP_TIMEOUT_S = 5.0


# -- waiting ----------------------------------------------------------------------------------------------


def wait_until(check: Callable[[], T | None], timeout_s: float, what: str, poll_s: float = 0.05,
               observe: Callable[[], object] | None = None) -> T:
    """Poll `check` until it returns something truthy (returned) or `timeout_s` passes: then AssertionError
    naming `what` and the last result (or, if given, what `observe` shows at that moment)."""
    deadline = time.monotonic() + timeout_s
    last: T | None = None
    for _ in range(int(timeout_s / poll_s) + 2):
        last = check()
        if last:
            return last
        if time.monotonic() > deadline:
            break
        time.sleep(poll_s)
    seen = observe() if observe is not None else last
    raise AssertionError(f"timed out after {timeout_s:.0f}s waiting until {what} (last seen: {seen!r})")


# -- clusters ---------------------------------------------------------------------------------------------


def _ports_free(base: int, nodes: int) -> bool:
    return all(local.port_free(base + i) and local.port_free(base + local.PEER_PORT_OFFSET + i)
               for i in range(nodes))


def pick_base_port(nodes: int, rng: random.Random | None = None) -> int:
    """A base port whose HTTP and peer ports for `nodes` nodes are all free right now."""
    rng = rng or random.Random(os.getpid() ^ time.monotonic_ns())
    for _ in range(200):
        base = rng.randrange(PORT_LOW, PORT_HIGH - nodes, 10)
        if _ports_free(base, nodes):
            return base
    raise RuntimeError("no free port range found")


def kill_all(cluster: LocalCluster) -> None:
    for node in cluster.nodes:
        cluster.signal(node, signal.SIGKILL)
    for node in cluster.nodes:
        cluster.kill(node)


def start_cluster(data_dir: Path, nodes: int, replication: int = 3, durability: str = "batch",
                  extra_args: Sequence[str] = ()) -> LocalCluster:
    """Plan, start, wait until every node is ready and gossip has converged. Kills what it started on failure."""
    for attempt in range(3):
        base = pick_base_port(nodes)
        cluster = LocalCluster(str(data_dir), nodes=local.plan(str(data_dir), nodes, base, replication),
                               replication=replication, durability=durability, extra_args=list(extra_args))
        try:
            for node in cluster.nodes:
                cluster.start(node)
            cluster.wait_ready(timeout_s=60.0)
            cluster.wait_converged(timeout_s=30.0)
            return cluster
        except RuntimeError as e:  # a port taken between the probe and the bind: try another range
            kill_all(cluster)
            if attempt == 2 or ("in use" not in str(e) and "exited" not in str(e)):
                print_logs(cluster)
                raise
        except BaseException:
            kill_all(cluster)
            print_logs(cluster)
            raise
    raise AssertionError("unreachable")


@contextlib.contextmanager
def running_cluster(tmp_path: Path, nodes: int, replication: int = 3, durability: str = "batch",
                    extra_args: Sequence[str] = (), gossip_interval_s: float = FAST_GOSSIP_S,
                    name: str = "cluster") -> Iterator[LocalCluster]:
    """A started cluster, SIGKILLed on exit; when the body fails, every node's log tail is printed (pytest
    shows it with the failure: the logs themselves may be gone by then with pytest's temp-dir rotation)."""
    gossip = ["--gossip-interval-s", str(gossip_interval_s)]
    cluster = start_cluster(tmp_path / name, nodes, replication, durability, [*gossip, *extra_args])
    try:
        yield cluster
    except BaseException:
        print_logs(cluster)
        raise
    finally:
        kill_all(cluster)


def print_logs(cluster: LocalCluster, lines: int = 60) -> None:
    for node in cluster.nodes:
        try:
            with open(node.log_path, errors="replace") as f:
                tail = f.readlines()[-lines:]
        except OSError as e:
            tail = [f"(no log: {e})\n"]
        print(f"----- {node.node_id} ({node.log_path}), last {len(tail)} lines -----")
        print("".join(line[:400].rstrip() + "\n" for line in tail), end="")


def restart(cluster: LocalCluster, node: LocalNode, timeout_s: float = 30.0) -> None:
    """Start a stopped node again and wait until it is ready and gossip among the living has converged."""
    cluster.start(node)
    cluster.wait_ready([node], timeout_s=timeout_s)
    cluster.wait_converged(timeout_s=timeout_s)


# -- admin endpoints (plain urllib) -----------------------------------------------------------------------


def http_json(url: str) -> tuple[int, Any]:
    """GET `url` (127.0.0.1 only); (status, parsed JSON body). Status 0 if the node cannot be reached."""
    assert url.startswith("http://127.0.0.1:"), url
    try:
        with urllib.request.urlopen(url, timeout=HTTP_TIMEOUT_S) as response:
            return response.status, json.loads(response.read())
    except urllib.error.HTTPError as e:
        return e.code, json.loads(e.read() or b"{}")
    except (urllib.error.URLError, OSError):
        return 0, None


def admin(node: LocalNode, path: str, **query: str) -> Any:
    status, body = http_json(node.url + path + ("?" + urllib.parse.urlencode(query) if query else ""))
    assert status == 200, f"{node.node_id} {path}: {status} {body}"
    return body


def preference(node: LocalNode, key: str) -> list[str]:
    """The key's preference list as `node` sees it."""
    return list(admin(node, "/admin/v1/ring", key=key)["key"]["preference_list"])


def local_record(node: LocalNode, key: str) -> dict[str, Any] | None:
    """What `node`'s own storage holds for `key` (versions with their dots), or None if nothing."""
    status, body = http_json(node.url + "/admin/v1/local?" + urllib.parse.urlencode({"key": key}))
    if status == 404:
        return None
    assert status == 200, f"{node.node_id} /admin/v1/local?key={key}: {status} {body}"
    return dict(body)


def local_values(node: LocalNode, key: str) -> list[Any]:
    """The live values `node` holds for `key`, sorted by their JSON text (tombstones left out)."""
    record = local_record(node, key)
    if record is None:
        return []
    return sorted((v["value"] for v in record["versions"] if not v["deleted"]), key=json.dumps)


def members(node: LocalNode) -> dict[str, bool]:
    """node id -> up, as `node`'s gossip sees it."""
    return {m["node_id"]: bool(m["up"]) for m in admin(node, "/admin/v1/members")["members"]}


def sees(observer: LocalNode, node_id: str, up: bool) -> bool:
    status, body = http_json(observer.url + "/admin/v1/members")
    if status != 200:
        return False
    return any(m["node_id"] == node_id and bool(m["up"]) == up for m in body["members"])


def hints(node: LocalNode) -> dict[str, Any]:
    return dict(admin(node, "/admin/v1/hints"))


def metric(node: LocalNode, name: str) -> float:
    """The value of sample `name` (with its labels as exposed, e.g. `x_total{to="down"}`) in `node`'s
    /metrics; 0 if absent."""
    with urllib.request.urlopen(node.url + "/metrics", timeout=HTTP_TIMEOUT_S) as response:
        text = response.read().decode()
    match = re.search(rf"^{re.escape(name)} (\S+)$", text, re.MULTILINE)
    return float(match.group(1)) if match else 0.0


def keys_placed(node: LocalNode, prefix: str, want: Callable[[list[str]], bool], count: int = 1,
                tries: int = 2000) -> list[str]:
    """`count` keys `prefix-i` whose preference list (as `node` sees it) satisfies `want`."""
    found: list[str] = []
    for i in range(tries):
        key = f"{prefix}-{i}"
        if want(preference(node, key)):
            found.append(key)
            if len(found) == count:
                return found
    raise AssertionError(f"only {len(found)} of {count} keys {prefix}-* fit in {tries} tries")
