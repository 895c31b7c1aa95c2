"""Prometheus metrics of a node: prefix `ringkv_`, base units, `_total` counters, bounded label values.

Each app gets its own registry (several nodes can live in one test process). Storage, cluster and
anti-entropy figures are read from the engine and the node when scraped (custom collectors), so the hot path
only bumps plain integers.
"""

from __future__ import annotations

import math
import os
import time
from collections.abc import Callable, Iterator
from typing import Any

from aiohttp import web
from aiohttp.typedefs import Middleware
from prometheus_client import CollectorRegistry, Counter, Gauge, Histogram
from prometheus_client.core import CounterMetricFamily, GaugeMetricFamily, Metric
from prometheus_client.registry import Collector

from ringkv import __version__
from ringkv.api.auth import Security
from ringkv.api.errors import ERROR_CODE, Handler
from ringkv.cluster import topology
from ringkv.net.node import ClusterNode
from ringkv.net.recent import RecentRequests
from ringkv.storage.engine import Engine

LATENCY_BUCKETS = (0.0001, 0.00025, 0.0005, 0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0,
                   2.5)
KNOWN_METHODS = frozenset({"GET", "POST", "PUT", "DELETE", "HEAD", "OPTIONS", "PATCH"})
FSYNC_BUCKETS = (0.0001, 0.00025, 0.0005, 0.001, 0.002, 0.005, 0.01, 0.025, 0.05, 0.1, 0.5, 1.0)
EXCHANGE_RESULTS = ("in_sync", "repaired", "failed", "unavailable", "skipped")  # AntiEntropy's results
# always exposed (0 when none runs), so the series never vanishes
OPERATION_KINDS = ("repair", "decommission", "removenode", "cleanup", "drain")
# client routes whose requests the status page counts (net/recent.py)
RECENT_KINDS = {"/api/v1/get": "read", "/api/v1/getValue": "read", "/api/v1/put": "write",
                "/api/v1/delete": "write"}


class StorageCollector(Collector):
    def __init__(self) -> None:
        self.engine: Engine | None = None

    def collect(self) -> Iterator[Metric]:
        engine = self.engine
        if engine is None:
            return
        s = engine.stats
        yield GaugeMetricFamily("ringkv_storage_memtable_bytes", "Bytes held in memtables", engine.memtable_bytes)
        yield GaugeMetricFamily("ringkv_storage_sstables", "Live SSTables", engine.table_count)
        yield GaugeMetricFamily("ringkv_storage_sstable_bytes", "Bytes in live SSTables", engine.table_bytes)
        yield CounterMetricFamily("ringkv_storage_flushes", "Memtables flushed to SSTables", s.flushes)
        yield CounterMetricFamily("ringkv_storage_compactions", "Compactions finished", s.compactions)
        yield CounterMetricFamily("ringkv_storage_compaction_written_bytes", "Bytes written by compactions",
                                  s.compaction_bytes_written)
        yield CounterMetricFamily("ringkv_storage_write_stalls", "Writes that waited for flushes",
                                  s.write_stalls)
        yield CounterMetricFamily("ringkv_storage_torn_tails_recovered",
                                  "Torn commit-log tails cut off at recovery", s.torn_tails_recovered)
        bloom = CounterMetricFamily("ringkv_storage_bloom_filter_checks",
                                    "Bloom filter checks on point reads by outcome", labels=["outcome"])
        bloom.add_metric(["negative"], s.bloom_negatives)
        bloom.add_metric(["true_positive"], s.bloom_positives)
        bloom.add_metric(["false_positive"], s.bloom_false_positives)
        yield bloom


