from __future__ import annotations

import itertools
import random

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from ringkv.cluster import failure_detector as fd
from ringkv.cluster.ids import NodeId

A = NodeId("a")
B = NodeId("b")


def beating(
    intervals: list[float], node: NodeId = A, start: float = 100.0
) -> tuple[fd.PhiAccrualFailureDetector, float]:
    """A detector that has received heartbeats at `start` and then after each of `intervals`."""
    detector = fd.PhiAccrualFailureDetector()
    now = start
    detector.heartbeat(node, now)
    for interval in intervals:
        now += interval
        detector.heartbeat(node, now)
    return detector, now


def time_to_conviction(detector: fd.PhiAccrualFailureDetector, node: NodeId, last: float) -> float:
    silence = 0.0
    while detector.is_available(node, last + silence):
        silence += 0.01
        assert silence < 120, "never convicted"
    return silence


def test_regular_heartbeats_keep_phi_low() -> None:
    detector = fd.PhiAccrualFailureDetector()
    for t in range(300):
        if t:  # just before each heartbeat is due, and a little late
            assert detector.phi(A, t - 0.01) < 0.1
            assert detector.phi(A, t + 0.5) < 0.1
        detector.heartbeat(A, float(t))


def test_silence_convicts_within_a_few_seconds() -> None:
    detector, last = beating([1.0] * 200)
    assert detector.is_available(A, last + 1.0)
    assert detector.is_available(A, last + 2.0)
    seconds = time_to_conviction(detector, A, last)
    assert 2.0 <= seconds <= 15.0
    assert detector.phi(A, last + 30) > 8


def test_a_peer_that_dies_after_its_first_heartbeat_is_convicted() -> None:
    detector, last = beating([])
    assert detector.phi(A, last) < 0.1
    assert 2.0 <= time_to_conviction(detector, A, last) <= 15.0


@pytest.mark.parametrize("seed", range(5))
def test_jittery_heartbeats_do_not_convict(seed: int) -> None:
    rng = random.Random(seed)
    # Gossip-like arrival: usually about 1 s apart, sometimes a round is missed, rarely two.
    intervals = [rng.choice([1.0, 1.0, 1.0, 2.0, 3.0]) * rng.uniform(0.7, 1.3) for _ in range(2000)]
    detector = fd.PhiAccrualFailureDetector()
    now = 0.0
    detector.heartbeat(A, now)
    for interval in intervals:
        assert detector.is_available(A, now + interval)  # checked the instant before the heartbeat lands
        now += interval
        detector.heartbeat(A, now)
    assert 2.0 <= time_to_conviction(detector, A, now) <= 15.0  # yet a real death is still caught


def test_a_gc_pause_within_the_acceptable_pause_does_not_convict() -> None:
    detector, last = beating([1.0] * 500)
    assert detector.is_available(A, last + 1.0 + detector.config.acceptable_pause_s)


def test_phi_is_monotonic_in_silence() -> None:
    detector, last = beating([random.Random(7).uniform(0.5, 1.5) for _ in range(100)])
    values = [detector.phi(A, last + k * 0.05) for k in range(600)]
    assert all(a <= b for a, b in itertools.pairwise(values))
    assert values[0] < 1e-6 < 8 < values[-1]


@settings(max_examples=200, deadline=None)
@given(
    elapsed=st.lists(st.floats(0, 1e6, allow_nan=False), min_size=2, max_size=2),
    mean=st.floats(0.01, 100),
    std=st.floats(0.01, 100),
)
def test_phi_is_finite_nonnegative_and_monotonic(elapsed: list[float], mean: float, std: float) -> None:
    low, high = sorted(elapsed)
    p_low, p_high = fd.phi(low, mean, std), fd.phi(high, mean, std)
    assert 0.0 <= p_low <= p_high < float("inf")


def test_phi_matches_the_normal_tail() -> None:
    # At the mean, half the intervals are longer: phi = -log10(0.5).
    assert fd.phi(5.0, 5.0, 1.0) == pytest.approx(0.30103, abs=1e-4)
    # Two standard deviations out, P(later) is about 0.0228.
    assert fd.phi(7.0, 5.0, 1.0) == pytest.approx(1.642, abs=0.02)


def test_state_is_per_node() -> None:
    detector = fd.PhiAccrualFailureDetector()
    for t in range(100):
        detector.heartbeat(A, float(t))
        if t < 50:
            detector.heartbeat(B, float(t))
    assert detector.is_available(A, 99.5)
    assert not detector.is_available(B, 99.5)
    assert detector.phi(NodeId("never-heard-of"), 99.5) == 0.0
    assert not detector.is_monitoring(NodeId("never-heard-of"))
    assert sorted(detector) == [A, B]


def test_remove_forgets_the_history() -> None:
    detector, last = beating([1.0] * 50)
    detector.remove(A)
    assert not detector.is_monitoring(A)
    assert detector.phi(A, last + 100) == 0.0
    detector.remove(A)  # idempotent
    detector.heartbeat(A, last + 100)  # a fresh start: bootstrapped, not a 100 s interval
    assert detector.is_available(A, last + 101)


def test_a_long_outage_is_clamped_and_does_not_slow_the_next_conviction() -> None:
    detector, last = beating([1.0] * 100)
    detector.heartbeat(A, last + 3600)  # back after an hour; unclamped, the mean would become ~37 s
    assert time_to_conviction(detector, A, last + 3600) <= 15.0


def test_the_window_is_bounded_and_adapts() -> None:
    config = fd.PhiConfig(window_size=100)
    detector = fd.PhiAccrualFailureDetector(config)
    now = 0.0
    detector.heartbeat(A, now)
    for _ in range(200):
        now += 1.0
        detector.heartbeat(A, now)
    for _ in range(200):  # the peer slows down to one heartbeat every 5 s
        now += 5.0
        detector.heartbeat(A, now)
    assert detector.is_available(A, now + 6.0)  # only 5 s intervals are remembered now


def test_out_of_order_heartbeats_and_clock_skew() -> None:
    detector, last = beating([1.0] * 20)
    detector.heartbeat(A, last - 5)  # delivered late: ignored
    assert detector.last_heartbeat(A) == last
    assert detector.phi(A, last - 10) == detector.phi(A, last)


def test_threshold_is_the_callers_choice() -> None:
    detector, last = beating([1.0] * 100)
    now = last + 4.6
    assert 1 < detector.phi(A, now) < 20
    assert detector.is_available(A, now, threshold=20)
    assert not detector.is_available(A, now, threshold=1)


def test_config_is_validated() -> None:
    with pytest.raises(ValueError):
        fd.PhiConfig(window_size=1)
    with pytest.raises(ValueError):
        fd.PhiConfig(min_std_dev_s=0)
