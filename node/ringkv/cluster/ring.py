"""The token ring: where keys live (placement) and where a joining node's tokens go (allocation).

Model
-----
Tokens are signed 64-bit integers; the token space [-2**63, 2**63 - 1] wraps around. A key's token is
Murmur3 (`token_for`), as in Cassandra. Every node holds several tokens ("virtual nodes"); the ring is the
sorted list of all tokens. Token `t_i` owns the range `(t_{i-1}, t_i]` (the first range wraps from the
largest token past the top of the space), so a key belongs to the first token at or clockwise after its own.
A ring with a single token owns everything: `(t, t]` denotes the whole space.

Placement (`Ring.preference_list`): walk clockwise from the key's token over the owners of the tokens met,
skipping nodes already seen, and choose replicas by diversity, coarse to fine:

* `replication` an int N: N distinct nodes, first one per datacenter, then one per (datacenter, rack), then
  any, each pass taking candidates in clockwise order. With one dc and one rack this is Dynamo's "first N
  distinct physical nodes clockwise".
* `replication` a mapping {dc: RF}: as Cassandra's NetworkTopologyStrategy, RF[dc] nodes of each dc, first
  one per rack, then repeating racks (when the dc has fewer racks than RF). A dc with fewer nodes than its RF
  gets all of its nodes; a dc absent from the ring is ignored.

The result is listed in clockwise order, so with an int replication the first node is the key's owner.
A walk stops as soon as the choice is settled (no domain that could still change it is unseen), and
results are cached per start token and replication setting, so a lookup costs a bisect and a dict probe.
`extended_preference_list` / `walk` continue clockwise past the replicas, for sloppy-quorum fallbacks.

Allocation (`allocate_tokens`): a node gets `round(capacity * tokens_per_unit)` tokens (16 per unit, like
Cassandra's default). They are placed greedily, one at a time, replication-aware (the idea of Cassandra's
`ReplicationAwareTokenAllocator`): for every existing range, consider splitting it with the new token, work
out how every node's *replicated* ownership (all RF ranges it holds) and primary ownership would change, and
keep the split minimising

    sum over nodes of (replicated_share**2 + primary_share**2) / capacity

which, the shares' totals being fixed (RF and 1), is smallest when each node's share is proportional to its
capacity. The split point inside the range is not the midpoint but the optimum of that quadratic, kept
within the middle half of the range so that ranges stay of comparable size. While its tokens are being
placed, the joining node counts with capacity `capacity * placed / count`, so its early tokens do not grab
more than their part. Only ranges whose placement walk crosses the split point are re-evaluated, so a new
token costs O(tokens * walk length) walks. With per-datacenter replication only the joining node's
datacenter is modelled (the others' replicas do not depend on its tokens). The first node (of the ring or
of its datacenter) gets evenly spaced tokens. Everything is deterministic: the same ring and node always
give the same tokens; the joining order matters, as in Cassandra. Each split point is moved by a tiny
offset derived from the node id (within 1/1024 of the range), so two different nodes allocating against the
same ring never pick the same tokens.

Joining only inserts tokens, so keys move only to the new node (about 1/(n+1) of them); leaving only
removes tokens, so only the leaver's keys move.

Pure: no I/O, no clock, no randomness.
"""

from __future__ import annotations

import bisect
import math
from collections.abc import Hashable, Iterable, Iterator, Mapping, Sequence
from dataclasses import dataclass
from itertools import chain, pairwise
from types import MappingProxyType
from typing import Final, TypeAlias

import mmh3

from ringkv.cluster.ids import NodeId, Token

TOKEN_MIN: Final = -(2**63)
TOKEN_MAX: Final = 2**63 - 1
RING_SIZE: Final = 2**64
DEFAULT_TOKENS_PER_UNIT: Final = 16

Replication: TypeAlias = Mapping[str, int] | int

_UNSETTLED: Final = 1 << 62  # "walk needed": the walk went all the way round without settling
_SPLIT_LOW: Final = 0.25  # a new token takes between a quarter and three quarters of the range it splits
_SPLIT_HIGH: Final = 0.75
_PRIMARY_WEIGHT: Final = 1.0  # weight of primary balance against replicated balance in the allocation cost