class ClusterCollector(Collector):
    """Gossip, coordinator and hinted-handoff figures, read from the node when scraped."""

    def __init__(self) -> None:
        self.node: ClusterNode | None = None

    def collect(self) -> Iterator[Metric]:
        node = self.node
        if node is None:  # storage replaying, the node starting: not ready, mode starting
            yield GaugeMetricFamily("ringkv_node_ready", "1 once the node has heard the ring and takes traffic", 0)
            mode = GaugeMetricFamily("ringkv_node_mode", "1 for the node's current mode", labels=["mode"])
            for name in NODE_MODES:
                mode.add_metric([name], 1 if name == "starting" else 0)
            yield mode
            return
        members = GaugeMetricFamily("ringkv_cluster_members", "Known cluster members by liveness", labels=["state"])
        up = sum(1 for n in node.membership.members if node.gossiper.is_up(n))
        members.add_metric(["up"], up)
        members.add_metric(["down"], len(node.membership.members) - up)
        yield members
        yield from _members(node)
        yield CounterMetricFamily("ringkv_gossip_rounds", "Gossip rounds run", node.gossiper.rounds)
        c = node.coordinator.stats
        yield CounterMetricFamily("ringkv_coordinator_forwarded_writes", "Writes forwarded to the key's coordinator",
                                  c.forwarded)
        yield CounterMetricFamily("ringkv_read_repairs", "Stale replicas sent a merged record by read repair",
                                  c.read_repairs)
        spares = CounterMetricFamily("ringkv_read_spares", "Reads that asked a replica beyond R, by why: "
                                     "speculative (R answers were late), retry (an answer failed)",
                                     labels=["reason"])
        spares.add_metric(["speculative"], c.speculative_reads)
        spares.add_metric(["retry"], c.read_retries)
        yield spares
        yield CounterMetricFamily("ringkv_quorum_failures", "Requests answered 503 for want of a quorum",
                                  c.quorum_failures)
        h = node.hints
        yield GaugeMetricFamily("ringkv_hints_pending", "Hints waiting for delivery", sum(h.pending.values()))
        yield GaugeMetricFamily("ringkv_hints_pending_bytes", "Bytes of hints waiting for delivery", h.bytes)
        yield CounterMetricFamily("ringkv_hints_stored", "Hints stored", h.stored)
        yield CounterMetricFamily("ringkv_hints_delivered", "Hints delivered to their replica", h.delivered)
        yield CounterMetricFamily("ringkv_hints_dropped", "Hints dropped (expired or store full)", h.dropped)
        yield CounterMetricFamily("ringkv_hints_sent_to_fallbacks", "Writes acknowledged by a hinted fallback",
                                  c.hints_sent_to_fallbacks)
        yield CounterMetricFamily("ringkv_hints_delivered_bytes", "Bytes of hinted records delivered",
                                  h.delivered_bytes)
        yield CounterMetricFamily("ringkv_hints_corrupt", "Undecodable hints dropped", h.corrupt)
        yield CounterMetricFamily("ringkv_hints_expired",
                                  "Hints dropped undelivered for being older than the tombstone grace", h.expired)
        yield CounterMetricFamily("ringkv_hints_refused_past_window",
                                  "Hints not taken because their target was down longer than the hint window",
                                  c.hints_refused_past_window)
        yield CounterMetricFamily("ringkv_hints_kept_at_shutdown",
                                  "Replication still owed at shutdown, kept as local hints", c.hints_kept_at_shutdown)
        yield CounterMetricFamily("ringkv_coordinator_forward_retries",
                                  "Forwarded writes sent to the next replica because the first certainly did not "
                                  "apply them", c.forward_retries)
        yield CounterMetricFamily("ringkv_coordinator_not_replica_refusals",
                                  "Forwarded writes refused because this node is not a replica of the key",
                                  c.not_replica_refusals)
        yield CounterMetricFamily("ringkv_ring_mismatches",
                                  "Internode requests sent under a ring digest other than ours", c.ring_mismatches)
        yield GaugeMetricFamily("ringkv_ring_conflicts", "Members left out of the ring for a token conflict",
                                len(node.ring_conflicts))
        yield CounterMetricFamily("ringkv_quarantined_records", "Corrupt records quarantined",
                                  node.replica.quarantine.count)
        ready = GaugeMetricFamily("ringkv_node_ready", "1 once the node has heard the ring and takes traffic")
        ready.add_metric([], 1 if node.ready else 0)
        yield ready
        yield from _operations(node)
        yield from _disk(node.config.data_dir)
        yield from _topology(node)


