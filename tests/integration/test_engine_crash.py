"""The storage engine under real crashes and real damage: what was acknowledged survives, nothing is wrong.

- `test_kill_9_loses_nothing_acknowledged`: rounds of a writer process (`engine_child.py`) killed with
  SIGKILL at random moments (some while it opens, some right after it starts a flush or compaction), each
  followed by a reopen that checks every key against the acknowledged writes.
- `test_torn_log_tail_*`: the last commit-log record cut short or garbled, or garbage after it.
- `test_sstable_*`: single flipped bytes in data blocks, in the filter, index and footer.

Set RINGKV_CRASH_SEED to replay a crash run's choices (modes, kill delays, the child's writes; not the
timing); the seed is printed and named in every failure, with the directory as the kill left it (copied to
`killed/` next to it) and as the reopen left it.
"""

from __future__ import annotations

import contextlib
import logging
import os
import queue
import random
import re
import shutil
import struct
import subprocess
import sys
import threading
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from pathlib import Path

import pytest

from ringkv.errors import CorruptionError
from ringkv.storage import manifest, record
from ringkv.storage.engine import Engine, EngineOptions
from ringkv.storage.sstable import SSTableReader
from ringkv.storage.wal import SEGMENT_MAGIC, Durability, list_segments, segment_name
from tests.integration.engine_child import DELETE, key, options_for, parse_value

CHILD = Path(__file__).resolve().parent / "engine_child.py"
NODE_DIR = Path(__file__).resolve().parents[2] / "node"
WAL_RE = re.compile(r"^wal-(\d{10})\.log$")
SST_RE = re.compile(r"^(\d{10})\.sst$")

# -- the crash loop -------------------------------------------------------------------------------------

ROUNDS = 24
KEYS = 192
THREADS = 4
TIME_BUDGET_S = 75.0
WAIT_S = 10.0  # the longest any single wait for the child may take


class Child:
    """One running `engine_child.py`; a thread moves its stdout lines into a queue."""

    def __init__(self, directory: Path, seed: int, round_no: int, stderr_path: Path) -> None:
        env = dict(os.environ)
        env["PYTHONPATH"] = os.pathsep.join(p for p in (str(NODE_DIR), env.get("PYTHONPATH")) if p)
        with open(stderr_path, "wb") as stderr:
            self.proc = subprocess.Popen(
                [sys.executable, str(CHILD), str(directory), str(seed), str(round_no),
                 "--threads", str(THREADS), "--keys", str(KEYS)],
                stdout=subprocess.PIPE, stderr=stderr, env=env,
            )
        self.lines: list[str] = []
        self._queue: queue.Queue[bytes | None] = queue.Queue()
        self._reader = threading.Thread(target=self._read, daemon=True)
        self._reader.start()

    def _read(self) -> None:
        assert self.proc.stdout is not None
        for raw in self.proc.stdout:
            self._queue.put(raw)
        self._queue.put(None)

    def _take(self, raw: bytes) -> str | None:
        if not raw.endswith(b"\n"):
            return None  # a line cut by the kill (os.write to a pipe is atomic, so not expected)
        line = raw.decode().rstrip("\n")
        self.lines.append(line)
        return line

    def wait_for(self, wanted: Callable[[str], bool], timeout: float) -> str | None:
        """Consume lines until one is `wanted` (returned); None on timeout or end of output."""
        deadline = time.monotonic() + timeout
        while (remaining := deadline - time.monotonic()) > 0:
            try:
                raw = self._queue.get(timeout=remaining)
            except queue.Empty:
                return None
            if raw is None:
                self._queue.put(None)
                return None
            line = self._take(raw)
            if line is not None and wanted(line):
                return line
        return None

    def kill(self) -> None:
        """SIGKILL (the child must still be running), then collect everything it printed."""
        exited = self.proc.poll()
        if exited is None:
            self.proc.kill()
            self.proc.wait(timeout=WAIT_S)
        self._reader.join(timeout=WAIT_S)
        while True:
            raw = self._queue.get(timeout=WAIT_S)
            if raw is None:
                break
            self._take(raw)
        if exited is not None:
            raise AssertionError(f"the child exited by itself with status {exited}")

    def stop(self) -> None:
        if self.proc.poll() is None:
            self.proc.kill()
            self.proc.wait(timeout=WAIT_S)
        self._reader.join(timeout=WAIT_S)
        if self.proc.stdout is not None:
            self.proc.stdout.close()


