"""Worker performance, as a supervisor sees it: which workers finish tasks, how fast, how reliably, how
busy they are, and which one to give the next task. Sans-I/O: events and `now` in, figures out.

    perf.assigned(worker, task_id, now)           a task went out
    perf.completed(worker, task_id, ok, now)      it came back (ok or failed); returns its latency
    perf.expire(now)                              tasks out longer than `task_timeout` count as failed
    perf.heard(worker, now)                       any sign of life (a heartbeat, a message)
    perf.best(now) / perf.ranked(now)             whom to give the next task

Rules:
- Latency and success rate are exponentially weighted moving averages over completions (weight `alpha`
  for the newest), so a worker that slows down or starts failing drops in the ranking within a few tasks.
- Throughput is completions per second, decayed with `half_life`, so an idle worker's figure fades.
- A worker not heard from (no assignment answered, no heartbeat) within `stale_after` is not ranked.
- The expected time to finish one more task, used for ranking, is latency * (1 + tasks in flight) divided
  by the success rate: a fast worker with a queue, or a fast worker that fails half the time, loses to
  a slower reliable idle one. Workers without a completed task yet rank by being idle, with the median
  latency of the others.
- Memory is bounded whatever arrives: at most `max_workers` workers (the longest silent is forgotten)
  and `max_in_flight` open tasks per worker (the oldest is expired as failed).
"""

from __future__ import annotations

import math
import statistics
from collections import OrderedDict
from dataclasses import dataclass, field


@dataclass(frozen=True, slots=True)
class WorkerStats:
    worker: int
    completed: int
    failed: int
    in_flight: int
    latency: float | None  # seconds, EWMA over completed tasks; None before the first
    success_rate: float  # EWMA of ok (1) / failed (0); 1.0 before the first result
    throughput: float  # completions per second, decayed
    last_heard: float
    expected_time: float  # the ranking key: lower is better


@dataclass(slots=True)
class _Worker:
    last_heard: float
    completed: int = 0
    failed: int = 0
    latency: float | None = None
    success: float = 1.0
    rate_count: float = 0.0  # decayed completion count
    rate_at: float = 0.0
    tasks: OrderedDict[str, float] = field(default_factory=OrderedDict)  # task id -> assigned at


