"""A process that writes to a storage engine until it is killed (the crash tests' victim).

Usage::

    python engine_child.py DIR SEED ROUND [--threads 4] [--keys 192] [--max-seconds 30]

It opens `Engine.open(DIR, options_for(SEED))` (sync durability, a small memtable and an eager compaction
policy, so flushes and compactions happen all the time) and runs `--threads` writer threads. Writer `t` owns
the keys `key(i)` with `i % threads == t`, so each key has one writer and "the last acknowledged value" of a
key is well defined. A maintenance thread calls `flush()` and `compact()` itself now and then, announcing
each call so the parent can kill it mid-way.

Protocol on stdout, one line per event, each written with one `os.write` (unbuffered, and atomic on a pipe):

    O                            about to open the engine
    R                            open; writes start
    B <thread> <key> <token>     about to put (token = "<round>.<n>", n counting per key) or delete ("DEL")
    A <thread> <key> <token>     that put or delete returned: it is acknowledged and durable
    M F+ | M F- | M C+ | M C-    maintenance flush / compaction begins, ends
    E <message>                  an operation failed; the process exits with status 3

A value encodes its key and token (`make_value`, `parse_value`), so a reader can tell exactly which write it
sees and that its bytes are intact. The process exits by itself after `--max-seconds` in case nobody kills it.
"""

from __future__ import annotations

import argparse
import os
import random
import sys
import threading
import time
import traceback
import zlib

from ringkv.storage.compaction import CompactionPolicy
from ringkv.storage.engine import Engine, EngineOptions
from ringkv.storage.wal import Durability

DELETE = "DEL"


def key(i: int) -> bytes:
    return b"key-%04d" % i


def options_for(seed: int) -> EngineOptions:
    """Small tables and an eager policy. Tombstone grace 0 half the time, so compactions drop tombstones."""
    rng = random.Random(seed)
    return EngineOptions(
        durability=Durability.SYNC,
        memtable_bytes=rng.choice([16, 32, 64]) * 1024,
        max_immutable_memtables=rng.choice([1, 2, 4]),
        block_bytes=1024,
        tombstone_grace_s=rng.choice([0.0, 3600.0]),
        compaction=CompactionPolicy(min_tables=rng.choice([2, 3]), max_tables=8,
                                    small_table_bytes=rng.choice([1, 1 << 20])),
    )


def make_value(k: bytes, token: str, rng: random.Random) -> bytes:
    """`key|token|padlen|pad|crc`, crc (hex) over everything before it."""
    pad = rng.randbytes(rng.randrange(0, 1500))
    body = b"%s|%s|%d|%s|" % (k, token.encode(), len(pad), pad)
    return body + b"%08x" % zlib.crc32(body)


def parse_value(k: bytes, value: bytes) -> str:
    """The token of a value written for `k`; ValueError if the bytes are not exactly such a value."""
    body, crc = value[:-8], value[-8:]
    if len(value) < 8 or b"%08x" % zlib.crc32(body) != crc:
        raise ValueError(f"value of {k!r} fails its checksum: {value[:60]!r}...")
    vkey, token, padlen, rest = body.split(b"|", 3)
    if vkey != k:
        raise ValueError(f"value of {k!r} was written for {vkey!r}")
    if len(rest) != int(padlen) + 1 or not rest.endswith(b"|"):
        raise ValueError(f"value of {k!r} has a bad length")
    return token.decode()


def _say(line: str) -> None:
    os.write(1, line.encode() + b"\n")


def _fail(what: str) -> None:
    _say("E " + what + ": " + traceback.format_exc().replace("\n", " | "))
    os._exit(3)


def _writer(engine: Engine, tid: int, keys: list[bytes], round_no: int, seed: int) -> None:
    rng = random.Random(seed * 1000 + tid)
    counters = dict.fromkeys(keys, 0)
    try:
        while True:
            k = rng.choice(keys)
            if rng.random() < 0.15:
                _say(f"B {tid} {k.decode()} {DELETE}")
                engine.delete(k)
                _say(f"A {tid} {k.decode()} {DELETE}")
            else:
                counters[k] += 1
                token = f"{round_no}.{counters[k]}"
                value = make_value(k, token, rng)
                _say(f"B {tid} {k.decode()} {token}")
                engine.put(k, value)
                _say(f"A {tid} {k.decode()} {token}")
    except BaseException:
        _fail(f"writer {tid}")


def _maintenance(engine: Engine, seed: int) -> None:
    rng = random.Random(seed * 1000 + 999)
    try:
        while True:
            time.sleep(rng.uniform(0.01, 0.08))
            if rng.random() < 0.5:
                _say("M F+")
                engine.flush()
                _say("M F-")
            else:
                _say("M C+")
                engine.compact(full=rng.random() < 0.3)
                _say("M C-")
    except BaseException:
        _fail("maintenance")


def main(argv: list[str]) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("dir")
    parser.add_argument("seed", type=int)
    parser.add_argument("round", type=int)
    parser.add_argument("--threads", type=int, default=4)
    parser.add_argument("--keys", type=int, default=192)
    parser.add_argument("--max-seconds", type=float, default=30.0)
    args = parser.parse_args(argv)

    _say("O")
    engine = Engine.open(args.dir, options_for(args.seed))
    _say("R")
    threads = [threading.Thread(target=_maintenance, args=(engine, args.seed), daemon=True)]
    for tid in range(args.threads):
        keys = [key(i) for i in range(args.keys) if i % args.threads == tid]
        threads.append(threading.Thread(target=_writer, args=(engine, tid, keys, args.round, args.seed),
                                        daemon=True))
    for t in threads:
        t.start()
    time.sleep(args.max_seconds)
    _say("E not killed within --max-seconds")
    os._exit(4)


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