@dataclass
class RoundLog:
    mode: str
    acked: int = 0
    in_flight: int = 0
    in_maintenance: str = ""  # "F" / "C" when the kill came after a flush / compaction began, before it ended
    tmp_files: list[str] = field(default_factory=list)  # half-written files the kill left behind
    segments: int = 0  # commit-log segments the kill left (more than one: memtables were waiting to flush)
    tables: int = 0
    torn_tails: int = 0


def replay_acknowledged(lines: list[str],
                        model: dict[bytes, str | None]) -> tuple[dict[bytes, str | None], int]:
    """Apply the acknowledged ops of one run to `model`; return the ops still in flight and the ack count."""
    pending: dict[int, tuple[bytes, str | None]] = {}
    acked = 0
    for line in lines:
        kind, *rest = line.split(" ")
        if kind == "E":
            raise AssertionError(f"the child failed: {line}")
        if kind not in ("B", "A"):
            continue
        tid, k, token = int(rest[0]), rest[1].encode(), rest[2]
        op = (k, None if token == DELETE else token)
        assert int(k[4:]) % THREADS == tid, f"{k!r} written by thread {tid}"
        if kind == "B":
            assert tid not in pending, f"thread {tid} began two ops at once: {line}"
            pending[tid] = op
        else:
            assert pending.pop(tid, None) == op, f"acknowledged an op that never began: {line}"
            model[op[0]] = op[1]
            acked += 1
    return dict(pending.values()), acked


def check_reopened(directory: Path, seed: int, model: dict[bytes, str | None],
                   in_flight: dict[bytes, str | None], close_flush: bool) -> tuple[int, int]:
    """Every key holds its last acknowledged value or its in-flight one; scan agrees; values parse.

    Updates `model` to what was found; returns (tables, torn tails recovered)."""
    engine = Engine.open(str(directory), options_for(seed))
    try:
        found: dict[bytes, str | None] = {}
        for i in range(KEYS):
            k = key(i)
            value = engine.get(k)
            token = None if value is None else parse_value(k, value)
            allowed = {model.get(k)}
            if k in in_flight:
                allowed.add(in_flight[k])
            assert token in allowed, (f"{k!r} holds {token}; last acknowledged {model.get(k)}, "
                                      f"in flight {in_flight.get(k, 'nothing')}")
            found[k] = token
        scanned = {k: parse_value(k, v) for k, v in engine.scan()}
        assert scanned == {k: t for k, t in found.items() if t is not None}, "scan disagrees with get"
        model.update(found)
        tables, torn = engine.table_count, engine.stats.torn_tails_recovered
    finally:
        engine.close(flush=close_flush)
    check_no_stray_files(directory)
    return tables, torn


def check_no_stray_files(directory: Path) -> None:
    """After a clean close: MANIFEST, LOCK, live segments and exactly the tables the manifest names."""
    names = os.listdir(directory)
    stray = [n for n in names
             if n not in ("MANIFEST", "LOCK") and not WAL_RE.match(n) and not SST_RE.match(n)]
    assert not stray, f"stray files: {stray}"
    state = manifest.load(str(directory))
    assert state is not None
    tables = {int(m.group(1)) for n in names if (m := SST_RE.match(n))}
    assert tables == set(state.tables), f"tables on disk {sorted(tables)}, in the manifest {state.tables}"
    segments = [int(m.group(1)) for n in names if (m := WAL_RE.match(n))]
    assert all(s >= state.log_floor for s in segments), f"segments {segments} below floor {state.log_floor}"