def token_for(key: bytes) -> Token:
    """The ring position of a key: the first half of its 128-bit Murmur3 hash, signed (as Cassandra)."""
    return Token(mmh3.hash64(key, signed=True)[0])


@dataclass(frozen=True)
class NodeInfo:
    node_id: NodeId
    datacenter: str = "dc1"
    rack: str = "rack1"
    capacity: float = 1.0  # relative weight: a node of capacity 2 gets twice the tokens and data

    def __post_init__(self) -> None:
        if not self.node_id:
            raise ValueError("node_id must not be empty")
        if not (self.capacity > 0 and math.isfinite(self.capacity)):
            raise ValueError(f"capacity must be a positive number, not {self.capacity!r}")


def token_count(node: NodeInfo, tokens_per_unit: int = DEFAULT_TOKENS_PER_UNIT) -> int:
    """How many tokens a node gets: proportional to its capacity, at least one."""
    return max(1, round(node.capacity * tokens_per_unit))


# --- placement ---------------------------------------------------------------------------------------------


@dataclass(frozen=True)
class _Group:
    """Nodes among which `wanted` replicas are chosen, spread over failure domains (coarse levels first)."""

    wanted: int  # at most the group's size
    universe: tuple[int, ...]  # number of distinct failure domains per level among the group's nodes

    def settled(self, seen: Sequence[NodeId], domains: Sequence[set[Hashable]]) -> bool:
        """Whether nodes further clockwise can no longer change `choose(seen)`."""
        for level_domains, total in zip(domains, self.universe, strict=True):
            if len(level_domains) >= self.wanted:
                return True  # enough distinct domains at this level: its pass fills up with nodes seen
            if len(level_domains) < total:
                return False  # an unseen domain would be preferred to a repeat of a seen one
        return len(seen) >= self.wanted

    def choose(
        self, seen: Sequence[NodeId], domains_of: Mapping[NodeId, tuple[Hashable, ...]]
    ) -> set[NodeId]:
        """One pass per level, each taking nodes clockwise from domains not yet used; then any node."""
        if len(seen) <= self.wanted:
            return set(seen)
        chosen: list[NodeId] = []
        for level in range(len(self.universe)):
            used = {domains_of[x][level] for x in chosen}
            for x in seen:
                domain = domains_of[x][level]
                if domain not in used and x not in chosen:
                    used.add(domain)
                    chosen.append(x)
                    if len(chosen) == self.wanted:
                        return set(chosen)
        for x in seen:
            if x not in chosen:
                chosen.append(x)
                if len(chosen) == self.wanted:
                    break
        return set(chosen)


