"""The checker's verdicts on recorded histories: a lost write is reported as lost, an indeterminate write that
landed is not a loss, a phantom is caught, a key that could not be read back fails the run unverified."""

from __future__ import annotations

from hypothesis import given
from hypothesis import strategies as st

from ringkv.check import analysis, report
from ringkv.check.history import History, Kind, Op, Outcome, classify


def add(key: str, element: str, outcome: Outcome, at: float = 1.0, node: str = "http://n1") -> Op:
    return Op(0, Kind.ADD, key, element, at, at + 0.01, outcome, node, 200 if outcome is Outcome.OK else 503)


def write(key: str, outcome: Outcome) -> Op:
    return Op(1, Kind.WRITE, key, key, 1.0, 1.01, outcome, "http://n2", 200 if outcome is Outcome.OK else 0)


def history(ops: list[Op], final: dict[str, set[str]], events: list[tuple[float, str]] | None = None) -> History:
    return History(ops=ops, final={k: frozenset(v) for k, v in final.items()}, events=events or [])


def test_an_acknowledged_element_missing_at_the_end_is_lost_and_names_the_events_around_it() -> None:
    h = history([add("s", "a", Outcome.OK), add("s", "b", Outcome.OK, at=10.0)], {"s": {"a"}},
                [(9.0, "isolate n3"), (40.0, "heal")])
    verdict = analysis.check_set(h)
    assert [(a.key, a.element) for a in verdict.lost] == [("s", "b")]
    assert verdict.lost[0].events == ((9.0, "isolate n3"),)
    assert not verdict.ok and not analysis.analyse(h).ok
    assert "LOST set s b" in report.table(analysis.analyse(h))


def test_an_indeterminate_write_that_landed_is_not_a_loss_nor_a_phantom() -> None:
    h = history([add("s", "a", Outcome.OK), add("s", "x", Outcome.INFO), add("s", "y", Outcome.INFO)],
                {"s": {"a", "x"}})
    verdict = analysis.check_set(h)
    assert verdict.ok
    assert (verdict.indeterminate, verdict.indeterminate_landed, verdict.lost, verdict.phantoms) == (2, 1, (), ())


def test_a_phantom_is_caught_never_attempted_or_certainly_refused() -> None:
    h = history([add("s", "a", Outcome.OK), add("s", "refused", Outcome.FAIL)], {"s": {"a", "ghost", "refused"}})
    verdict = analysis.check_set(h)
    assert sorted(a.element for a in verdict.phantoms) == ["ghost", "refused"]
    assert not verdict.ok


def test_a_key_that_could_not_be_read_back_leaves_its_writes_unverified() -> None:
    h = history([add("s", "a", Outcome.OK), add("t", "b", Outcome.OK)], {"s": {"a"}})
    h.final_unreadable.add("t")
    verdict = analysis.check_set(h)
    assert verdict.lost == () and verdict.unverified == 1 and not verdict.ok


def test_registers_lost_and_phantom() -> None:
    h = history([write("r1", Outcome.OK), write("r2", Outcome.OK), write("r3", Outcome.INFO)],
                {"r1": {"r1"}, "r2": set(), "r3": set()})
    verdict = analysis.check_register(h)
    assert [a.key for a in verdict.lost] == ["r2"] and verdict.phantoms == ()
    h = history([write("r1", Outcome.OK)], {"r1": {"r1", "other"}})
    assert [a.element for a in analysis.check_register(h).phantoms] == ["other"]


def test_availability_latency_and_fault_windows() -> None:
    ops = [Op(0, Kind.READ, "k", None, t, t + 0.01 * (i + 1), Outcome.OK if i % 4 else Outcome.INFO)
           for i, t in enumerate([0.1, 0.2, 1.1, 1.2, 2.5, 2.6, 2.7, 2.8])]
    r = analysis.analyse(History(ops=ops), fault_windows=[(2.0, 3.0)])
    assert (r.availability.requests, r.availability.succeeded) == (8, 6)
    assert r.during_faults is not None and r.during_faults.ratio == 0.75
    assert [s for s, _ in r.per_second] == [0, 1, 2]
    assert r.latency.count == 6 and round(r.latency.max_ms, 6) == 80.0
    assert report.to_json(r)["availability_during_faults"] == 0.75


@given(st.lists(st.floats(0, 1e4, allow_nan=False), min_size=1, max_size=200), st.floats(0.1, 100))
def test_nearest_rank_percentile(values: list[float], q: float) -> None:
    ordered = sorted(values)
    p = analysis.percentile(ordered, q)
    assert p in ordered
    assert sum(v <= p for v in ordered) >= q / 100 * len(ordered) - 1e-9
    assert sum(v < p for v in ordered) < q / 100 * len(ordered) + 1e-9 or p == ordered[0]


def test_http_outcomes() -> None:
    assert classify(200, write=True) is Outcome.OK
    assert classify(404, write=False) is Outcome.OK
    assert classify(400, write=True) is Outcome.FAIL
    assert classify(503, write=True) is Outcome.INFO
    assert classify(0, write=True) is Outcome.INFO  # a timeout: it may have landed
    assert classify(0, write=True, refused=True) is Outcome.FAIL  # never left
    # A node that is starting, joining, drained or stopping refuses before it does anything: not applied.
    assert classify(503, write=True, error="not_ready") is Outcome.FAIL
    assert classify(503, write=True, error="quorum_unavailable") is Outcome.INFO  # some replicas may hold it
