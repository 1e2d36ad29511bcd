"""Worker replacement: a worker below the threshold is retired, a spare takes its place and the retired
worker's open tasks go to the others; healthy pools are left alone."""

from __future__ import annotations

import pytest
from hypothesis import given
from hypothesis import strategies as st

from p2p.core.performance import WorkerPerformance
from p2p.core.replacement import ReplacementPolicy, WorkerPool


def work(pool: WorkerPool, latencies: dict[int, float], rounds: int, now: float, ok: bool = True) -> float:
    """Every active worker finishes `rounds` tasks, each taking its latency; returns the time after."""
    for n in range(rounds):
        for worker in pool.active:
            task = f"{worker}-{now}-{n}"
            pool.performance.assigned(worker, task, now)
            pool.completed(worker, task, ok, now + latencies.get(worker, 0.1))
        now += max(latencies.get(w, 0.1) for w in pool.active)
    return now


def test_a_healthy_pool_is_left_alone():
    pool = WorkerPool(active=[1, 2, 3], spares=[4], now=0.0)
    now = work(pool, {1: 0.1, 2: 0.12, 3: 0.09}, 5, 0.0)
    assert pool.review(now) == []
    assert pool.active == (1, 2, 3) and pool.spares == (4,)


def test_a_slowed_worker_is_replaced_by_the_spare_and_its_open_tasks_go_to_the_others():
    pool = WorkerPool(active=[1, 2, 3], spares=[4], now=0.0)
    now = work(pool, {1: 0.1, 2: 0.1, 3: 1.0}, 5, 0.0)
    pool.performance.assigned(3, "open-a", now)
    pool.performance.assigned(3, "open-b", now)
    pool.heard(4, now)
    [event] = pool.review(now + 0.01)
    assert event.retired == 3 and event.replacement == 4
    assert "latency" in event.reason and "the median" in event.reason
    assert [task for task, _ in event.reassigned] == ["open-a", "open-b"]
    assert {worker for _, worker in event.reassigned} <= {1, 2, 4}
    assert len({worker for _, worker in event.reassigned}) == 2  # spread: in-flight counts rank
    assert pool.active == (1, 2, 4) and pool.spares == () and pool.retired == {3}
    # the retired worker's late results are not counted as its work any more
    assert pool.completed(3, "open-a", True, now + 0.5) is None


def test_a_worker_that_stops_finishing_is_judged_by_its_oldest_open_task():
    pool = WorkerPool(active=[1, 2, 3], spares=[4], now=0.0)
    now = work(pool, {1: 0.1, 2: 0.1, 3: 0.1}, 5, 0.0)
    pool.performance.assigned(3, "stuck", now)
    assert pool.review(now + 0.2) == []  # 0.2 s old: not yet 3x the median
    pool.heard(3, now + 0.5)  # alive (heartbeats) but not finishing
    [event] = pool.review(now + 0.5)
    assert event.retired == 3 and event.reassigned[0][0] == "stuck"


def test_a_failing_worker_is_replaced():
    pool = WorkerPool(active=[1, 2], spares=[3], now=0.0, policy=ReplacementPolicy(min_success=0.5))
    now = work(pool, {1: 0.1, 2: 0.1}, 3, 0.0)
    for n in range(5):
        pool.performance.assigned(2, f"f{n}", now)
        pool.completed(2, f"f{n}", False, now + 0.1)
    [event] = pool.review(now + 0.1)
    assert event.retired == 2 and event.replacement == 3 and "success rate" in event.reason


def test_a_slow_worker_is_kept_when_there_is_no_spare():
    pool = WorkerPool(active=[1, 2, 3], now=0.0)
    now = work(pool, {1: 0.1, 2: 0.1, 3: 1.0}, 5, 0.0)
    assert pool.review(now) == [] and pool.active == (1, 2, 3)


def test_a_silent_worker_is_retired_even_without_a_spare():
    perf = WorkerPerformance(stale_after=5.0)
    pool = WorkerPool(active=[1, 2], now=0.0, performance=perf)
    pool.performance.assigned(2, "lost", 0.0)
    pool.heard(1, 6.0)
    [event] = pool.review(6.0)
    assert event.retired == 2 and event.replacement is None and "silent" in event.reason
    assert event.reassigned == (("lost", 1),)
    assert pool.active == (1,)