PHI_CAP = 1000.0  # phi grows without bound (inf) for a silent peer; a dashboard wants a finite number


def _members(node: ClusterNode) -> Iterator[Metric]:
    """Per member, as this node sees it: up (1) or down (0) with its rack and datacenter, and the failure
    detector's phi. Members that have left the cluster are not shown; labels stay bounded by cluster size."""
    # `node_rack`, `member_rack`... rather than `rack`: the scrape config puts a `rack` label on the target (the
    # pod's), and a scraped label of the same name would be renamed `exported_rack`.
    info = GaugeMetricFamily("ringkv_node_info", "1, labelled with this node's identity, placement and version",
                             labels=["node", "node_rack", "node_datacenter", "version"])
    info.add_metric([node.node_id, node.config.rack, node.config.datacenter, __version__], 1)
    yield info
    member_up = GaugeMetricFamily("ringkv_cluster_member_up", "1 while this node judges the member up, else 0",
                                  labels=["member", "member_rack", "member_datacenter", "member_status"])
    phi = GaugeMetricFamily("ringkv_gossip_phi", "The phi accrual failure detector's suspicion of each peer "
                            f"(capped at {PHI_CAP:g})", labels=["member"])
    for member_id, state in sorted(node.membership.members.items()):
        if state.status.value == "left":
            continue
        member_up.add_metric([member_id, state.rack, state.datacenter, state.status.value],
                             1 if node.gossiper.is_up(member_id) else 0)
        if member_id != node.node_id:
            value = node.gossiper.phi(member_id)
            phi.add_metric([member_id], PHI_CAP if math.isinf(value) or value > PHI_CAP else value)
    yield member_up
    yield phi


def _operations(node: ClusterNode) -> Iterator[Metric]:
    """The oldest running operation of each kind: its age and, where it counts ranges, the share done."""
    running = GaugeMetricFamily("ringkv_operations_running", "Admin operations (repair...) running, by kind",
                                labels=["kind"])
    age = GaugeMetricFamily("ringkv_operation_age_seconds",
                            "Seconds the oldest running operation of a kind has run (0: none runs)", labels=["kind"])
    progress = GaugeMetricFamily("ringkv_operation_progress_ratio",
                                 "Ranges done / ranges to do of the oldest running operation of a kind (0..1; "
                                 "0 when none runs)", labels=["kind"])
    counts: dict[str, int] = dict.fromkeys(OPERATION_KINDS, 0)
    oldest: dict[str, tuple[float, float]] = {}
    now_ms = time.time_ns() // 1_000_000
    for op in node.operations.running():
        counts[op.kind] = counts.get(op.kind, 0) + 1
        seconds = max(0.0, (now_ms - op.started_ms) / 1000)
        total, done = op.progress.get("ranges_total", 0), op.progress.get("ranges_done", 0)
        ratio = min(1.0, done / total) if isinstance(total, int | float) and total > 0 and \
            isinstance(done, int | float) else 0.0
        if seconds >= oldest.get(op.kind, (-1.0, 0.0))[0]:
            oldest[op.kind] = (seconds, ratio)
    for kind, count in sorted(counts.items()):
        running.add_metric([kind], count)
        seconds, ratio = oldest.get(kind, (0.0, 0.0))
        age.add_metric([kind], seconds)
        progress.add_metric([kind], ratio)
    yield running
    yield age
    yield progress
    streaming = GaugeMetricFamily("ringkv_streaming_ranges_by_state",
                                  "Ranges of the last join or removal this node streamed in, by state",
                                  labels=["state"])
    states = dict.fromkeys(STREAM_STATES, 0)
    for p in node.join_progress:
        states[p.state] = states.get(p.state, 0) + 1
    for state, count in states.items():
        streaming.add_metric([state], count)
    yield streaming


STREAM_STATES = ("pending", "streaming", "verifying", "done", "failed")  # streaming.RangeProgress.state


