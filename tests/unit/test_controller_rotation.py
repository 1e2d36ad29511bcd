"""The controller's rotation book: refusals, one node at a time, the --all queue, timeouts, the
schedule. Time is an argument."""

from __future__ import annotations

from datetime import UTC, datetime, timedelta

import pytest

from controller.rotation import RotationBook, RotationRefused

T0 = datetime(2026, 12, 1, 12, 0, tzinfo=UTC)
NODES = [1, 2, 3, 4]


def book() -> RotationBook:
    b = RotationBook()
    for n in NODES:
        b.enrolled(n, T0)
    return b


def others(n: int) -> list[int]:
    return [m for m in NODES if m != n]


def test_one_rotation_from_request_to_commit() -> None:
    b = book()
    (r,) = b.request(2, others(2), T0)
    assert r.state == "requested" and b.requested_of(2) == r.rotation_id
    b.prepare(2, r.rotation_id or 0, "KEY")
    assert b.get(2).state == "prepared"
    b.commit(2, r.rotation_id or 0, "KEY", T0 + timedelta(seconds=3))
    done = b.get(2)
    assert (
        done.state == "idle" and done.outcome == "done" and done.key_created_at == T0 + timedelta(seconds=3)
    )
    assert b.requested_of(2) is None
    assert b.commit(2, r.rotation_id or 0, "KEY", T0) == []  # the same commit again: fine
    with pytest.raises(RotationRefused):
        b.commit(2, r.rotation_id or 0, "OTHER", T0)


@pytest.mark.parametrize(
    "case", ["itself", "neighbour", "all while one runs", "one while all runs", "all twice"]
)
def test_refusals_change_nothing(case: str) -> None:
    b = book()
    if case in ("itself", "neighbour", "all while one runs"):
        b.request(2, others(2), T0)
    else:
        b.request_all(NODES, T0)
    before = dict(b.records)
    with pytest.raises(RotationRefused) as refused:
        if case == "itself":
            b.request(2, others(2), T0)
        elif case == "neighbour":
            b.request(3, others(3), T0)
        elif case.startswith("all"):
            b.request_all(NODES, T0)
        else:
            b.request(3, others(3), T0)
    assert refused.value.status == 409
    assert b.records == before


def test_a_node_whose_neighbours_are_idle_may_rotate_while_a_far_node_does() -> None:
    b = book()
    b.request(1, [2], T0)
    b.request(4, [3], T0)  # 4 is no neighbour of 1
    assert {r.node_id for r in b.active()} == {1, 4}


def test_rotate_all_runs_one_node_at_a_time_in_order() -> None:
    b = book()
    b.request_all(NODES, T0)
    seen = []
    now = T0
    while b.active():
        (r,) = b.active()
        seen.append(r.node_id)
        assert [x.node_id for x in b.active()] == [r.node_id]
        now += timedelta(seconds=2)
        b.prepare(r.node_id, r.rotation_id or 0, f"K{r.node_id}")
        b.commit(r.node_id, r.rotation_id or 0, f"K{r.node_id}", now)
    assert seen == NODES and not b.campaign_running()
    assert all(b.get(n).outcome == "done" for n in NODES)


def test_an_offline_node_times_out_and_the_queue_moves_on() -> None:
    b = book()
    b.request_all(NODES, T0)
    assert b.tick(T0 + timedelta(seconds=30)) == []
    b.tick(T0 + timedelta(seconds=121))
    assert b.get(1).outcome == "timed_out" and b.requested_of(1) is None
    assert [r.node_id for r in b.active()] == [2]


def test_a_prepared_node_is_never_given_up() -> None:
    b = book()
    (r,) = b.request(1, others(1), T0)
    b.prepare(1, r.rotation_id or 0, "K")
    b.tick(T0 + timedelta(hours=5))
    assert b.get(1).state == "prepared"


def test_a_removed_node_moves_the_queue_on() -> None:
    b = book()
    b.request_all(NODES, T0)
    b.removed(1, T0)
    assert [r.node_id for r in b.active()] == [2]


def test_the_schedule_asks_the_oldest_key_when_nothing_rotates() -> None:
    b = RotationBook()
    b.enrolled(1, T0)
    b.enrolled(2, T0 - timedelta(days=1))
    b.enrolled(3, T0 + timedelta(hours=1))
    interval = timedelta(hours=12)
    assert b.due([1, 2, 3], T0, interval)[0].node_id == 2
    assert b.due([1, 2, 3], T0, interval) == []  # 2 is rotating
    b2 = RotationBook()
    b2.enrolled(1, T0)
    assert b2.due([1], T0 + timedelta(hours=1), interval) == []


def test_rotation_ids_are_never_reused_across_a_restart() -> None:
    b = book()
    (r,) = b.request(1, others(1), T0)
    again = RotationBook(b.records.values())  # the controller restarted
    (r2,) = again.request(4, [], T0)
    assert r2.rotation_id != r.rotation_id
