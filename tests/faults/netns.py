"""Network namespaces for the nemesis bench: one per node, joined by a bridge in the root namespace.

    with netns.network(5) as net:            # rkv<pid>-n0 .. rkv<pid>-n4, bridge rkvbr<pid>, subnet 10.77.X.0/24
        net.addr(0)                           # "10.77.X.1" (eth0 inside rkv<pid>-n0)
        net.exec_argv(0, ["iptables", ...])   # ["ip", "netns", "exec", "rkv<pid>-n0", "iptables", ...]
        net.check_url("http://10.77.X.1:8080/ready")   # raises unless the host is one of ours and routed

Safety (../shared/testing-here.md): traffic goes only to loopback or to these namespaces.

- The bridge `rkvbr<pid>` holds 10.77.X.254/24, X picked so that no existing route or address overlaps
  10.77.X.0/24. Before anything is sent, `ip route get 10.77.X.(i+1)` must name the bridge (and no gateway) for
  every node, and each namespace must route the bridge address via its eth0 and have no default route, so
  nothing inside a namespace can reach beyond the bridge (a route lookup of an outside address there must
  fail; lookups send nothing).
- Everything is torn down in a `finally` (node processes left in a namespace are SIGKILLed by pid first), also
  on KeyboardInterrupt / SIGTERM (blocked while tearing down, delivered after), and teardown is idempotent.
- Names carry the creating pid. Leftovers of a run whose process is dead (SIGKILLed pytest) are removed before a
  new network is built; those of a live process are never touched.

`Unavailable` is raised when this machine cannot do it (not root, no `ip`/`iptables`, `ip netns add` or the
bridge / veth creation fails): the test turns it into a skip.
"""

from __future__ import annotations

import contextlib
import ipaddress
import os
import re
import shutil
import signal
import subprocess
import sys
import threading
import time
import urllib.parse
from collections.abc import Iterator, Sequence
from dataclasses import dataclass, field

NS_RE = re.compile(r"^rkv(\d+)-n(\d+)$")
BRIDGE_RE = re.compile(r"^rkvbr(\d+)$")
VETH_RE = re.compile(r"^rkv(\d+)v(\d+)$")
SUBNET_PREFIX = "10.77"
BRIDGE_HOST = 254
OUTSIDE_PROBE = "203.0.113.1"  # TEST-NET-3: only looked up in each namespace's routes, never sent to
CMD_TIMEOUT_S = 15.0
MAX_NODES = 64

_active_lock = threading.Lock()
_active: set[int] = set()  # pids with a network up in this process (one at a time)


class Unavailable(RuntimeError):
    """This machine cannot build namespaces (not root, tools missing, `ip netns add` refused)."""


class RouteError(AssertionError):
    """An address would not go over the bench's bridge: nothing may be sent to it."""


def run(argv: Sequence[str], check: bool = True, timeout_s: float = CMD_TIMEOUT_S) -> subprocess.CompletedProcess[str]:
    """Run a command (no shell), bounded in time; raises CalledProcessError with its stderr when `check`."""
    done = subprocess.run(list(argv), capture_output=True, text=True, timeout=timeout_s, stdin=subprocess.DEVNULL,
                          check=False)
    if check and done.returncode != 0:
        raise subprocess.CalledProcessError(done.returncode, list(argv), done.stdout, done.stderr)
    return done


def ns_name(pid: int, i: int) -> str:
    return f"rkv{pid}-n{i}"


def bridge_name(pid: int) -> str:
    return f"rkvbr{pid}"


def veth_name(pid: int, i: int) -> str:
    return f"rkv{pid}v{i}"  # <= 13 characters (IFNAMSIZ is 16)


def pid_alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    return True


# -- what exists --------------------------------------------------------------------------------------------


def namespaces() -> list[str]:
    out = run(["ip", "netns", "list"], check=False).stdout
    return [line.split()[0] for line in out.splitlines() if line.strip()]


def links() -> list[str]:
    out = run(["ip", "-o", "link", "show"], check=False).stdout
    names = []
    for line in out.splitlines():
        parts = line.split(":", 2)
        if len(parts) >= 2:
            names.append(parts[1].strip().split("@")[0])
    return names