def _disk(path: str) -> Iterator[Metric]:
    """Free and total bytes of the file system holding the data directory (one statvfs per scrape)."""
    try:
        st = os.statvfs(path)
    except OSError:
        return
    yield GaugeMetricFamily("ringkv_storage_disk_free_bytes", "Bytes available to the node on the data "
                            "directory's file system", st.f_bavail * st.f_frsize)
    yield GaugeMetricFamily("ringkv_storage_disk_capacity_bytes", "Size of the data directory's file system",
                            st.f_blocks * st.f_frsize)


NODE_MODES = ("starting", "joining", "normal", "leaving", "left", "drained", "stopping")


def _topology(node: ClusterNode) -> Iterator[Metric]:
    """The node's mode, ring agreement, changes in flight and range streaming."""
    mode = GaugeMetricFamily("ringkv_node_mode", "1 for the node's current mode", labels=["mode"])
    for name in NODE_MODES:
        mode.add_metric([name], 1 if node.mode == name else 0)
    yield mode
    yield GaugeMetricFamily("ringkv_ring_agreed", "1 when every live member gossips this node's view of the ring",
                            1 if node.agreed() else 0)
    future, current = node.coordinator.future, node.coordinator.ring
    yield GaugeMetricFamily("ringkv_topology_changes_in_flight", "Members joining or leaving, as this node sees them",
                            0 if future is None else len(set(future.nodes) ^ set(current.nodes)))
    yield GaugeMetricFamily("ringkv_ring_pending_ranges",
                            "Pieces of the token space that gain a replica in the change in flight (pending ranges)",
                            0 if future is None else
                            len(topology.movements(current, future, node.config.replication_factor)))
    st = node.streamer.stats if hasattr(node, "streamer") else None
    if st is not None:
        yield CounterMetricFamily("ringkv_streaming_received_keys", "Records received by range streaming",
                                  st.keys_received)
        yield CounterMetricFamily("ringkv_streaming_received_bytes", "Bytes received by range streaming",
                                  st.bytes_received)
        yield CounterMetricFamily("ringkv_streaming_sent_keys", "Records sent by range streaming (and decommission)",
                                  st.keys_sent)
        yield CounterMetricFamily("ringkv_streaming_sent_bytes", "Bytes sent by range streaming (and decommission)",
                                  st.bytes_sent)
        yield CounterMetricFamily("ringkv_streaming_ranges", "Ranges streamed in and verified", st.ranges_streamed)


