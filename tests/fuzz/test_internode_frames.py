"""Hostile input on the internode port never crashes a node (issue "hostile input never crashes a node").

Two real `ringkv node --insecure` processes (TLS is tested elsewhere), each alone, take hostile bytes on their
peer port from raw sockets: one takes everything but gossip, the other gossip only (absorbed gossip changes a
node's ring and members, which would shift what the other tests reach). Input, in this order:

1. every corpus entry (`corpus/internode/`, see its README): the seeds captured from a real cluster's
   traffic (`capture_seeds.py`) and the regressions of bugs these tests found;
2. bytes before the hello and after it: frames behind length prefixes that lie or exceed the limit, cut off
   anywhere, non-msgpack, msgpack of any type where a request is expected, request-shaped lists with every
   element of the wrong type;
3. requests for every method with hostile bodies (random msgpack values, maps of the fields the handlers
   read holding such values), and bodies mutated from the valid seeds (a field dropped, retyped, a record's
   content changed under a valid checksum...), one at a time and pipelined on one connection.

Properties: every request is answered in time with a well-formed response, never `internal_error` (a handler
that raised something else than a RingkvError); garbage frames get the connection dropped (or a proper
answer) in time, never a hang; after each test the node is alive, `/health` answers 200, the keys written
before the fuzzing still hold their values (`/admin/v1/local`), its RSS stays under 2x its start + 100 MB, and
its log shows no handler failure, traceback or unretrieved task exception.

Budget: derandomized, no example database: every run sends the same inputs, so CI is reproducible and a
failure replays as is; the whole directory takes ~30 s on 2 idle cores (the budget is 60 s).
RINGKV_FUZZ_EXAMPLES=N (`make fuzz`) runs N examples per test with fresh randomness and an example database
(`.hypothesis/`), to explore further; a failure found that way is added to the corpus as a regression once
fixed.
"""

from __future__ import annotations

import os
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from hypothesis.database import DirectoryBasedExampleDatabase

from tests.fuzz import strategies as fs
from tests.fuzz.internode import REPLY_TIMEOUT_S, Entry, Target, check_reply, corpus, examples, long_run, seeds

METHODS = ("coordinate", "replicate", "read", "store_hint", "aae_hashes", "aae_leaves", "aae_fetch", "aae_push",
           "aae_reap_check", "aae_prepare", "aae_release", "stream_range", "stream_pull", "ping",
           "status")
GOSSIP = "gossip"


def fuzz(default_examples: int) -> settings:
    """Derandomized and without a database by default (reproducible CI); fresh randomness and a database in
    a long run (see the module docstring)."""
    if long_run():
        return settings(max_examples=examples(default_examples), deadline=None, derandomize=False,
                        database=DirectoryBasedExampleDatabase(os.path.join(".hypothesis", "fuzz-internode")),
                        suppress_health_check=list(HealthCheck), print_blob=True)
    return settings(max_examples=default_examples, deadline=None, derandomize=True, database=None,
                    suppress_health_check=list(HealthCheck))