_ROUTE_TYPES = {"local", "broadcast", "unicast", "multicast", "anycast", "blackhole", "unreachable", "prohibit",
                "throw", "nat"}


def used_networks(except_dev: str = "") -> list[ipaddress.IPv4Network]:
    """Every IPv4 prefix routed (any table, default routes aside) or assigned in the root namespace, but for
    those of device `except_dev`."""
    nets: list[ipaddress.IPv4Network] = []
    for line in run(["ip", "-4", "-o", "route", "show", "table", "all"], check=False).stdout.splitlines():
        tokens = line.split()
        if not tokens or (except_dev and f" dev {except_dev} " in f" {line} "):
            continue
        dest = tokens[1] if tokens[0] in _ROUTE_TYPES and len(tokens) > 1 else tokens[0]
        if dest == "default":
            continue
        with contextlib.suppress(ValueError):
            nets.append(ipaddress.IPv4Network(dest, strict=False))
    for line in run(["ip", "-4", "-o", "addr", "show"], check=False).stdout.splitlines():
        match = re.search(r"\binet (\S+)", line)
        if match and not (except_dev and line.split()[1] == except_dev):
            with contextlib.suppress(ValueError):
                nets.append(ipaddress.IPv4Interface(match.group(1)).network)
    return nets


def free_subnet(pid: int) -> int:
    """An X such that 10.77.X.0/24 overlaps nothing routed or assigned here (starting from a pid-derived X, so
    concurrent runs tend to differ)."""
    used = used_networks()
    start = pid % 250
    for k in range(250):
        x = 1 + (start + k) % 250
        subnet = ipaddress.IPv4Network(f"{SUBNET_PREFIX}.{x}.0/24")
        if not any(subnet.overlaps(n) for n in used):
            return x
    raise Unavailable(f"no free {SUBNET_PREFIX}.X.0/24 subnet: every one overlaps a route or an address here")


# -- teardown -----------------------------------------------------------------------------------------------


@contextlib.contextmanager
def _signals_deferred() -> Iterator[None]:
    """SIGINT/SIGTERM held back (delivered when the block ends) while tearing down, in the main thread."""
    if threading.current_thread() is not threading.main_thread():
        yield
        return
    held = {signal.SIGINT, signal.SIGTERM}
    previous = signal.pthread_sigmask(signal.SIG_BLOCK, held)
    try:
        yield
    finally:
        signal.pthread_sigmask(signal.SIG_SETMASK, previous)


def _kill_inside(ns: str) -> None:
    """SIGKILL, by pid, every process whose network namespace is `ns` (only the bench puts processes there),
    and wait (bounded) until they are gone."""
    pids = [int(p) for p in run(["ip", "netns", "pids", ns], check=False).stdout.split() if p.isdigit()]
    for pid in pids:
        with contextlib.suppress(ProcessLookupError):
            os.kill(pid, signal.SIGKILL)
    deadline = time.monotonic() + 5.0
    for _ in range(200):
        left = [p for p in pids if pid_alive(p) and not _is_zombie(p)]
        if not left or time.monotonic() > deadline:
            return
        time.sleep(0.025)


def _is_zombie(pid: int) -> bool:
    try:
        with open(f"/proc/{pid}/stat") as f:
            return f.read().rsplit(")", 1)[1].split()[0] == "Z"
    except (OSError, IndexError):
        return True


def teardown(pid: int) -> list[str]:
    """Remove every namespace, veth and bridge named for `pid` (whatever exists of them; idempotent). Returns
    what is still there afterwards (empty when all went)."""
    with _signals_deferred():
        for ns in namespaces():
            m = NS_RE.match(ns)
            if m and int(m.group(1)) == pid:
                _kill_inside(ns)
                run(["ip", "netns", "del", ns], check=False)  # also removes the veth pair (its eth0 end)
        for link in links():
            m = VETH_RE.match(link) or BRIDGE_RE.match(link)
            if m and int(m.group(1)) == pid:
                run(["ip", "link", "del", link], check=False)
        return leftovers(pid)