class AntiEntropyCollector(Collector):
    """Merkle-tree exchanges, trees, tombstone collection and range verification, read from the node when
    scraped; nothing at all until the node has started anti-entropy."""

    def __init__(self, node: Callable[[], ClusterNode | None]) -> None:
        self.node = node

    def collect(self) -> Iterator[Metric]:
        node = self.node()
        aae = node.antientropy if node is not None else None
        if aae is None:
            return
        s = aae.stats
        exchanges = CounterMetricFamily("ringkv_antientropy_exchanges",
                                        "Anti-entropy exchanges of one range with one peer, by result",
                                        labels=["result"])
        for result in dict.fromkeys((*EXCHANGE_RESULTS, *sorted(s.exchanges))):
            exchanges.add_metric([result], s.exchanges.get(result, 0))
        yield exchanges
        yield CounterMetricFamily("ringkv_antientropy_hashes_compared", "Merkle node hashes compared with peers",
                                  s.hashes_compared)
        yield CounterMetricFamily("ringkv_antientropy_leaves_compared", "Differing Merkle leaves whose keys were "
                                  "compared", s.leaves_compared)
        yield CounterMetricFamily("ringkv_antientropy_keys_compared", "Keys compared with peers by digest",
                                  s.keys_compared)
        repaired = CounterMetricFamily("ringkv_antientropy_keys_repaired",
                                       "Records repaired: merged here from a peer (pulled) or sent to one (pushed)",
                                       labels=["direction"])
        repaired.add_metric(["pulled"], s.keys_pulled)
        repaired.add_metric(["pushed"], s.keys_pushed)
        yield repaired
        yield CounterMetricFamily("ringkv_antientropy_bytes", "Bytes of records moved by exchanges", s.bytes)
        trees = aae.trees
        yield CounterMetricFamily("ringkv_antientropy_tree_builds", "Merkle trees built from a scan", trees.builds)
        yield CounterMetricFamily("ringkv_antientropy_tree_build_seconds", "Seconds spent building Merkle trees",
                                  trees.build_seconds_total)
        yield CounterMetricFamily("ringkv_antientropy_tree_heals", "Merkle leaves rebuilt after disagreeing with "
                                  "a scan", trees.heals)
        ready = sum(1 for t in trees.trees.values() if t.ready)
        states = GaugeMetricFamily("ringkv_antientropy_trees", "Merkle trees of this node's ranges, by state",
                                   labels=["state"])
        states.add_metric(["ready"], ready)
        states.add_metric(["building"], len(trees.trees) - ready)
        yield states
        yield GaugeMetricFamily("ringkv_antientropy_tree_keys", "Keys held in this node's Merkle trees",
                                sum(t.tree.count for t in trees.trees.values()))
        yield GaugeMetricFamily("ringkv_antientropy_tombstones", "Local tombstones awaiting collection",
                                len(trees.tombstones))
        yield CounterMetricFamily("ringkv_antientropy_tombstones_reaped",
                                  "Tombstones collected once every replica held them", s.reaped)
        yield CounterMetricFamily("ringkv_antientropy_reap_checks", "Reap checks asked of peers", s.reap_checks)
        now = time.monotonic()  # one instant for every range, so the oldest is exactly the largest age
        ages = GaugeMetricFamily("ringkv_antientropy_range_verified_age_seconds",
                                 "Seconds since a range of this node was compared with every other replica (since "
                                 "start if never)", labels=["range"])
        oldest = 0.0  # as AntiEntropy.oldest_unverified_s()
        for range_id, replica_range in sorted(aae.ranges.items()):
            verified = aae.range_verified_at(range_id)
            age = now - (aae.started_at if verified is None else verified)
            ages.add_metric([replica_range.name], age)
            oldest = max(oldest, age)
        yield ages
        yield GaugeMetricFamily("ringkv_antientropy_oldest_unverified_seconds",
                                "Seconds since the least recently verified range was compared with every replica "
                                "(since start if never)", oldest)


class SecurityCollector(Collector):
    """Certificate expiry and reloads, tokens accepted (reads `source` at scrape time)."""

    def __init__(self) -> None:
        self.source: Security | None = None

    def collect(self) -> Iterator[Metric]:
        security = self.source
        tls = None if security is None else security.tls
        tokens = None if security is None else security.tokens
        yield GaugeMetricFamily("ringkv_tls_certificate_expiry_timestamp_seconds",
                                "When this node's certificate expires, seconds since the epoch (0: no TLS)",
                                0.0 if tls is None else tls.not_after)
        reloads = CounterMetricFamily("ringkv_security_reloads", "Certificate and tokens files re-read after a "
                                      "change, by what and result", labels=["what", "result"])
        if tls is not None:
            reloads.add_metric(["certificate", "ok"], tls.reloads)
            reloads.add_metric(["certificate", "failed"], tls.reload_failures)
        if tokens is not None:
            reloads.add_metric(["tokens", "ok"], tokens.reloads)
            reloads.add_metric(["tokens", "failed"], tokens.reload_failures)
        yield reloads
        yield GaugeMetricFamily("ringkv_http_tokens", "Bearer tokens this node accepts",
                                0 if tokens is None else len(tokens))