def listing(directory: Path) -> list[str]:
    lines = [f"directory {directory}:"]
    for name in sorted(os.listdir(directory)):
        lines.append(f"  {name:24} {(directory / name).stat().st_size:>9} bytes")
    if (directory / "MANIFEST").exists():
        lines.append("  MANIFEST: " + (directory / "MANIFEST").read_text(errors="replace"))
    return lines


def describe(directory: Path, killed: Path, child: Child | None, stderr_path: Path) -> str:
    lines = []
    if killed.exists():
        lines += ["as the kill left it,", *listing(killed), "after the reopen,"]
    if directory.exists():
        lines += listing(directory)
    if child is not None:
        lines.append("last child lines: " + " / ".join(child.lines[-12:]))
    if stderr_path.exists():
        lines.append("child stderr: " + stderr_path.read_text(errors="replace")[-2000:])
    return "\n".join(lines)


def run_round(child: Child, mode: str, rng: random.Random) -> None:
    """Wait for the moment `mode` names, then SIGKILL."""
    if child.wait_for(lambda line: line == "O", WAIT_S) is None:
        raise AssertionError("the child never started opening the engine")
    if mode == "open":
        time.sleep(rng.uniform(0.0, 0.04))
    else:
        if child.wait_for(lambda line: line == "R", WAIT_S) is None:
            raise AssertionError("the child never finished opening the engine")
        if mode == "maintenance":
            time.sleep(rng.uniform(0.0, 0.1))
            child.wait_for(lambda line: line in ("M F+", "M C+"), 3.0)
            time.sleep(rng.choice([0.0, rng.uniform(0.0, 0.004)]))
        else:
            deadline = time.monotonic() + rng.uniform(0.05, 0.6)
            child.wait_for(lambda line: False, deadline - time.monotonic())
    child.kill()


@pytest.mark.slow
@pytest.mark.timeout(180)
def test_kill_9_loses_nothing_acknowledged(tmp_path: Path) -> None:
    seed = int(os.environ.get("RINGKV_CRASH_SEED") or random.SystemRandom().randrange(2**32))
    print(f"crash test seed={seed} (set RINGKV_CRASH_SEED to replay)")
    rng = random.Random(seed)
    directory, killed = tmp_path / "db", tmp_path / "killed"
    model: dict[bytes, str | None] = {}
    logs: list[RoundLog] = []
    modes = ["open"] * 3 + ["maintenance"] * 9 + ["timed"] * (ROUNDS - 13)
    rng.shuffle(modes)
    modes.insert(0, "timed")  # something to recover before any kill lands in an open
    started = time.monotonic()
    for round_no in range(ROUNDS):
        if time.monotonic() - started > TIME_BUDGET_S:
            pytest.fail(f"seed={seed}: only {round_no} rounds in {TIME_BUDGET_S} s")
        round_seed = seed * 1000 + round_no
        mode = modes[round_no]
        entry = RoundLog(mode)
        stderr_path = tmp_path / f"child-{round_no}.stderr"
        child: Child | None = None
        shutil.rmtree(killed, ignore_errors=True)
        try:
            child = Child(directory, round_seed, round_no, stderr_path)
            try:
                run_round(child, mode, rng)
            finally:
                child.stop()
            maintenance = [line for line in child.lines if line.startswith("M ")]
            if maintenance and maintenance[-1].endswith("+"):
                entry.in_maintenance = maintenance[-1][2]
            entry.tmp_files = sorted(n for n in os.listdir(directory) if n.endswith(".tmp"))
            entry.segments = sum(1 for n in os.listdir(directory) if WAL_RE.match(n))
            shutil.copytree(directory, killed)
            in_flight, entry.acked = replay_acknowledged(child.lines, model)
            entry.in_flight = len(in_flight)
            entry.tables, entry.torn_tails = check_reopened(directory, round_seed, model, in_flight,
                                                            close_flush=rng.random() < 0.5)
        except Exception as e:
            raise AssertionError(f"crash test seed={seed} round={round_no} mode={mode} failed: {e}\n"
                                 + describe(directory, killed, child, stderr_path)) from e
        logs.append(entry)
    elapsed = time.monotonic() - started

    print(f"{len(logs)} rounds in {elapsed:.1f} s")
    for i, entry in enumerate(logs):
        print(f"  round {i:2}: {entry.mode:11} acked {entry.acked:5}  in flight {entry.in_flight}  "
              f"killed in maintenance {entry.in_maintenance or '-'}  segments {entry.segments}  "
              f"tmp files {entry.tmp_files}  "
              f"tables {entry.tables}  torn tails {entry.torn_tails}")
    assert sum(e.acked for e in logs) > 10 * ROUNDS, "the child hardly wrote anything"