class _Placement:
    """Replica choice for one replication setting over one population of nodes."""

    def __init__(self, nodes: Mapping[NodeId, NodeInfo], replication: Replication) -> None:
        wanted: list[tuple[int, list[NodeInfo]]] = []
        self._domains: dict[NodeId, tuple[Hashable, ...]] = {}
        if isinstance(replication, int):
            if replication < 0:
                raise ValueError(f"replication factor must not be negative: {replication}")
            wanted.append((replication, list(nodes.values())))
            for n in nodes.values():  # prefer distinct datacenters, then distinct racks
                self._domains[n.node_id] = (n.datacenter, (n.datacenter, n.rack))
        else:
            for dc, rf in sorted(replication.items()):
                if rf < 0:
                    raise ValueError(f"replication factor for {dc!r} must not be negative: {rf}")
                wanted.append((rf, [n for n in nodes.values() if n.datacenter == dc]))
            for n in nodes.values():  # within a datacenter, prefer distinct racks
                self._domains[n.node_id] = (n.rack,)
        self._group_of: dict[NodeId, int] = {}
        groups: list[_Group] = []
        for rf, members in wanted:
            if rf == 0 or not members:
                continue
            levels = range(len(self._domains[members[0].node_id]))
            universe = [len({self._domains[m.node_id][lv] for m in members}) for lv in levels]
            kept = [lv for lv in levels if universe[lv] > 1]  # a level where all nodes agree changes nothing
            for m in members:
                self._group_of[m.node_id] = len(groups)
                self._domains[m.node_id] = tuple(self._domains[m.node_id][lv] for lv in kept)
            groups.append(_Group(wanted=min(rf, len(members)), universe=tuple(universe[lv] for lv in kept)))
        self._groups = tuple(groups)

    def _select_plain(self, owners: Iterable[NodeId], wanted: int) -> tuple[tuple[NodeId, ...], int]:
        """One group, one failure domain: the first `wanted` distinct nodes (the common case, kept fast)."""
        seen: list[NodeId] = []
        for inspected, owner in enumerate(owners, 1):
            if owner not in seen and owner in self._group_of:
                seen.append(owner)
                if len(seen) == wanted:
                    return tuple(seen), inspected
        return tuple(seen), _UNSETTLED

    def _select_one_level(self, owners: Iterable[NodeId], group: _Group) -> tuple[tuple[NodeId, ...], int]:
        """One group, one level of failure domains (racks, usually): the general case below, unrolled."""
        members, domains_of, wanted, total = self._group_of, self._domains, group.wanted, group.universe[0]
        seen: list[NodeId] = []
        used: set[Hashable] = set()
        needed = _UNSETTLED
        for inspected, owner in enumerate(owners, 1):
            if owner in seen or owner not in members:
                continue
            seen.append(owner)
            used.add(domains_of[owner][0])
            if len(used) >= wanted or (len(used) == total and len(seen) >= wanted):
                needed = inspected
                break
        if len(seen) <= wanted:
            return tuple(seen), needed
        chosen: set[NodeId] = set()
        used = set()
        for x in seen:
            if domains_of[x][0] not in used and len(chosen) < wanted:
                used.add(domains_of[x][0])
                chosen.add(x)
        for x in seen:
            if len(chosen) >= wanted:
                break
            chosen.add(x)
        return tuple(x for x in seen if x in chosen), needed

    def select(self, owners: Iterable[NodeId]) -> tuple[tuple[NodeId, ...], int]:
        """(replicas in clockwise order, tokens inspected to settle the choice or `_UNSETTLED`)."""
        if len(self._groups) == 1:
            group = self._groups[0]
            if not group.universe:
                return self._select_plain(owners, group.wanted)
            if len(group.universe) == 1:
                return self._select_one_level(owners, group)
        groups, group_of, domains_of = self._groups, self._group_of, self._domains
        unsettled = len(groups)
        if not unsettled:
            return (), 0
        seen: list[list[NodeId]] = [[] for _ in groups]
        domains: list[list[set[Hashable]]] = [[set() for _ in g.universe] for g in groups]
        settled = [False] * unsettled
        order: list[NodeId] = []
        needed = _UNSETTLED
        for inspected, owner in enumerate(owners, 1):
            gi = group_of.get(owner)
            if gi is None or settled[gi] or owner in seen[gi]:
                continue
            order.append(owner)
            seen[gi].append(owner)
            for level_domains, domain in zip(domains[gi], domains_of[owner], strict=True):
                level_domains.add(domain)
            if groups[gi].settled(seen[gi], domains[gi]):
                settled[gi] = True
                unsettled -= 1
                if not unsettled:
                    needed = inspected
                    break
        chosen: set[NodeId] = set()
        for group, group_seen in zip(groups, seen, strict=True):
            chosen |= group.choose(group_seen, domains_of)
        return tuple(x for x in order if x in chosen), needed


def _replication_key(replication: Replication) -> Hashable:
    if isinstance(replication, int):
        return replication
    return tuple(sorted(replication.items()))


def _width(tokens: Sequence[int], i: int) -> int:
    """Size of range i, `(tokens[i-1], tokens[i]]`, in tokens."""
    return (tokens[i] - tokens[i - 1]) % RING_SIZE or RING_SIZE


# --- the ring ----------------------------------------------------------------------------------------------