def test_the_last_silent_worker_leaves_its_tasks_unassigned():
    pool = WorkerPool(active=[1], now=0.0, performance=WorkerPerformance(stale_after=5.0))
    pool.performance.assigned(1, "t", 0.0)
    [event] = pool.review(10.0)
    assert event.reassigned == () and event.unassigned == ("t",) and pool.active == ()
    assert pool.assign("next", 10.0) is None


def test_replacements_for_slowness_wait_for_the_cooldown():
    pool = WorkerPool(active=[1, 2, 3, 4], spares=[5, 6], now=0.0, policy=ReplacementPolicy(cooldown=10.0))
    now = work(pool, {1: 0.1, 2: 0.1, 3: 1.0, 4: 2.0}, 5, 0.0)
    pool.heard(5, now)
    pool.heard(6, now)
    [first] = pool.review(now)
    assert first.retired == 4  # the furthest below the threshold goes first
    assert pool.review(now + 1.0) == []
    [second] = pool.review(now + 10.0)
    assert second.retired == 3


def test_the_spare_heard_most_recently_is_chosen_and_silent_spares_are_not():
    perf = WorkerPerformance(stale_after=5.0)
    pool = WorkerPool(active=[1, 2, 3], spares=[4, 5], now=0.0, performance=perf)
    now = work(pool, {1: 0.1, 2: 0.1, 3: 1.0}, 5, 0.0)
    pool.heard(5, now)  # 4 was last heard at 0.0, more than stale_after ago
    for w in (1, 2, 3):
        pool.heard(w, now + 5.5)
    pool.heard(5, now + 5.5)
    [event] = pool.review(now + 5.5)
    assert event.replacement == 5


def test_assign_picks_the_best_active_worker_only():
    pool = WorkerPool(active=[1, 2], spares=[3], now=0.0)
    work(pool, {1: 0.5, 2: 0.1}, 3, 0.0)
    assert pool.assign("x", 2.0) == 2
    assert pool.performance.in_flight(2)[0][0] == "x"


def test_a_retired_worker_can_come_back_as_a_spare():
    pool = WorkerPool(active=[1, 2, 3], spares=[4], now=0.0)
    now = work(pool, {1: 0.1, 2: 0.1, 3: 1.0}, 5, 0.0)
    pool.review(now)
    pool.add_spare(3, now)
    assert pool.spares == (3,) and 3 not in pool.retired
    pool.remove(3)
    assert pool.spares == ()
    pool.add_spare(5, now)
    pool.add_active(5, now)  # a spare promoted by the program
    assert 5 in pool.active and pool.spares == ()


def test_bad_policies_are_refused():
    with pytest.raises(ValueError):
        ReplacementPolicy(slower_than=1.0)
    with pytest.raises(ValueError):
        ReplacementPolicy(min_results=0)


@given(
    st.lists(
        st.tuples(st.integers(1, 8), st.sampled_from(["assign", "done", "fail", "heard", "review"])),
        max_size=200,
    )
)
def test_a_worker_is_never_both_active_and_spare_and_no_task_is_lost(events):
    pool = WorkerPool(
        active=[1, 2, 3], spares=[4, 5], now=0.0, performance=WorkerPerformance(stale_after=3.0)
    )
    now = 0.0
    open_tasks: set[str] = set()
    for n, (worker, kind) in enumerate(events):
        now += 0.2
        if kind == "assign":
            chosen = pool.assign(f"t{n}", now)
            if chosen is not None:
                open_tasks.add(f"t{n}")
        elif kind == "heard":
            pool.heard(worker, now)
        elif kind == "review":
            for event in pool.review(now):
                open_tasks -= set(event.unassigned)
        else:
            for task, _ in pool.performance.in_flight(worker)[:1]:
                pool.completed(worker, task, kind == "done", now)
                open_tasks.discard(task)
        assert not set(pool.active) & set(pool.spares)
        assert not (set(pool.active) | set(pool.spares)) & pool.retired
        held = {t for w in pool.active for t, _ in pool.performance.in_flight(w)}
        assert open_tasks == held