@pytest.fixture(scope="module")
def root(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return tmp_path_factory.mktemp("fuzz-internode")


@pytest.fixture(scope="module")
def node(root: Path) -> Iterator[Target]:
    target = Target(root, "fuzz-target")
    yield target
    target.stop()


@pytest.fixture(scope="module")
def gossip_node(root: Path) -> Iterator[Target]:
    target = Target(root, "fuzz-gossip")
    yield target
    target.stop()


def replay(entry: Entry, node: Target, gossip_node: Target, timeout_s: float = REPLY_TIMEOUT_S) -> Target:
    """Send one corpus entry to the node it is for; returns that node."""
    if entry.kind == "requests":
        method, body, request_id = entry.data
        target = gossip_node if method == GOSSIP else node
        target.request(method, body, request_id, timeout_s)
    else:
        target = node
        target.raw(entry.data, hello=entry.kind == "frames")
    return target


# -- 1. the corpus ----------------------------------------------------------------------------------------


@pytest.mark.parametrize("entry", corpus(), ids=lambda e: e.name)
def test_a_corpus_entry_is_handled(entry: Entry, node: Target, gossip_node: Target) -> None:
    replay(entry, node, gossip_node).check()


# -- 2. bytes ---------------------------------------------------------------------------------------------


def test_bytes_before_the_hello_are_refused_or_dropped_in_time(node: Target) -> None:
    hellos = st.fixed_dictionaries(
        {"t": st.just("hello") | fs.scalars, "v": st.just(1) | fs.scalars},
        optional={"cluster": st.sampled_from([node.cluster, "other", ""]) | fs.values,
                  "node": st.sampled_from(["fuzz-peer", node.node_id, ""]) | fs.values},
    )
    first = st.one_of(fs.raw_frames(), st.binary(max_size=64),
                      st.builds(lambda h, rest: _prefix(fs.packed(h)) + rest, hellos, fs.raw_frames() | st.just(b"")))

    @fuzz(120)
    @given(first)
    def send(data: bytes) -> None:
        node.raw(data, hello=False)
        node.alive()

    send()
    node.check()


def test_bytes_after_the_hello_are_answered_or_dropped_in_time(node: Target) -> None:
    @fuzz(160)
    @given(fs.raw_frames())
    def send(data: bytes) -> None:
        node.raw(data, hello=True)
        node.alive()

    send()
    node.check()


def _prefix(payload: bytes) -> bytes:
    return len(payload).to_bytes(4, "big") + payload


# -- 3. requests ------------------------------------------------------------------------------------------

request_ids = fs.ints | st.sampled_from([-1, "id", b"id", 0.5, None, [1], {"id": 1}])


def test_every_method_answers_hostile_bodies_with_a_proper_error(node: Target) -> None:
    @fuzz(250)
    @given(st.sampled_from(METHODS), fs.bodies, request_ids)
    def send(method: str, body: Any, request_id: Any) -> None:
        node.request(method, body, request_id)
        node.alive()

    send()
    node.check()


def test_bodies_mutated_from_valid_ones_are_answered_properly(node: Target) -> None:
    valid = [(m, b) for m, bodies in sorted(seeds().items()) for b in bodies if m != GOSSIP]
    assert {m for m, _ in valid} == set(METHODS), "the seed corpus lacks a method: run capture_seeds.py"

    @fuzz(250)
    @given(st.sampled_from(valid).flatmap(lambda mb: st.tuples(st.just(mb[0]), fs.mutations(mb[1]))))
    def send(request: tuple[str, Any]) -> None:
        node.request(*request)
        node.alive()

    send()
    node.check()


def test_pipelined_requests_are_each_answered(node: Target) -> None:
    valid = [(m, b) for m, bodies in sorted(seeds().items()) for b in bodies if m != GOSSIP]
    one = st.sampled_from(valid).flatmap(lambda mb: st.tuples(st.just(mb[0]), fs.mutations(mb[1]))) | st.tuples(
        st.sampled_from(METHODS), fs.bodies)

    @fuzz(40)
    @given(st.lists(one, min_size=2, max_size=24))
    def send(requests: list[tuple[str, Any]]) -> None:
        with node.peer() as peer:
            for i, (method, body) in enumerate(requests):
                peer.send_frame([0, i, method, body])
            answered = {}
            for _ in requests:
                reply = peer.recv_frame()
                assert isinstance(reply, list) and len(reply) == 4, f"not a response: {reply!r:.200}"
                check_reply(reply, reply[1])
                answered[reply[1]] = reply
            assert sorted(answered) == list(range(len(requests))), "some requests were not answered"
        node.alive()

    send()
    node.check()


def test_gossip_with_hostile_states_is_answered_properly(gossip_node: Target) -> None:
    valid = seeds()[GOSSIP]

    @fuzz(160)
    @given(fs.bodies | st.sampled_from(valid).flatmap(fs.mutations))
    def send(body: Any) -> None:
        gossip_node.request(GOSSIP, body)
        gossip_node.alive()

    send()
    gossip_node.check()


def test_the_nodes_survived_it_all(node: Target, gossip_node: Target) -> None:
    node.check()
    gossip_node.check()