class Ring:
    """An immutable token ring: nodes, their tokens, and the placement derived from them."""

    __slots__ = ("_by_node", "_lists", "_nodes", "_owners", "_placements", "_tables", "_tokens")

    def __init__(self, assignments: Mapping[NodeInfo, Iterable[int]] | None = None) -> None:
        nodes: dict[NodeId, NodeInfo] = {}
        by_node: dict[NodeId, tuple[Token, ...]] = {}
        pairs: list[tuple[int, NodeId]] = []
        for info, tokens in (assignments or {}).items():
            if info.node_id in nodes:
                raise ValueError(f"node {info.node_id!r} is listed twice")
            mine = tuple(Token(t) for t in sorted({int(t) for t in tokens}))
            if not mine:
                raise ValueError(f"node {info.node_id!r} has no tokens")
            if mine[0] < TOKEN_MIN or mine[-1] > TOKEN_MAX:
                raise ValueError(f"node {info.node_id!r} has a token outside the signed 64-bit range")
            nodes[info.node_id] = info
            by_node[info.node_id] = mine
            pairs.extend((t, info.node_id) for t in mine)
        pairs.sort()
        for (t1, n1), (t2, n2) in pairwise(pairs):
            if t1 == t2:
                raise ValueError(f"token {t1} is claimed by both {n1!r} and {n2!r}")
        self._nodes: Mapping[NodeId, NodeInfo] = MappingProxyType(dict(sorted(nodes.items())))
        self._by_node = by_node
        self._tokens: tuple[Token, ...] = tuple(Token(t) for t, _ in pairs)
        self._owners: tuple[NodeId, ...] = tuple(n for _, n in pairs)
        self._placements: dict[Hashable, _Placement] = {}
        self._lists: dict[tuple[int, Hashable], tuple[NodeId, ...]] = {}
        self._tables: dict[Hashable, tuple[tuple[NodeId, ...], ...]] = {}

    # -- value semantics --

    def assignments(self) -> dict[NodeInfo, tuple[Token, ...]]:
        return {info: self._by_node[nid] for nid, info in self._nodes.items()}

    def __eq__(self, other: object) -> bool:
        if not isinstance(other, Ring):
            return NotImplemented
        return self._nodes == other._nodes and self._tokens == other._tokens and self._owners == other._owners

    def __hash__(self) -> int:
        return hash((tuple(self._nodes.values()), self._tokens, self._owners))

    def __repr__(self) -> str:
        return f"Ring({len(self._nodes)} nodes, {len(self._tokens)} tokens)"

    def __len__(self) -> int:
        return len(self._nodes)

    def __contains__(self, node_id: object) -> bool:
        return node_id in self._nodes

    # -- contents --

    @property
    def nodes(self) -> Mapping[NodeId, NodeInfo]:
        return self._nodes

    @property
    def tokens(self) -> tuple[Token, ...]:
        """All tokens, ascending."""
        return self._tokens

    @property
    def owners(self) -> tuple[NodeId, ...]:
        """The owner of each token in `tokens`."""
        return self._owners

    def tokens_of(self, node_id: NodeId) -> tuple[Token, ...]:
        return self._by_node[node_id]

    def with_node(self, info: NodeInfo, tokens: Iterable[int]) -> Ring:
        """This ring plus `info` holding `tokens` (replacing the node's description and tokens if present)."""
        assignments: dict[NodeInfo, Iterable[int]] = {
            i: t for i, t in self.assignments().items() if i.node_id != info.node_id
        }
        assignments[info] = tokens
        return Ring(assignments)

    def without_node(self, node_id: NodeId) -> Ring:
        if node_id not in self._nodes:
            raise KeyError(node_id)
        return Ring({i: t for i, t in self.assignments().items() if i.node_id != node_id})

    # -- placement --

    def _index(self, token: int) -> int:
        if not self._tokens:
            raise LookupError("the ring is empty")
        i = bisect.bisect_left(self._tokens, token)
        return i if i < len(self._tokens) else 0

    def _placement(self, key: Hashable, replication: Replication) -> _Placement:
        placement = self._placements.get(key)
        if placement is None:
            placement = self._placements[key] = _Placement(self._nodes, replication)
        return placement

    def owner(self, token: int) -> NodeId:
        """The node owning `token`: the owner of the first ring token at or clockwise after it."""
        return self._owners[self._index(token)]

    def preference_list(self, key_token: int, replication: Replication = 3) -> tuple[NodeId, ...]:
        """The replicas of `key_token`, clockwise from its owner (see the module docstring)."""
        index = self._index(key_token)
        key = _replication_key(replication)
        cached = self._lists.get((index, key))
        if cached is None:
            placement = self._placement(key, replication)
            clockwise = self._owners[index:] + self._owners[:index]
            cached = self._lists[(index, key)] = placement.select(clockwise)[0]
        return cached

    def walk(self, key_token: int) -> Iterator[NodeId]:
        """Every node once, clockwise from the owner of `key_token` (for finding fallback nodes)."""
        if not self._tokens:
            return
        seen: set[NodeId] = set()
        index = self._index(key_token)
        for owner in chain(self._owners[index:], self._owners[:index]):
            if owner not in seen:
                seen.add(owner)
                yield owner
                if len(seen) == len(self._nodes):
                    return

    def extended_preference_list(
        self, key_token: int, n_extra: int, replication: Replication = 3
    ) -> tuple[NodeId, ...]:
        """The preference list followed by up to `n_extra` further nodes clockwise: the fallbacks a
        coordinator uses, in order, for replicas that are down (sloppy quorum, hinted handoff)."""
        replicas = self.preference_list(key_token, replication)
        extra: list[NodeId] = []
        if n_extra > 0:
            for node_id in self.walk(key_token):
                if node_id not in replicas:
                    extra.append(node_id)
                    if len(extra) == n_extra:
                        break
        return replicas + tuple(extra)

    def _table(self, replication: Replication) -> tuple[tuple[NodeId, ...], ...]:
        """The replicas of every range, indexed like `tokens`."""
        key = _replication_key(replication)
        table = self._tables.get(key)
        if table is None:
            table = self._tables[key] = tuple(
                self.preference_list(t, replication) for t in self._tokens
            )
        return table

    def ranges_for(self, node_id: NodeId, replication: Replication = 3) -> list[tuple[Token, Token]]:
        """The ranges `(start, end]` that `node_id` replicates, adjacent ones merged, ordered clockwise from
        the bottom of the token space. A range with `start >= end` wraps past the top; `(t, t]` is all."""
        if node_id not in self._nodes:
            raise KeyError(node_id)
        table = self._table(replication)
        held = [node_id in replicas for replicas in table]
        n = len(held)
        if all(held):
            return [(self._tokens[-1], self._tokens[-1])]
        first_gap = held.index(False)  # start just after a range not held, so no run is cut by the wrap
        result: list[tuple[Token, Token]] = []
        run_start: int | None = None
        for k in range(1, n + 1):
            i = (first_gap + k) % n
            if held[i] and run_start is None:
                run_start = i
            if run_start is not None and not held[(i + 1) % n]:
                result.append((self._tokens[run_start - 1], self._tokens[i]))
                run_start = None
        result.sort(key=lambda r: (r[0] < r[1], r[1]))  # a wrapping range covers the bottom: list it first
        return result

    def ownership(self, replication: Replication = 3) -> dict[NodeId, float]:
        """The fraction of the token space each node replicates (all its replica ranges, not only those it
        owns); the values sum to the replication factor, or to the number of nodes if that is smaller."""
        share = dict.fromkeys(self._nodes, 0.0)
        tokens = self._tokens
        for i, replicas in enumerate(self._table(replication)):
            width = _width(tokens, i) / RING_SIZE
            for node_id in replicas:
                share[node_id] += width
        return share