# -- the commit log's torn tail -----------------------------------------------------------------------

BASE = {b"k%02d" % i: b"a%02d" % i for i in range(20)}
LAST_OPS: dict[str, tuple[bytes, bytes | None]] = {
    "overwrite": (b"k07", b"b07-overwritten"),
    "new-key": (b"k99", b"n99-new"),
    "delete": (b"k03", None),
}
# damage -> (the last record survives?, how to damage the segment given the last record's start and end)
DAMAGE: dict[str, tuple[bool, Callable[[bytearray, int, int], bytearray]]] = {
    "cut-in-frame": (False, lambda d, s, e: d[: s + 3]),
    "cut-in-payload": (False, lambda d, s, e: d[: (s + e) // 2]),
    "cut-last-byte": (False, lambda d, s, e: d[: e - 1]),
    "flip-in-payload": (False, lambda d, s, e: flipped(d, e - 1)),
    "flip-in-length": (False, lambda d, s, e: flipped(d, s + 4)),
    "flip-in-crc": (False, lambda d, s, e: flipped(d, s)),
    "garbage-after": (True, lambda d, s, e: d + random.Random(7).randbytes(40)),
    "zeros-after": (True, lambda d, s, e: d + bytes(4096)),
}


def flipped(data: bytearray, at: int) -> bytearray:
    out = bytearray(data)
    out[at] ^= 0xFF
    return out


def record_spans(data: bytes | bytearray) -> list[tuple[int, int]]:
    """(start, end) of each record after the segment header (the framing of `record`)."""
    spans, pos = [], len(SEGMENT_MAGIC)
    while pos < len(data):
        (length,) = struct.unpack_from("<I", data, pos + 4)
        spans.append((pos, pos + record.FRAME_SIZE + length))
        pos += record.FRAME_SIZE + length
    assert pos == len(data)
    return spans


def write_then_close_unflushed(directory: Path, last: tuple[bytes, bytes | None]) -> Path:
    """Acknowledged writes left only in the commit log; returns the segment holding them."""
    engine = Engine.open(str(directory), EngineOptions(durability=Durability.SYNC))
    for k, v in BASE.items():
        engine.put(k, v)
    engine.wait_durable(engine.write(*last))
    engine.close(flush=False)
    segments = list_segments(str(directory))
    assert not [n for n in os.listdir(directory) if n.endswith(".sst")], "expected no table yet"
    return directory / segment_name(segments[-1])


def contents(engine: Engine) -> dict[bytes, bytes]:
    scanned = dict(engine.scan())
    assert scanned == {k: v for k in [*BASE, *(k for k, _ in LAST_OPS.values())]
                       if (v := engine.get(k)) is not None}
    return scanned


@pytest.mark.parametrize("last_op", sorted(LAST_OPS))
@pytest.mark.parametrize("damage", sorted(DAMAGE))
def test_torn_log_tail_is_cut_and_reported(tmp_path: Path, caplog: pytest.LogCaptureFixture,
                                           damage: str, last_op: str) -> None:
    directory = tmp_path / "db"
    last = LAST_OPS[last_op]
    segment = write_then_close_unflushed(directory, last)
    data = bytearray(segment.read_bytes())
    start, end = record_spans(data)[-1]
    survives, damage_fn = DAMAGE[damage]
    segment.write_bytes(damage_fn(data, start, end))
    keep = tmp_path / "segment-link"
    os.link(segment, keep)  # the engine deletes the segment after recovery; the link shows what it did first

    caplog.set_level(logging.WARNING, logger="ringkv.storage")
    expected = dict(BASE)
    if survives:
        if last[1] is None:
            del expected[last[0]]
        else:
            expected[last[0]] = last[1]
    with Engine.open(str(directory)) as engine:
        assert contents(engine) == expected
        assert engine.stats.torn_tails_recovered == 1
    assert keep.stat().st_size == (end if survives else start), "the torn tail was not truncated away"
    warnings = [r.getMessage() for r in caplog.records if r.levelno == logging.WARNING]
    assert any("torn tail" in w and str(segment) in w for w in warnings), warnings
    with Engine.open(str(directory)) as engine:
        assert contents(engine) == expected
        assert engine.stats.torn_tails_recovered == 0
    check_no_stray_files(directory)


def test_torn_record_in_a_sealed_segment_is_an_error(tmp_path: Path) -> None:
    """Only the last segment can be torn by a crash; damage in an earlier one must not drop data silently."""
    directory = tmp_path / "db"
    segment = write_then_close_unflushed(directory, LAST_OPS["overwrite"])
    data = segment.read_bytes()
    start, end = record_spans(data)[len(BASE) // 2]
    segment.write_bytes(data[:start] + bytes(flipped(bytearray(data[start:end]), 10)) + data[end:])
    later = list_segments(str(directory))[-1] + 1
    (directory / segment_name(later)).write_bytes(SEGMENT_MAGIC)
    before = sorted((n, (directory / n).stat().st_size) for n in os.listdir(directory))
    with pytest.raises(CorruptionError) as err:
        Engine.open(str(directory)).close()
    assert err.value.path == str(segment) and str(segment) in str(err.value)
    assert sorted((n, (directory / n).stat().st_size) for n in os.listdir(directory)) == before


def test_torn_segment_header_is_cut(tmp_path: Path, caplog: pytest.LogCaptureFixture) -> None:
    """A crash while a segment is created can leave part of its header; that is a torn tail too."""
    directory = tmp_path / "db"
    with Engine.open(str(directory)) as engine:
        engine.put(b"k", b"v")
    (directory / segment_name(1000)).write_bytes(SEGMENT_MAGIC[:3])
    caplog.set_level(logging.WARNING, logger="ringkv.storage")
    with Engine.open(str(directory)) as engine:
        assert engine.stats.torn_tails_recovered == 1
        assert dict(engine.scan()) == {b"k": b"v"}
    assert any("incomplete segment header" in r.getMessage() for r in caplog.records)
    check_no_stray_files(directory)


# -- SSTables with a flipped byte ----------------------------------------------------------------------

_FOOTER = struct.Struct("<QIQIQQQQHHI8s")


@dataclass(frozen=True)
class Table:
    path: Path
    table_id: int
    filter_offset: int
    blocks: list[tuple[int, int, list[bytes]]]  # offset, length, the keys in the block
    values: dict[bytes, bytes]


def read_layout(path: Path, values: dict[bytes, bytes]) -> Table:
    """Block offsets and which keys each block holds, from the footer and index (format in `sstable`)."""
    data = path.read_bytes()
    f_off, _f_len, i_off, i_len, *_ = _FOOTER.unpack_from(data, len(data) - _FOOTER.size)
    index = data[i_off : i_off + i_len]
    (first_len,) = struct.unpack_from("<I", index, 0)
    pos, (count,) = 4 + first_len, struct.unpack_from("<I", index, len(index) - 8)
    keys = sorted(values)
    blocks: list[tuple[int, int, list[bytes]]] = []
    for _ in range(count):
        (klen,) = struct.unpack_from("<I", index, pos)
        last_key = index[pos + 4 : pos + 4 + klen]
        off, length = struct.unpack_from("<QI", index, pos + 4 + klen)
        pos += 4 + klen + 12
        in_block = [k for k in keys if k <= last_key and (not blocks or k > blocks[-1][2][-1])]
        blocks.append((off, length, in_block))
    assert sum(len(b[2]) for b in blocks) == len(keys)
    return Table(path, int(path.name[:10]), f_off, blocks, values)


@pytest.fixture
def table(tmp_path: Path) -> Table:
    """One SSTable of 300 keys in 1 KiB blocks, flushed and closed."""
    rng = random.Random(1)
    values = {b"key-%04d" % i: b"value-%04d-" % i + rng.randbytes(rng.randrange(10, 80)) for i in range(300)}
    with Engine.open(str(tmp_path / "db"), EngineOptions(block_bytes=1024)) as engine:
        for k, v in values.items():
            engine.put(k, v)
        engine.flush()
    (path,) = (tmp_path / "db").glob("*.sst")
    layout = read_layout(path, values)
    assert len(layout.blocks) > 10
    return layout


@contextlib.contextmanager
def flipped_byte(path: Path, at: int) -> Iterator[None]:
    """Invert the byte at `at` for the duration of the block."""
    with open(path, "r+b") as f:
        f.seek(at)
        original = f.read(1)[0]
        f.seek(at)
        f.write(bytes([original ^ 0xFF]))
    try:
        yield
    finally:
        with open(path, "r+b") as f:
            f.seek(at)
            f.write(bytes([original]))


def test_sstable_flipped_data_byte_fails_that_block_only(table: Table) -> None:
    b = len(table.blocks) // 2
    off, length, damaged = table.blocks[b]
    after = table.blocks[b + 1][2][0]
    for at in (off, off + length // 2, off + length - 8, off + length - 1):  # entry, middle, count, crc
        with flipped_byte(table.path, at), Engine.open(str(table.path.parent)) as engine:
            for k in damaged:
                with pytest.raises(CorruptionError) as err:
                    engine.get(k)
                assert err.value.path == str(table.path) and str(table.path) in str(err.value)
            for i, (_, _, keys) in enumerate(table.blocks):
                if i != b:
                    for k in (keys[0], keys[-1]):
                        assert engine.get(k) == table.values[k]
            with pytest.raises(CorruptionError):
                list(engine.scan())
            assert dict(engine.scan(start=after)) == {k: v for k, v in table.values.items() if k >= after}


def test_sstable_every_byte_of_a_data_block_is_checked(table: Table) -> None:
    b = len(table.blocks) // 3
    off, length, damaged = table.blocks[b]
    neighbour = table.blocks[b + 1][2][0]
    for at in range(off, off + length):
        with flipped_byte(table.path, at):
            reader = SSTableReader(str(table.path), table.table_id)
            try:
                for k in damaged:
                    with pytest.raises(CorruptionError, match=re.escape(str(table.path))):
                        reader.get(k)
                entry = reader.get(neighbour)
                assert entry is not None and entry.value == table.values[neighbour]
            finally:
                reader.close()


def test_sstable_flipped_filter_index_or_footer_byte_fails_open(table: Table) -> None:
    directory = table.path.parent
    size = table.path.stat().st_size
    before = sorted(os.listdir(directory))
    missed = []
    for at in range(table.filter_offset, size):
        with flipped_byte(table.path, at):
            try:
                Engine.open(str(directory)).close()
            except CorruptionError as e:
                if e.path != str(table.path) or str(table.path) not in str(e):
                    missed.append((at, str(e)))
            else:
                missed.append((at, "opened"))
        assert sorted(os.listdir(directory)) == before, "a failed open changed the directory"
    assert not missed, f"{len(missed)} of {size - table.filter_offset} flips not reported: {missed[:5]}"
    data = table.path.read_bytes()
    try:
        table.path.write_bytes(data[:-1])
        with pytest.raises(CorruptionError, match=re.escape(str(table.path))):
            Engine.open(str(directory))
    finally:
        table.path.write_bytes(data)
