"""The nemesis schedule (pure): reproducible from its seed, inside the workload, churn only when asked."""

from __future__ import annotations

import itertools

from hypothesis import given, settings
from hypothesis import strategies as st

from tests.faults import nemesis


@settings(max_examples=200, deadline=None)
@given(seed=st.integers(0, 2**31), duration=st.floats(20.0, 600.0), churn=st.booleans())
def test_schedules_are_reproducible_and_fit_the_workload(seed: int, duration: float, churn: bool) -> None:
    kinds = nemesis.WITH_CHURN if churn else nemesis.KINDS
    events = nemesis.schedule(seed, 5, duration, kinds=kinds)
    assert events == nemesis.schedule(seed, 5, duration, kinds=kinds)
    for before, after in itertools.pairwise(events):
        assert after.at_s >= before.at_s + before.duration_s + nemesis.GAP_S[0] - 1e-6
    for event in events:
        assert event.kind in kinds
        assert event.at_s + event.duration_s <= duration - nemesis.TAIL_S + 1e-6
        if event.kind == "churn":
            assert event.duration_s == nemesis.CHURN_S and len(event.nodes) == 1


def test_the_default_schedule_has_no_churn_and_long_runs_with_churn_have_some() -> None:
    assert all(e.kind != "churn" for seed in range(20) for e in nemesis.schedule(seed, 5, 300.0))
    assert any(e.kind == "churn" for e in nemesis.schedule(1, 5, 300.0, kinds=nemesis.WITH_CHURN))
