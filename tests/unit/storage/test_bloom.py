"""Bloom filters: no false negatives, the promised false-positive rate, the documented format."""

from __future__ import annotations

import math
import struct

import mmh3
import pytest
from hypothesis import given
from hypothesis import strategies as st

from ringkv.storage.bloom import BloomFilter


@given(st.sets(st.binary(max_size=24), max_size=300), st.sampled_from([1.0, 4.0, 10.0, 16.0]))
def test_no_false_negatives(keys: set[bytes], bits_per_key: float) -> None:
    bloom = BloomFilter.for_keys(len(keys), bits_per_key)
    bloom.add_many(keys)
    assert all(bloom.may_contain(k) for k in keys)
    reloaded = BloomFilter.from_bytes(bloom.to_bytes())
    assert all(reloaded.may_contain(k) for k in keys)


def test_false_positive_rate_at_ten_bits_per_key() -> None:
    n = 10_000
    bloom = BloomFilter.for_keys(n, 10.0)
    assert bloom.num_probes == 7
    bloom.add_many(b"present-%d" % i for i in range(n))
    trials = 20_000
    false_positives = sum(bloom.may_contain(b"absent-%d" % i) for i in range(trials))
    assert false_positives / trials < 0.02


def test_add_one_at_a_time_equals_add_many() -> None:
    keys = [b"k%d" % i for i in range(100)]
    one, many = BloomFilter.for_keys(100), BloomFilter.for_keys(100)
    for k in keys:
        one.add(k)
    many.add_many(keys)
    assert one.to_bytes() == many.to_bytes()


def test_probe_positions_follow_the_documented_format() -> None:
    """Another implementation of the format (a tool, a port) must find the same bits set."""
    keys = [b"", b"a", b"ringkv", b"\xff" * 33] + [b"key-%d" % i for i in range(200)]
    bloom = BloomFilter.for_keys(len(keys), 10.0)
    bloom.add_many(keys)
    expected = bytearray((bloom.num_bits + 7) // 8)
    for key in keys:
        h1, h2 = mmh3.hash64(key, 0x52696E67, x64arch=True, signed=False)
        for i in range(round(10.0 * math.log(2))):
            p = (h1 + i * h2) % bloom.num_bits
            expected[p // 8] |= 1 << (p % 8)
    assert bloom.bits == expected


def test_serialized_round_trip() -> None:
    bloom = BloomFilter.for_keys(500, 8.0)
    bloom.add_many(b"%d" % i for i in range(500))
    data = bloom.to_bytes()
    num_bits, num_probes = struct.unpack_from("<QB", data)
    assert (num_bits, num_probes) == (bloom.num_bits, bloom.num_probes)
    assert len(data) == 9 + (num_bits + 7) // 8
    copy = BloomFilter.from_bytes(data)
    assert (copy.num_bits, copy.num_probes, copy.bits) == (bloom.num_bits, bloom.num_probes, bloom.bits)
    assert copy.to_bytes() == data


def test_sizes_are_clamped_to_sane_values() -> None:
    tiny = BloomFilter.for_keys(0, 10.0)
    assert tiny.num_bits >= 64 and 1 <= tiny.num_probes <= 30
    tiny.add(b"x")
    assert tiny.may_contain(b"x")


@pytest.mark.parametrize(
    "data",
    [
        b"",
        b"\x40\x00\x00\x00\x00\x00\x00",  # shorter than the header
        struct.pack("<QB", 63, 7) + b"\x00" * 8,  # fewer than 64 bits
        struct.pack("<QB", 64, 0) + b"\x00" * 8,  # no probes
        struct.pack("<QB", 128, 7) + b"\x00" * 15,  # bits shorter than num_bits says
        struct.pack("<QB", 128, 7) + b"\x00" * 17,  # bits longer than num_bits says
        struct.pack("<QB", 2**64 - 1, 7),
    ],
)
def test_malformed_bytes_raise_value_error(data: bytes) -> None:
    with pytest.raises(ValueError):
        BloomFilter.from_bytes(data)
