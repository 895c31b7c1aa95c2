"""`RecentRequests`: requests per second and p99 over the last `WINDOW_S` whole seconds (the current one left
out), slots reused after wrap-around, p99 as a bucket's upper bound; and a brute-force oracle over random
observations."""

from __future__ import annotations

import bisect
import math

from hypothesis import given
from hypothesis import strategies as st

from ringkv.net.recent import BUCKETS, SLOTS, WINDOW_S, KindSummary, RecentRequests

FAST, SLOW = 0.0008, 0.2  # in the buckets ending at 0.001 and 0.25
T0 = 1000


def test_empty_window() -> None:
    assert RecentRequests().summary(T0 + 0.5) == {"read": KindSummary(0.0, None, 0),
                                                  "write": KindSummary(0.0, None, 0)}


def test_the_current_second_is_left_out() -> None:
    recent = RecentRequests()
    recent.observe("read", FAST, T0 + 0.2)
    assert recent.summary(T0 + 0.99)["read"].requests == 0
    assert recent.summary(T0 + 1.0)["read"] == KindSummary(1 / WINDOW_S, 0.001, 1)


def test_rate_over_ten_whole_seconds() -> None:
    recent = RecentRequests()
    for second in range(T0 - WINDOW_S, T0):
        for k in range(5):
            recent.observe("write", FAST, second + k / 5)
    recent.observe("write", FAST, T0 + 0.1)  # the current second: not counted
    summary = recent.summary(T0 + 0.5)
    assert summary["write"] == KindSummary(5.0, 0.001, 50)
    assert summary["read"] == KindSummary(0.0, None, 0)


def test_old_requests_drop_out() -> None:
    recent = RecentRequests()
    recent.observe("read", FAST, T0 + 0.5)
    recent.observe("read", FAST, T0 + 1.5)
    assert recent.summary(T0 + WINDOW_S + 0.99)["read"].requests == 2
    assert recent.summary(T0 + WINDOW_S + 1)["read"].requests == 1
    assert recent.summary(T0 + WINDOW_S + 2)["read"] == KindSummary(0.0, None, 0)


def test_a_reused_slot_starts_afresh() -> None:
    recent = RecentRequests()
    for _ in range(3):
        recent.observe("read", FAST, T0 + 0.5)
    recent.observe("write", SLOW, T0 + 0.6)
    recent.observe("read", SLOW, T0 + SLOTS + 0.5)  # the same slot, SLOTS seconds later
    summary = recent.summary(T0 + SLOTS + 1)
    assert summary["read"] == KindSummary(1 / WINDOW_S, 0.25, 1)
    assert summary["write"].requests == 0


def test_p99_is_the_upper_bound_of_its_bucket() -> None:
    recent = RecentRequests()
    for k in range(100):
        recent.observe("read", SLOW if k == 50 else FAST, T0 + k / 100)
        recent.observe("write", SLOW if k in (10, 60) else FAST, T0 + k / 100)
    summary = recent.summary(T0 + 1)
    assert summary["read"].p99_s == 0.001  # 99 fast, 1 slow
    assert summary["write"].p99_s == 0.25  # 98 fast, 2 slow


def test_bucket_bounds_are_inclusive_and_the_last_bucket_is_open() -> None:
    for bound in BUCKETS:
        recent = RecentRequests()
        recent.observe("read", bound, T0)
        assert recent.summary(T0 + 1)["read"].p99_s == bound
    recent = RecentRequests()
    recent.observe("read", 30.0, T0)
    assert recent.summary(T0 + 1)["read"].p99_s == BUCKETS[-1]


def test_other_kinds_are_summarised_too() -> None:
    recent = RecentRequests()
    recent.observe("scan", SLOW, T0)
    summary = recent.summary(T0 + 1)
    assert summary["scan"] == KindSummary(1 / WINDOW_S, 0.25, 1)
    assert set(summary) == {"read", "write", "scan"}


# --- against a brute-force oracle ---------------------------------------------------------------------------

latencies = st.one_of(st.sampled_from(BUCKETS), st.floats(0, 5, allow_nan=False))
observations = st.lists(st.tuples(st.floats(0, 4), latencies, st.sampled_from(["read", "write", "scan"])),
                        max_size=300)


@given(observations, st.lists(st.floats(0, 2 * SLOTS), min_size=1, max_size=4))
def test_matches_the_oracle(steps: list[tuple[float, float, str]], laters: list[float]) -> None:
    recent = RecentRequests()
    seen: list[tuple[float, float, str]] = []
    now = float(T0)
    for gap, seconds, kind in steps:  # times never decrease
        now += gap
        recent.observe(kind, seconds, now)
        seen.append((now, seconds, kind))
    for later in sorted(laters):
        at = now + later
        summary = recent.summary(at)
        for kind in ("read", "write", "scan"):
            window = sorted(s for t, s, k in seen if k == kind and int(at) - WINDOW_S <= int(t) < int(at))
            got = summary.get(kind, KindSummary(0.0, None, 0))
            assert got.requests == len(window)
            assert got.rate_per_s == len(window) / WINDOW_S
            if not window:
                assert got.p99_s is None
                continue
            true_p99 = window[math.ceil(0.99 * len(window)) - 1]  # nearest rank
            bucket = bisect.bisect_left(BUCKETS, true_p99)
            assert got.p99_s == BUCKETS[min(bucket, len(BUCKETS) - 1)]
            assert got.p99_s >= (BUCKETS[bucket - 1] if bucket else 0.0)  # at least its bucket's lower bound
            assert got.p99_s >= true_p99 or true_p99 > BUCKETS[-1]  # an upper bound, unless past the last