def leftovers(pid: int) -> list[str]:
    left = [ns for ns in namespaces() if (m := NS_RE.match(ns)) and int(m.group(1)) == pid]
    left += [link for link in links()
             if (m := VETH_RE.match(link) or BRIDGE_RE.match(link)) and int(m.group(1)) == pid]
    return left


def clean_stale() -> list[int]:
    """Tear down the leftovers of earlier runs whose creating process is dead. Returns their pids."""
    pids = {int(m.group(1)) for ns in namespaces() if (m := NS_RE.match(ns))}
    pids |= {int(m.group(1)) for link in links() if (m := VETH_RE.match(link) or BRIDGE_RE.match(link))}
    stale = sorted(p for p in pids if p != os.getpid() and not pid_alive(p))
    for pid in stale:
        teardown(pid)
    return stale


# -- the network --------------------------------------------------------------------------------------------


@dataclass
class Network:
    pid: int
    x: int
    size: int
    verified: set[str] = field(default_factory=set)

    @property
    def bridge(self) -> str:
        return bridge_name(self.pid)

    @property
    def bridge_addr(self) -> str:
        return f"{SUBNET_PREFIX}.{self.x}.{BRIDGE_HOST}"

    @property
    def subnet(self) -> ipaddress.IPv4Network:
        return ipaddress.IPv4Network(f"{SUBNET_PREFIX}.{self.x}.0/24")

    def ns(self, i: int) -> str:
        return ns_name(self.pid, i)

    def addr(self, i: int) -> str:
        return f"{SUBNET_PREFIX}.{self.x}.{i + 1}"

    def addrs(self) -> list[str]:
        return [self.addr(i) for i in range(self.size)]

    def exec_argv(self, i: int, argv: Sequence[str]) -> list[str]:
        return ["ip", "netns", "exec", self.ns(i), *argv]

    def assert_routed(self, addr: str) -> None:
        """`ip route get ADDR` in the root namespace must name our bridge, without a gateway."""
        if ipaddress.IPv4Address(addr) not in self.subnet:
            raise RouteError(f"{addr} is not in the bench's subnet {self.subnet}")
        out = run(["ip", "-4", "route", "get", addr]).stdout
        first = out.splitlines()[0] if out else ""
        if not re.search(rf"\bdev {re.escape(self.bridge)}\b", first) or " via " in first:
            raise RouteError(f"{addr} would not leave by bridge {self.bridge}: ip route get says {first!r}")
        self.verified.add(addr)

    def check_url(self, url: str) -> str:
        """`url` itself, once its host is known to be one of ours and routed over the bridge."""
        host = urllib.parse.urlsplit(url).hostname or ""
        if host not in self.verified:
            self.assert_routed(host)
        return url

    def verify(self) -> None:
        """Every node address is routed via the bridge; inside every namespace the bridge and the peers go via
        eth0 and nothing else is reachable (no default route)."""
        for i in range(self.size):
            self.assert_routed(self.addr(i))
            for target in (self.bridge_addr, *self.addrs()):
                if target == self.addr(i):
                    continue
                out = run(["ip", "-n", self.ns(i), "-4", "route", "get", target]).stdout
                if not re.search(r"\bdev eth0\b", out) or " via " in out:
                    raise RouteError(f"in {self.ns(i)}, {target} is not on eth0: {out.strip()!r}")
            routes = run(["ip", "-n", self.ns(i), "-4", "route", "show"]).stdout
            if "default" in routes:
                raise RouteError(f"{self.ns(i)} has a default route: {routes!r}")
            outside = run(["ip", "-n", self.ns(i), "-4", "route", "get", OUTSIDE_PROBE], check=False)
            if outside.returncode == 0:
                raise RouteError(f"{self.ns(i)} could reach beyond the bridge: {outside.stdout.strip()!r}")


def _no_ipv6(link: str) -> None:
    with contextlib.suppress(OSError), open(f"/proc/sys/net/ipv6/conf/{link}/disable_ipv6", "w") as f:
        f.write("1")