class NodeMetrics:
    def __init__(self) -> None:
        self.registry = CollectorRegistry()
        self.recent = RecentRequests()
        self.storage = StorageCollector()
        self.registry.register(self.storage)
        self.cluster = ClusterCollector()
        self.registry.register(self.cluster)
        self.antientropy = AntiEntropyCollector(lambda: self.cluster.node)
        self.registry.register(self.antientropy)
        self.security = SecurityCollector()
        self.registry.register(self.security)
        self.transitions = Counter("ringkv_gossip_transitions", "Peers judged up or down by the failure detector",
                                   ["to"], registry=self.registry)
        self.refusals = Counter("ringkv_internode_refused_connections",
                                "Internode connections refused, by reason: cluster (another cluster's name), "
                                "tls (handshake failed: plaintext, or a certificate the cluster CA did not sign), "
                                "certificate (signed, but for another cluster or node), self, hello",
                                ["reason"], registry=self.registry)
        self.auth_failures = Counter("ringkv_http_auth_failures", "HTTP requests refused by authentication or "
                                     "authorization: unauthenticated, invalid_token (401), forbidden (403)",
                                     ["reason"], registry=self.registry)
        self.http_connections = Gauge("ringkv_http_connections", "Open HTTP connections", registry=self.registry)
        self.http_closed = Counter("ringkv_http_connections_closed", "HTTP connections closed by a limit: "
                                   "too_many_connections, header_timeout, body_timeout, bad_request",
                                   ["reason"], registry=self.registry)
        self.requests = Counter("ringkv_http_requests", "HTTP requests by route, method and status",
                                ["route", "method", "status"], registry=self.registry)
        self.errors = Counter("ringkv_http_errors", "HTTP error answers by their stable `error` code",
                              ["code"], registry=self.registry)
        self.latency = Histogram("ringkv_http_request_duration_seconds", "HTTP request latency",
                                 ["route", "method"], buckets=LATENCY_BUCKETS, registry=self.registry)
        self.siblings = Histogram("ringkv_read_siblings", "Versions returned by a read (1 = no conflict)",
                                  buckets=(1, 2, 3, 5, 10, 25, 50, 100), registry=self.registry)
        self.sibling_warnings = Counter("ringkv_sibling_warnings",
                                        "Reads or writes of keys holding 25 or more siblings",
                                        registry=self.registry)
        self.fsync = Histogram("ringkv_storage_commitlog_fsync_duration_seconds",
                               "Duration of one commit-log fsync (group commit)", buckets=FSYNC_BUCKETS,
                               registry=self.registry)

    def auth_failed(self, reason: str) -> None:
        self.auth_failures.labels(reason).inc()

    def transition(self, node: str, up: bool) -> None:
        self.transitions.labels("up" if up else "down").inc()

    def refused(self, peer: str, reason: str) -> None:
        self.refusals.labels(reason).inc()

    def middleware(self) -> Middleware:
        requests, latency, errors, recent = self.requests, self.latency, self.errors, self.recent
        counters: dict[tuple[str, str, int], Any] = {}
        histograms: dict[tuple[str, str], Any] = {}

        @web.middleware
        async def record(request: web.Request, handler: Handler) -> web.StreamResponse:
            started = time.perf_counter()
            status = 500
            try:
                response = await handler(request)
                status = response.status
                if status >= 400:
                    errors.labels(response.get(ERROR_CODE, "other")).inc()
                return response
            except web.HTTPException as e:
                status = e.status
                if status >= 400:
                    errors.labels("other").inc()
                raise
            finally:
                resource = request.match_info.route.resource
                route = resource.canonical if resource is not None else "unmatched"
                method = request.method if request.method in KNOWN_METHODS else "other"
                seconds = time.perf_counter() - started
                # The labelled children, looked up once per (route, method, status): `labels()` costs more
                # than the increment. Bounded: routes and methods are fixed sets, statuses a few dozen.
                counter = counters.get((route, method, status))
                if counter is None:
                    counter = counters[(route, method, status)] = requests.labels(route, method, str(status))
                counter.inc()
                histogram = histograms.get((route, method))
                if histogram is None:
                    histogram = histograms[(route, method)] = latency.labels(route, method)
                histogram.observe(seconds)
                kind = RECENT_KINDS.get(route)
                if kind is not None:
                    recent.observe(kind, seconds, time.monotonic())

        return record
