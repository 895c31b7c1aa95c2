"""The manifest: which SSTables are live, in which order, and which commit-log segments still matter.

Format: one JSON file `MANIFEST`, replaced atomically (written aside, fsynced, renamed, directory fsynced)::

    {"format": 1, "crc": <crc32 of the canonical JSON of "state">,
     "state": {"tables": [newest-first table ids], "next_file_id": int, "log_floor": int, "last_seq": int}}

- `log_floor`: every commit-log segment with a smaller id is already in a table and may be deleted.
- `last_seq`: the highest sequence number any live table holds or any earlier manifest recorded (it never
  decreases, even when compaction purges the newest entry; recovery resumes numbering above it).
Any file in the directory not named by the manifest (a half-written table, a table replaced by a finished
compaction) is garbage and is deleted at open.
"""

from __future__ import annotations

import json
import os
import zlib
from dataclasses import dataclass, field

from ringkv.errors import CorruptionError
from ringkv.storage.fsutil import write_atomically

FILE_NAME = "MANIFEST"
FORMAT = 1


@dataclass(frozen=True)
class ManifestState:
    tables: tuple[int, ...] = field(default_factory=tuple)
    next_file_id: int = 1
    log_floor: int = 0
    last_seq: int = 0


def _canonical(state: ManifestState) -> bytes:
    body = {
        "tables": list(state.tables),
        "next_file_id": state.next_file_id,
        "log_floor": state.log_floor,
        "last_seq": state.last_seq,
    }
    return json.dumps(body, sort_keys=True, separators=(",", ":")).encode()


def load(directory: str) -> ManifestState | None:
    """The stored state, or None for a fresh directory. Raises CorruptionError on a damaged manifest."""
    path = os.path.join(directory, FILE_NAME)
    try:
        with open(path, "rb") as f:
            raw = f.read()
    except FileNotFoundError:
        return None
    try:
        doc = json.loads(raw)
        st = doc["state"]
        state = ManifestState(
            tables=tuple(int(t) for t in st["tables"]),
            next_file_id=int(st["next_file_id"]),
            log_floor=int(st["log_floor"]),
            last_seq=int(st["last_seq"]),
        )
        fmt, crc = doc["format"], doc["crc"]
    except (ValueError, KeyError, TypeError) as e:
        raise CorruptionError(path, f"unreadable manifest: {e}") from None
    if fmt != FORMAT:
        raise CorruptionError(path, f"unsupported manifest format {fmt}")
    if zlib.crc32(_canonical(state)) != crc:
        raise CorruptionError(path, "manifest checksum mismatch")
    return state


def store(directory: str, state: ManifestState) -> None:
    body = _canonical(state)
    doc = b'{"format":%d,"crc":%d,"state":%s}' % (FORMAT, zlib.crc32(body), body)
    write_atomically(os.path.join(directory, FILE_NAME), doc)
