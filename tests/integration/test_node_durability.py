"""Acknowledged writes survive `kill -9` of a real node (durability sync): what the API said 200 to is there.

- `test_acknowledged_writes_survive_kill_9`: 200 keys written by 16 concurrent writers, all acknowledged, the
  node SIGKILLed with nothing in flight and restarted on the same data dir: every key has its value.
- `test_kill_9_at_random_moments_while_writes_are_in_flight`: rounds of 16 writers overwriting and deleting
  keys until the node is SIGKILLed after a random number of acknowledgements. After each restart every key
  holds its last acknowledged state, except a key whose write was in flight at the kill, which may hold either
  that state or the in-flight one; nothing else (no siblings, no third value). The memtable is small, so the
  rounds cross flushes and compactions too.

Set RINGKV_CRASH_SEED to replay a run; the seed is printed and named in every failure.
"""

from __future__ import annotations

import asyncio
import os
import random
import signal
from dataclasses import dataclass, field
from pathlib import Path

import orjson

from ringkv.client import Client, ClientError, JSONValue
from tests.integration.nodes import NodeProcess

WRITERS = 16
KEYS = 200
ROUNDS = 3
MAX_OPS_PER_WRITER = 1000
ABSENT = b"<absent>"  # the state of a deleted or never-written key
MEMTABLE_MB = "0.02"  # ~20 KB: flushes (and compactions) happen within the rounds


def key_of(i: int) -> str:
    return f"durable-{i:03d}"


def state_of(value: JSONValue | None) -> bytes:
    return ABSENT if value is None else orjson.dumps(value)


@dataclass
class Model:
    """What each key may hold: one state once acknowledged, two while a write to it is unresolved."""

    seed: int
    allowed: dict[str, set[bytes]] = field(default_factory=dict)
    in_flight: dict[str, bytes] = field(default_factory=dict)
    acks: int = 0

    def sent(self, key: str, state: bytes) -> None:
        self.in_flight[key] = state

    def acked(self, key: str, state: bytes) -> None:
        del self.in_flight[key]
        self.allowed[key] = {state}
        self.acks += 1

    def crashed(self) -> None:
        """The node died: each write still in flight may or may not have been applied."""
        for key, state in self.in_flight.items():
            self.allowed.setdefault(key, {ABSENT}).add(state)
        self.in_flight.clear()


async def verify(url: str, model: Model, round_no: int) -> None:
    """Every key holds an allowed state; afterwards the model knows each key's state exactly."""
    async with Client(url) as client:
        results = await asyncio.gather(*(client.get(key_of(i)) for i in range(KEYS)))
    for i, result in enumerate(results):
        key = key_of(i)
        assert not result.has_siblings, f"seed {model.seed} round {round_no}: {key} has siblings {result.values}"
        state = state_of(result.value) if result.found else ABSENT
        allowed = model.allowed.get(key, {ABSENT})
        assert state in allowed, (f"seed {model.seed} round {round_no}: {key} holds {state!r}, "
                                  f"allowed {sorted(allowed)}")
        model.allowed[key] = {state}


def restart_after_kill(node: NodeProcess, model: Model, round_no: int) -> None:
    code = node.kill()
    assert code == -signal.SIGKILL, f"seed {model.seed} round {round_no}: node exited {code} by itself\n" \
                                    f"{node.stderr()}"
    model.crashed()
    node.start()


def test_acknowledged_writes_survive_kill_9(tmp_path: Path) -> None:
    model = Model(seed=0)

    async def write_all(url: str) -> None:
        async with Client(url, connections=WRITERS) as client:
            async def writer(w: int) -> None:
                for i in range(w, KEYS, WRITERS):
                    value: JSONValue = {"i": i, "text": f"value {i} ✓", "list": list(range(i % 7))}
                    model.sent(key_of(i), state_of(value))
                    await client.put(key_of(i), value)
                    model.acked(key_of(i), state_of(value))

            await asyncio.gather(*(writer(w) for w in range(WRITERS)))

    with NodeProcess(tmp_path / "data", node_id="durable", extra_args=["--memtable-mb", MEMTABLE_MB]) as node:
        asyncio.run(write_all(node.url))
        assert model.acks == KEYS and not model.in_flight
        restart_after_kill(node, model, 0)
        asyncio.run(verify(node.url, model, 0))
        assert all(model.allowed[key_of(i)] != {ABSENT} for i in range(KEYS))


def test_kill_9_at_random_moments_while_writes_are_in_flight(tmp_path: Path) -> None:
    seed = int(os.environ.get("RINGKV_CRASH_SEED", random.SystemRandom().randrange(2**32)))
    print(f"RINGKV_CRASH_SEED={seed}")
    rng = random.Random(seed)
    model = Model(seed=seed)

    async def round_of_writes(node: NodeProcess, round_no: int, kill_after: int) -> None:
        killed = asyncio.Event()
        first_ack = model.acks

        async def writer(client: Client, w: int) -> None:
            wrng = random.Random(f"{seed}-{round_no}-{w}")
            owned = list(range(w, KEYS, WRITERS))  # one writer per key: its writes are ordered
            for n in range(MAX_OPS_PER_WRITER):
                key = key_of(wrng.choice(owned))
                value: JSONValue | None = None
                if wrng.random() >= 0.1:
                    value = {"round": round_no, "writer": w, "n": n, "pad": "p" * wrng.randrange(300)}
                model.sent(key, state_of(value))
                try:
                    if value is None:
                        await client.delete(key)
                    else:
                        await client.put(key, value)
                except ClientError as e:
                    assert killed.is_set(), f"seed {seed} round {round_no}: {key}: {e}\n{node.stderr()}"
                    return
                model.acked(key, state_of(value))
                if model.acks - first_ack >= kill_after and not killed.is_set():
                    killed.set()
                    node.send_signal(signal.SIGKILL)  # at once, with the other writers' requests in flight
            raise AssertionError(f"seed {seed} round {round_no}: writers ran out of work before the kill")

        async with Client(node.url, connections=WRITERS, timeout_s=10) as client:
            await asyncio.gather(*(writer(client, w) for w in range(WRITERS)))

    with NodeProcess(tmp_path / "data", node_id="crashy", extra_args=["--memtable-mb", MEMTABLE_MB]) as node:
        for round_no in range(1, ROUNDS + 1):
            kill_after = rng.randrange(1, 400)
            asyncio.run(round_of_writes(node, round_no, kill_after))
            restart_after_kill(node, model, round_no)
            asyncio.run(verify(node.url, model, round_no))
        assert node.stop() == 0, node.stderr()