def _build(net: Network) -> None:
    pid, bridge = net.pid, net.bridge
    for i in range(net.size):
        try:
            run(["ip", "netns", "add", net.ns(i)])
        except subprocess.CalledProcessError as e:
            raise Unavailable(f"ip netns add {net.ns(i)} failed: {e.stderr.strip()}") from e
    try:
        run(["ip", "link", "add", bridge, "type", "bridge", "stp_state", "0"])
    except subprocess.CalledProcessError as e:
        raise Unavailable(f"cannot create bridge {bridge}: {e.stderr.strip()}") from e
    _no_ipv6(bridge)  # no IPv6 link-local chatter on the bench's links
    run(["ip", "addr", "add", f"{net.bridge_addr}/24", "dev", bridge])
    run(["ip", "link", "set", bridge, "up"])
    for i in range(net.size):
        ns, veth = net.ns(i), veth_name(pid, i)
        try:
            run(["ip", "link", "add", veth, "type", "veth", "peer", "name", "eth0", "netns", ns])
        except subprocess.CalledProcessError as e:
            raise Unavailable(f"cannot create veth pair {veth}: {e.stderr.strip()}") from e
        _no_ipv6(veth)
        run(["ip", "link", "set", veth, "master", bridge, "up"])
        run(["ip", "netns", "exec", ns, "sysctl", "-qw", "net.ipv6.conf.all.disable_ipv6=1"], check=False)
        run(["ip", "-n", ns, "addr", "add", f"{net.addr(i)}/24", "dev", "eth0"])
        run(["ip", "-n", ns, "link", "set", "lo", "up"])
        run(["ip", "-n", ns, "link", "set", "eth0", "up"])
    # another run may have taken the same subnet between our probe and now: then ours is not the only route
    ours = net.subnet
    clashes = [n for n in used_networks(except_dev=bridge) if n.overlaps(ours)]
    routes = [line for line in run(["ip", "-4", "-o", "route", "show", "table", "all"]).stdout.splitlines()
              if line.split() and (line.split()[0] == str(ours))]
    if clashes or len(routes) != 1 or f"dev {bridge}" not in routes[0]:
        raise RouteError(f"subnet {ours} is not ours alone: {clashes} {routes}")


def _require_tools() -> None:
    if os.geteuid() != 0:
        raise Unavailable("the nemesis bench needs root (network namespaces, iptables)")
    for tool in ("ip", "iptables"):
        if shutil.which(tool) is None:
            raise Unavailable(f"the nemesis bench needs `{tool}` (apt-get install -y iproute2 iptables)")


@contextlib.contextmanager
def network(size: int, attempts: int = 3) -> Iterator[Network]:
    """`size` namespaces on a fresh bridge, verified; torn down (and checked gone) on the way out."""
    if not 1 <= size <= MAX_NODES:
        raise ValueError(f"1..{MAX_NODES} namespaces")
    _require_tools()
    pid = os.getpid()
    with _active_lock:
        if pid in _active:
            raise RuntimeError("a bench network is already up in this process")
        _active.add(pid)
    previous_term = None
    if threading.current_thread() is threading.main_thread():
        def on_term(signum: int, frame: object) -> None:
            raise SystemExit(128 + signum)  # unwinds through the finally below
        previous_term = signal.signal(signal.SIGTERM, on_term)
    failed = False
    try:
        clean_stale()
        teardown(pid)  # anything of this very process left over from an earlier network
        net: Network | None = None
        for attempt in range(attempts):
            net = Network(pid, free_subnet(pid), size)
            try:
                _build(net)
                net.verify()
                break
            except RouteError:
                teardown(pid)
                if attempt == attempts - 1:
                    raise
        assert net is not None
        yield net
    except BaseException:
        failed = True
        raise
    finally:
        try:
            left = teardown(pid)
        finally:
            if previous_term is not None:
                signal.signal(signal.SIGTERM, previous_term)
            with _active_lock:
                _active.discard(pid)
        if left:
            message = f"bench network not fully torn down, still there: {left}"
            if not failed:
                raise RuntimeError(message)
            print(message, file=sys.stderr)  # the body's error is the one to see
