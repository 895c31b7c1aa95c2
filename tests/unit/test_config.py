"""The node's configuration: a flag beats its `RINGKV_*` variable, which beats the default; malformed
variables are refused with a ValueError naming them."""

from __future__ import annotations

import argparse
import socket
from dataclasses import fields

import pytest

from ringkv import config
from ringkv.config import ENV_PREFIX, NodeConfig

STANDALONE = NodeConfig(replication_factor=1, read_quorum=1, write_quorum=1)


def test_defaults() -> None:
    assert config.parse([], {}) == STANDALONE  # no seeds: a single-node store
    assert config.parse(["--seeds", "h:1"], {}) == NodeConfig(seeds="h:1")
    cfg = NodeConfig()
    assert (cfg.data_dir, cfg.host, cfg.port, cfg.durability) == ("./data", "127.0.0.1", 8080, "sync")
    assert cfg.max_request_bytes == 64 * 1024


def test_environment_fills_in() -> None:
    cfg = config.parse([], {"RINGKV_DATA_DIR": "/var/lib/ringkv", "RINGKV_PORT": "9000",
                            "RINGKV_MEMTABLE_MB": "0.5", "RINGKV_DURABILITY": "batch",
                            "RINGKV_NODE_ID": "node-7", "RINGKV_LOG_FORMAT": "json",
                            "RINGKV_SHUTDOWN_TIMEOUT_S": "3"})
    assert cfg.data_dir == "/var/lib/ringkv" and cfg.port == 9000 and cfg.memtable_mb == 0.5
    assert cfg.durability == "batch" and cfg.node_id == "node-7" and cfg.log_format == "json"
    assert cfg.shutdown_timeout_s == 3.0 and isinstance(cfg.shutdown_timeout_s, float)


def test_flag_beats_environment_beats_default() -> None:
    env = {"RINGKV_PORT": "9000", "RINGKV_HOST": "10.0.0.1"}
    cfg = config.parse(["--port", "7000", "--data-dir", "/d"], env)
    assert cfg.port == 7000  # flag over environment
    assert cfg.host == "10.0.0.1"  # environment over default
    assert cfg.data_dir == "/d"  # flag over default
    assert cfg.log_level == "info"  # default


def test_unrelated_and_lowercase_variables_are_ignored() -> None:
    assert config.parse([], {"RINGKV_URL": "http://x", "ringkv_port": "1", "PORT": "2"}) == STANDALONE


def test_a_node_without_seeds_defaults_to_quorums_of_one_but_keeps_what_it_is_given() -> None:
    cfg = config.parse([], {})
    assert (cfg.replication_factor, cfg.read_quorum, cfg.write_quorum) == (1, 1, 1)
    cfg = config.parse(["--replication-factor", "3"], {"RINGKV_WRITE_QUORUM": "2"})
    assert (cfg.replication_factor, cfg.read_quorum, cfg.write_quorum) == (3, 1, 2)
    cfg = config.parse([], {"RINGKV_SEEDS": "10.0.0.1:7000"})
    assert (cfg.replication_factor, cfg.read_quorum, cfg.write_quorum) == (3, 2, 2)


def test_node_ids_may_not_contain_the_actor_separator() -> None:
    with pytest.raises(ValueError, match="node_id"):
        config.parse(["--node-id", "n1#2"], {})


def test_os_environ_is_the_default_source(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("RINGKV_PORT", "8181")
    assert config.parse([]).port == 8181


@pytest.mark.parametrize(("name", "raw"), [
    ("RINGKV_PORT", "eighty"),
    ("RINGKV_PORT", ""),
    ("RINGKV_PORT", "80.5"),
    ("RINGKV_MAX_REQUEST_BYTES", "64k"),
    ("RINGKV_MEMTABLE_MB", "lots"),
    ("RINGKV_SHUTDOWN_TIMEOUT_S", "10s"),
    ("RINGKV_DURABILITY", "sometimes"),
    ("RINGKV_LOG_FORMAT", "xml"),
    ("RINGKV_LOG_LEVEL", "verbose"),
])
def test_malformed_variable_is_a_value_error_naming_it(name: str, raw: str) -> None:
    with pytest.raises(ValueError, match=name):
        config.parse([], {name: raw})


def test_a_flag_shadows_a_malformed_variable() -> None:
    assert config.parse(["--port", "1"], {"RINGKV_PORT": "eighty"}).port == 1


@pytest.mark.parametrize("argv", [["--port", "x"], ["--durability", "sometimes"], ["--log-format", "xml"],
                                  ["--no-such-flag", "1"]])
def test_malformed_flag_is_a_usage_error(argv: list[str]) -> None:
    with pytest.raises(SystemExit) as info:
        config.parse(argv, {})
    assert info.value.code == 2


def test_every_field_has_a_flag_and_documents_its_variable() -> None:
    parser = argparse.ArgumentParser()
    config.add_arguments(parser)
    actions = {a.dest: a for a in parser._actions}
    for f in fields(NodeConfig):
        action = actions[f.name]
        assert action.option_strings == ["--" + f.name.replace("_", "-")]
        assert action.default is None  # so the environment can fill in
        assert action.help is not None and ENV_PREFIX + f.name.upper() in action.help


def test_boolean_variables() -> None:
    booleans = [f.name for f in fields(NodeConfig) if f.type == "bool"]
    if not booleans:
        pytest.skip("no boolean settings")
    name = booleans[0]
    env = ENV_PREFIX + name.upper()
    for raw, want in (("true", True), ("1", True), ("yes", True), ("false", False), ("0", False), ("off", False)):
        assert getattr(config.parse([], {env: raw}), name) is want, raw
    with pytest.raises(ValueError, match=env):
        config.parse([], {env: "maybe"})


def test_node_id_defaults_to_the_host_name() -> None:
    assert NodeConfig().effective_node_id() == socket.gethostname()
    assert NodeConfig(node_id="n1").effective_node_id() == "n1"
    assert config.parse([], {"RINGKV_NODE_ID": ""}).effective_node_id() == socket.gethostname()
