"""Worker performance tracking: figures a supervisor can trust, rankings that follow what workers do,
and bounded memory."""

from __future__ import annotations

import pytest
from hypothesis import given
from hypothesis import strategies as st

from p2p.core.performance import WorkerPerformance


def run_tasks(
    perf: WorkerPerformance, worker: int, latencies: list[float], start: float, ok: bool = True
) -> float:
    now = start
    for n, latency in enumerate(latencies):
        perf.assigned(worker, f"{worker}-{start}-{n}", now)
        now += latency
        assert perf.completed(worker, f"{worker}-{start}-{n}", ok, now) == pytest.approx(latency)
    return now


def test_the_faster_worker_ranks_first_and_gets_the_next_task():
    perf = WorkerPerformance()
    run_tasks(perf, 1, [0.5] * 5, 0.0)
    run_tasks(perf, 2, [0.1] * 5, 0.0)
    assert [s.worker for s in perf.ranked(3.0)] == [2, 1]
    assert perf.best(3.0) == 2
    assert perf.best(3.0, exclude=frozenset({2})) == 1
    stats = perf.stats(2, 3.0)
    assert stats.latency == pytest.approx(0.1) and stats.completed == 5 and stats.success_rate == 1.0


def test_a_busy_fast_worker_loses_to_an_idle_one():
    perf = WorkerPerformance()
    run_tasks(perf, 1, [0.2] * 3, 0.0)
    run_tasks(perf, 2, [0.1] * 3, 0.0)
    for n in range(3):
        perf.assigned(2, f"queued{n}", 1.0)  # 3 in flight: 0.1 * 4 = 0.4 > 0.2
    assert perf.best(1.0) == 1


def test_a_worker_that_starts_failing_drops_within_a_few_tasks():
    perf = WorkerPerformance(alpha=0.3)
    run_tasks(perf, 1, [0.2] * 5, 0.0)
    now = run_tasks(perf, 2, [0.1] * 5, 0.0)
    assert perf.best(now) == 2
    now = run_tasks(perf, 2, [0.1] * 4, now, ok=False)
    assert perf.best(now) == 1
    assert perf.stats(2, now).failed == 4 and perf.stats(2, now).success_rate < 0.5


def test_latency_follows_a_worker_that_slows_down():
    perf = WorkerPerformance(alpha=0.5)
    now = run_tasks(perf, 1, [0.1] * 5, 0.0)
    run_tasks(perf, 1, [1.0] * 5, now)
    assert perf.stats(1, 100.0).latency > 0.9


def test_tasks_that_never_come_back_expire_as_failures():
    perf = WorkerPerformance(task_timeout=10.0)
    perf.assigned(1, "a", 0.0)
    perf.assigned(1, "b", 5.0)
    assert perf.expire(9.0) == []
    assert perf.expire(12.0) == [(1, "a")]
    assert perf.stats(1, 12.0).failed == 1 and perf.stats(1, 12.0).in_flight == 1
    assert perf.completed(1, "a", True, 13.0) is None  # too late: it was counted as failed already
    assert perf.unknown_completions == 1


def test_silent_workers_are_not_ranked_until_heard_again():
    perf = WorkerPerformance(stale_after=10.0)
    run_tasks(perf, 1, [0.1], 0.0)
    run_tasks(perf, 2, [0.5], 0.0)
    perf.heard(2, 15.0)
    assert [s.worker for s in perf.ranked(15.0)] == [2]
    perf.heard(1, 16.0)
    assert perf.best(16.0) == 1


def test_a_new_worker_ranks_as_an_idle_typical_one():
    perf = WorkerPerformance()
    run_tasks(perf, 1, [0.2], 0.0)
    perf.assigned(1, "busy", 1.0)
    perf.heard(3, 1.0)  # no completed task yet
    assert perf.best(1.0) == 3  # the median latency with nothing in flight beats 0.2 with one in flight


def test_throughput_counts_completions_per_second_and_fades_when_idle():
    perf = WorkerPerformance(half_life=10.0)
    now = run_tasks(perf, 1, [0.5] * 40, 0.0)  # 2 tasks/s for 20 s
    assert 1.0 < perf.stats(1, now).throughput < 2.5
    assert perf.stats(1, now + 100).throughput < 0.01


@given(st.lists(st.floats(0.001, 100.0), min_size=1, max_size=50), st.floats(0.01, 1.0))
def test_latency_estimate_stays_within_what_was_measured(latencies, alpha):
    perf = WorkerPerformance(alpha=alpha)
    run_tasks(perf, 1, latencies, 0.0)
    estimate = perf.stats(1, 1e6).latency
    assert min(latencies) - 1e-9 <= estimate <= max(latencies) + 1e-9


@given(
    st.lists(
        st.tuples(
            st.integers(1, 50), st.sampled_from(["assign", "done", "fail", "heard"]), st.integers(0, 30)
        ),
        max_size=300,
    )
)
def test_memory_is_bounded_whatever_arrives(events):
    perf = WorkerPerformance(max_workers=8, max_in_flight=5)
    now = 0.0
    for worker, kind, task in events:
        now += 0.1
        if kind == "assign":
            perf.assigned(worker, str(task), now)
        elif kind == "heard":
            perf.heard(worker, now)
        else:
            perf.completed(worker, str(task), kind == "done", now)
        assert len(perf) <= 8
        assert all(s.in_flight <= 5 and 0.0 <= s.success_rate <= 1.0 for s in perf.ranked(now))


def test_bad_parameters_are_refused():
    with pytest.raises(ValueError):
        WorkerPerformance(alpha=0)
    with pytest.raises(ValueError):
        WorkerPerformance(max_workers=0)