def join(
    ring: Ring,
    node: NodeInfo,
    *,
    replication: Replication = 3,
    tokens_per_unit: int = DEFAULT_TOKENS_PER_UNIT,
) -> Ring:
    """`ring` with `node` holding `token_count(node)` tokens, new ones from `allocate_tokens`. A node already
    in the ring (say, with a raised capacity) keeps its tokens and gets only the missing ones."""
    have = ring.tokens_of(node.node_id) if node.node_id in ring else ()
    count = token_count(node, tokens_per_unit) - len(have)
    return ring.with_node(node, have + allocate_tokens(ring, node, count, replication=replication))


# --- allocation --------------------------------------------------------------------------------------------


def allocate_tokens(
    ring: Ring, node: NodeInfo, count: int, *, replication: Replication = 3
) -> tuple[Token, ...]:
    """`count` new tokens for `node`, chosen to balance ownership under `replication` (see the module
    docstring). Returned ascending. A node already in the ring keeps its tokens; these come in addition."""
    if count <= 0:
        return ()
    allocation = _Allocation(ring, node, replication)
    if not allocation.tokens:  # the first node (of the ring, or of its datacenter): spread evenly
        step = RING_SIZE // count
        rotation = _jitter(node.node_id, 0, step) + step // 2  # two datacenters' first nodes never coincide
        return tuple(sorted(allocation.claim((TOKEN_MIN + rotation + k * step - TOKEN_MIN) % RING_SIZE + TOKEN_MIN)
                            for k in range(count)))
    existing = allocation.owners.count(node.node_id)
    placed: list[Token] = []
    for k in range(1, count + 1):
        token = allocation.best_token(node.capacity * (existing + k) / (existing + count))
        allocation.insert(token)
        placed.append(token)
    return tuple(sorted(placed))


