"""The manifest: atomic store and load, and damage detected rather than trusted."""

from __future__ import annotations

import json
import os
from pathlib import Path

import pytest

from ringkv.errors import CorruptionError
from ringkv.storage import manifest
from ringkv.storage.manifest import ManifestState


def test_round_trip(tmp_path: Path) -> None:
    state = ManifestState(tables=(9, 4, 2), next_file_id=11, log_floor=10, last_seq=12345)
    manifest.store(str(tmp_path), state)
    assert manifest.load(str(tmp_path)) == state
    newer = ManifestState(tables=(12,), next_file_id=14, log_floor=13, last_seq=99999)
    manifest.store(str(tmp_path), newer)  # replaced whole
    assert manifest.load(str(tmp_path)) == newer
    assert os.listdir(tmp_path) == [manifest.FILE_NAME]  # no temporary left behind


def test_default_state_round_trips(tmp_path: Path) -> None:
    manifest.store(str(tmp_path), ManifestState())
    assert manifest.load(str(tmp_path)) == ManifestState()


def test_missing_manifest_is_none(tmp_path: Path) -> None:
    assert manifest.load(str(tmp_path)) is None


def _doc(tmp_path: Path) -> dict[str, object]:
    manifest.store(str(tmp_path), ManifestState(tables=(3, 1), next_file_id=5, log_floor=4, last_seq=77))
    doc: dict[str, object] = json.loads((tmp_path / manifest.FILE_NAME).read_bytes())
    return doc


def _write(tmp_path: Path, doc: object) -> None:
    (tmp_path / manifest.FILE_NAME).write_text(json.dumps(doc))


def test_tampered_crc_is_corruption(tmp_path: Path) -> None:
    doc = _doc(tmp_path)
    doc["crc"] = int(str(doc["crc"])) ^ 1
    _write(tmp_path, doc)
    with pytest.raises(CorruptionError) as err:
        manifest.load(str(tmp_path))
    assert err.value.path == str(tmp_path / manifest.FILE_NAME)


def test_tampered_state_is_corruption(tmp_path: Path) -> None:
    doc = _doc(tmp_path)
    state = doc["state"]
    assert isinstance(state, dict)
    state["tables"] = [3]  # a table silently dropped from the list
    _write(tmp_path, doc)
    with pytest.raises(CorruptionError):
        manifest.load(str(tmp_path))


def test_unknown_format_is_corruption(tmp_path: Path) -> None:
    doc = _doc(tmp_path)
    doc["format"] = 2
    _write(tmp_path, doc)
    with pytest.raises(CorruptionError):
        manifest.load(str(tmp_path))


@pytest.mark.parametrize(
    "raw",
    [
        b"",
        b"\xff\xfe garbage \x00",
        b'{"format":1,"crc":0',
        b"[]",
        b'"state"',
        b'{"format":1,"crc":0}',
        b'{"format":1,"crc":0,"state":{"tables":5,"next_file_id":1,"log_floor":0,"last_seq":0}}',
        b'{"format":1,"crc":0,"state":{"tables":[{}],"next_file_id":1,"log_floor":0,"last_seq":0}}',
        b'{"format":1,"crc":0,"state":{"tables":[],"next_file_id":"x","log_floor":0,"last_seq":0}}',
        b'{"format":1,"crc":0,"state":{"tables":[]}}',
    ],
)
def test_garbage_is_corruption(tmp_path: Path, raw: bytes) -> None:
    (tmp_path / manifest.FILE_NAME).write_bytes(raw)
    with pytest.raises(CorruptionError):
        manifest.load(str(tmp_path))