class WorkerPerformance:
    def __init__(
        self,
        *,
        alpha: float = 0.2,
        half_life: float = 30.0,
        stale_after: float = 60.0,
        task_timeout: float = 300.0,
        max_workers: int = 10_000,
        max_in_flight: int = 1_000,
    ) -> None:
        if not 0 < alpha <= 1 or half_life <= 0 or stale_after <= 0 or task_timeout <= 0:
            raise ValueError("alpha must be in (0, 1]; half_life, stale_after and task_timeout positive")
        if max_workers < 1 or max_in_flight < 1:
            raise ValueError("bounds must be positive")
        self.alpha = alpha
        self.half_life = half_life
        self.stale_after = stale_after
        self.task_timeout = task_timeout
        self.max_workers = max_workers
        self.max_in_flight = max_in_flight
        self._workers: OrderedDict[int, _Worker] = OrderedDict()  # least recently heard first
        self.unknown_completions = 0  # completions of tasks never assigned (or already expired)

    def __len__(self) -> int:
        return len(self._workers)

    # --- events ---------------------------------------------------------------------------------------

    def heard(self, worker: int, now: float) -> None:
        self._touch(worker, now)

    def assigned(self, worker: int, task_id: str, now: float) -> None:
        w = self._touch(worker, now)
        if task_id in w.tasks:
            return
        if len(w.tasks) >= self.max_in_flight:
            w.tasks.popitem(last=False)
            self._result(w, ok=False, latency=None, now=now)
        w.tasks[task_id] = now

    def completed(self, worker: int, task_id: str, ok: bool, now: float) -> float | None:
        """The task's latency, or None when it was not in flight on this worker (counted, ignored)."""
        w = self._workers.get(worker)
        started = w.tasks.pop(task_id, None) if w is not None else None
        if w is None or started is None:
            self.unknown_completions += 1
            return None
        self._touch(worker, now)
        latency = max(0.0, now - started)
        self._result(w, ok=ok, latency=latency, now=now)
        return latency

    def expire(self, now: float) -> list[tuple[int, str]]:
        """Tasks out longer than `task_timeout`, now counted as failed: (worker, task id) each."""
        expired: list[tuple[int, str]] = []
        for worker, w in self._workers.items():
            while w.tasks:
                task_id, started = next(iter(w.tasks.items()))
                if now - started < self.task_timeout:
                    break
                w.tasks.popitem(last=False)
                self._result(w, ok=False, latency=None, now=now)
                expired.append((worker, task_id))
        return expired

    def forget(self, worker: int) -> None:
        self._workers.pop(worker, None)

    def in_flight(self, worker: int) -> list[tuple[str, float]]:
        """The worker's open tasks, oldest first: (task id, assigned at) each."""
        w = self._workers.get(worker)
        return list(w.tasks.items()) if w is not None else []

    def release(self, worker: int) -> list[str]:
        """Take the worker's open tasks away (to give them to another), oldest first. They count as
        neither done nor failed; a late completion from this worker counts as unknown."""
        w = self._workers.get(worker)
        if w is None:
            return []
        tasks = list(w.tasks)
        w.tasks.clear()
        return tasks

    # --- figures --------------------------------------------------------------------------------------

    def stats(self, worker: int, now: float) -> WorkerStats | None:
        w = self._workers.get(worker)
        if w is None:
            return None
        return self._stats(worker, w, now, self._typical_latency())

    def ranked(self, now: float) -> list[WorkerStats]:
        """Workers heard from within `stale_after`, best first (lowest expected time; ties: fewer in
        flight, then lower id)."""
        typical = self._typical_latency()
        live = [
            self._stats(worker, w, now, typical)
            for worker, w in self._workers.items()
            if now - w.last_heard <= self.stale_after
        ]
        return sorted(live, key=lambda s: (s.expected_time, s.in_flight, s.worker))

    def best(self, now: float, exclude: frozenset[int] = frozenset()) -> int | None:
        for stats in self.ranked(now):
            if stats.worker not in exclude:
                return stats.worker
        return None

    # --- internals ------------------------------------------------------------------------------------

    def _touch(self, worker: int, now: float) -> _Worker:
        w = self._workers.get(worker)
        if w is None:
            if len(self._workers) >= self.max_workers:
                self._workers.popitem(last=False)
            w = self._workers[worker] = _Worker(last_heard=now, rate_at=now)
        else:
            w.last_heard = max(w.last_heard, now)
            self._workers.move_to_end(worker)
        return w

    def _result(self, w: _Worker, *, ok: bool, latency: float | None, now: float) -> None:
        a = self.alpha
        w.success = (1 - a) * w.success + a * (1.0 if ok else 0.0)
        if ok:
            w.completed += 1
        else:
            w.failed += 1
        if latency is not None:
            w.latency = latency if w.latency is None else (1 - a) * w.latency + a * latency
            w.rate_count = self._decayed(w, now) + 1.0
            w.rate_at = now

    def _decayed(self, w: _Worker, now: float) -> float:
        decay: float = 0.5 ** (max(0.0, now - w.rate_at) / self.half_life)
        return w.rate_count * decay

    def _typical_latency(self) -> float:
        known = [w.latency for w in self._workers.values() if w.latency is not None]
        return statistics.median(known) if known else 1.0

    def _stats(self, worker: int, w: _Worker, now: float, typical: float) -> WorkerStats:
        latency = w.latency if w.latency is not None else typical
        expected = latency * (1 + len(w.tasks)) / max(w.success, 1e-3)
        throughput = self._decayed(w, now) * math.log(2) / self.half_life
        return WorkerStats(
            worker=worker,
            completed=w.completed,
            failed=w.failed,
            in_flight=len(w.tasks),
            latency=w.latency,
            success_rate=w.success,
            throughput=throughput,
            last_heard=w.last_heard,
            expected_time=expected,
        )