class _Allocation:
    """Working state of a greedy allocation: the ring as lists, each range's replicas, every node's shares.

    With per-datacenter replication only the joining node's datacenter is modelled: the other datacenters'
    replicas do not depend on its tokens, and its own replicas depend only on the tokens of its datacenter,
    so the "ring" here is that datacenter's tokens alone (and "primary" means the first replica in it)."""

    def __init__(self, ring: Ring, node: NodeInfo, replication: Replication) -> None:
        nodes = dict(ring.nodes)
        nodes[node.node_id] = node
        self.new = node.node_id
        self.capacity = {nid: info.capacity for nid, info in nodes.items()}
        self.taken: set[int] = set(ring.tokens)
        pairs: Iterable[tuple[int, NodeId]] = zip(ring.tokens, ring.owners, strict=True)
        if not isinstance(replication, int):
            dc = node.datacenter
            replication = {dc: replication.get(dc, 0)}
            pairs = [(t, o) for t, o in pairs if nodes[o].datacenter == dc]
            self.capacity = {nid: c for nid, c in self.capacity.items() if nodes[nid].datacenter == dc}
        # The population includes the newcomer from the start: a walk that has not met its dc or rack yet
        # is not settled, so ranges whose replicas its first token would change are found by `crossers`.
        self.placement = _Placement(nodes, replication)
        self.tokens: list[int] = []
        self.owners: list[NodeId] = []
        for t, o in pairs:
            self.tokens.append(t)
            self.owners.append(o)
        if self.tokens:
            self._refresh()

    def _refresh(self) -> None:
        n = len(self.tokens)
        self.twice = self.owners + self.owners
        self.widths = [_width(self.tokens, i) for i in range(n)]
        self.replicas: list[tuple[NodeId, ...]] = []
        self.crossers: list[list[int]] = [[] for _ in range(n)]  # per range: earlier walks passing into it
        self.share = dict.fromkeys(self.capacity, 0.0)
        self.primary = dict.fromkeys(self.capacity, 0.0)
        for i in range(n):
            replicas, needed = self._walk(i)
            self.replicas.append(replicas)
            width = self.widths[i] / RING_SIZE
            for node_id in replicas:
                self.share[node_id] += width
            self.primary[self.owners[i]] += width
            for distance in range(1, min(needed - 1, n) + 1):
                self.crossers[(i + distance) % n].append(i)

    def _walk(self, start: int, new_after: int = -1) -> tuple[tuple[NodeId, ...], int]:
        """Placement walking from range `start`, with a token of the new node after `new_after` tokens."""
        n, twice = len(self.owners), self.twice
        if new_after < 0:
            return self.placement.select(twice[start : start + n])
        cut = start + new_after
        return self.placement.select(chain(twice[start:cut], (self.new,), twice[cut : start + n]))

    def claim(self, token: int) -> Token:
        """`token`, or the nearest free token after it, marked as taken."""
        while token in self.taken:
            token = token + 1 if token < TOKEN_MAX else TOKEN_MIN
        self.taken.add(token)
        return Token(token)

    def insert(self, token: int) -> None:
        i = bisect.bisect_left(self.tokens, token)
        self.tokens.insert(i, token)
        self.owners.insert(i, self.new)
        self._refresh()

    def best_token(self, new_capacity: float) -> Token:
        best: tuple[float, int, int] | None = None  # (cost, range index, offset into the range)
        for j, width in enumerate(self.widths):
            if width > 2:
                cost, offset = self._evaluate(j, new_capacity)
                if best is None or cost < best[0]:
                    best = (cost, j, offset)
        if best is None:
            raise ValueError("no room left on the ring for another token")
        _, j, offset = best
        start, width = self.tokens[j - 1], self.widths[j]
        offset += _jitter(self.new, start, width)
        for delta in range(width):  # step aside from tokens of other datacenters
            for o in (offset + delta, offset - delta):
                token = (start + o - TOKEN_MIN) % RING_SIZE + TOKEN_MIN
                if 0 < o < width and token not in self.taken:
                    return self.claim(token)
        raise ValueError("no room left on the ring for another token")

    def _evaluate(self, j: int, new_capacity: float) -> tuple[float, int]:
        """Cost change of splitting range j at its best point, and that point (offset from the range start).

        With the new token `s` (as a fraction of the ring) past the range's start, node x's replicated share
        becomes `share[x] + c[x] + s * d[x]` and its primary share `primary[x] + s * p[x]`."""
        n, new = len(self.tokens), self.new
        width = self.widths[j] / RING_SIZE
        old = self.replicas[j]
        head = self._walk(j, 0)[0]  # replicas of (start, new]
        tail = old  # replicas of (new, end]
        c: dict[NodeId, float] = {}
        for i in self.crossers[j]:
            if i == j:  # its walk went all the way round: the new token, met last, may matter
                tail = self._walk(j, n)[0]
                continue
            after = self._walk(i, (j - i) % n)[0]
            if after != self.replicas[i]:
                _add(c, after, self.replicas[i], self.widths[i] / RING_SIZE)
        _add(c, tail, old, width)
        d: dict[NodeId, float] = {}
        _add(d, head, tail, 1.0)
        p: dict[NodeId, float] = {}
        _add(p, (new,), (self.owners[j],), 1.0)

        def weight(x: NodeId) -> float:
            return 1.0 / (new_capacity if x == new else self.capacity[x])

        # cost(s) = a s^2 + b s + k, the change of sum((share^2 + primary^2) / capacity)
        a = b = k = 0.0
        for x in c.keys() | d.keys():
            w, base, dx = weight(x), self.share[x] + c.get(x, 0.0), d.get(x, 0.0)
            a += w * dx * dx
            b += 2 * w * base * dx
            k += w * (base * base - self.share[x] ** 2)
        for x, px in p.items():
            a += _PRIMARY_WEIGHT * weight(x) * px * px
            b += _PRIMARY_WEIGHT * 2 * weight(x) * self.primary[x] * px
        low, high = _SPLIT_LOW * width, _SPLIT_HIGH * width
        s = min(max(-b / (2 * a), low), high) if a > 0 else (high if b < 0 else low)
        offset = min(max(round(s * RING_SIZE), 1), self.widths[j] - 1)
        return a * s * s + b * s + k, offset


def _jitter(node_id: NodeId, start: int, width: int) -> int:
    """A small offset, within +-1/1024 of `width`, that depends on the node id: two nodes allocating against
    the same ring at the same moment (which one-change-at-a-time should prevent) still get distinct tokens."""
    span = width // 1024
    if span < 2:
        return 0
    h = int.from_bytes(mmh3.hash_bytes(f"{node_id}|{start}".encode())[:8], "big")
    return h % (2 * span + 1) - span


def _add(acc: dict[NodeId, float], plus: Iterable[NodeId], minus: Iterable[NodeId], amount: float) -> None:
    for x in plus:
        acc[x] = acc.get(x, 0.0) + amount
    for x in minus:
        acc[x] = acc.get(x, 0.0) - amount
