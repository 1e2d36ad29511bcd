"""Worker replacement, as a supervisor decides it: a pool of active workers and spares, driven by
`WorkerPerformance`; a worker below the threshold is retired, a spare takes its place, and the
retired worker's open tasks are given to the others. Sans-I/O: events and `now` in, decisions out.

    pool = WorkerPool(active=[2, 3, 4], spares=[5], now=now)
    worker = pool.assign("task-7", now)            # the best active worker, or None
    pool.completed(worker, "task-7", ok, now)      # its result came back
    for event in pool.review(now):                 # call every second or so
        ...  # event.retired, event.replacement, event.reassigned: [(task id, worker), ...]

Rules:
- Below the threshold (`ReplacementPolicy`) means one of:
  silent: not heard from (no result, no `heard`) within the performance tracker's `stale_after`;
  failing: after `min_results` results, a success rate under `min_success`;
  slow: a latency above `slower_than` times the median latency of the other active workers (and above
  `min_latency`). The latency judged is the larger of the worker's moving average (after `min_results`
  results) and the age of its oldest open task, so a worker that stops finishing is judged without
  waiting for a result that may never come.
- A silent worker is retired at once, with or without a spare (its tasks are not coming back). A slow or
  failing one is retired only when a spare can take its place, at most one per `cooldown` seconds, so a
  hiccup that slows everyone does not empty the spares.
- The replacement is the spare heard from most recently. The retired worker's open tasks are released
  from it (a late result from it counts as unknown) and each goes to the best active worker at that
  moment (the replacement included), as `reassigned` says; sending them is the caller's job.
- A retired worker is neither active nor spare; `add_spare` brings it (or any new worker) back.
"""

from __future__ import annotations

import statistics
from collections.abc import Iterable
from dataclasses import dataclass

from p2p.core.performance import WorkerPerformance


@dataclass(frozen=True, slots=True)
class ReplacementPolicy:
    slower_than: float = 3.0  # x the median latency of the other active workers
    min_success: float = 0.5
    min_results: int = 3  # results before the moving averages are judged
    min_latency: float = 0.0  # seconds; latencies at or under it are never slow
    cooldown: float = 2.0  # seconds between two replacements for slowness or failures

    def __post_init__(self) -> None:
        if self.slower_than <= 1 or not 0 <= self.min_success <= 1:
            raise ValueError("slower_than must be above 1 and min_success within [0, 1]")
        if self.min_results < 1 or self.min_latency < 0 or self.cooldown < 0:
            raise ValueError("min_results must be positive; min_latency and cooldown not negative")


@dataclass(frozen=True, slots=True)
class Replaced:
    """`retired` left the active workers for `reason`; `replacement` (a former spare, or None when none
    was left) took its place; its open tasks went to the workers named in `reassigned`, or are in
    `unassigned` when no active worker was left to take them."""

    retired: int
    replacement: int | None
    reason: str
    reassigned: tuple[tuple[str, int], ...]
    unassigned: tuple[str, ...] = ()


class WorkerPool:
    def __init__(
        self,
        *,
        active: Iterable[int],
        spares: Iterable[int] = (),
        now: float,
        performance: WorkerPerformance | None = None,
        policy: ReplacementPolicy | None = None,
    ) -> None:
        self.performance = performance if performance is not None else WorkerPerformance()
        self.policy = policy or ReplacementPolicy()
        self._active: list[int] = []
        self._spares: list[int] = []
        self.retired: set[int] = set()
        self._last_replacement = float("-inf")
        for worker in active:
            self._add(self._active, worker, now)
        for worker in spares:
            self._add(self._spares, worker, now)

    @property
    def active(self) -> tuple[int, ...]:
        return tuple(self._active)

    @property
    def spares(self) -> tuple[int, ...]:
        return tuple(self._spares)

    # --- events ---------------------------------------------------------------------------------------

    def add_active(self, worker: int, now: float) -> None:
        """A worker that starts taking tasks at once (a spare named here becomes active)."""
        if worker in self._active:
            return
        if worker in self._spares:
            self._spares.remove(worker)
        self.retired.discard(worker)
        self._add(self._active, worker, now)

    def add_spare(self, worker: int, now: float) -> None:
        """A worker ready to take over (also a retired one, given another chance)."""
        if worker in self._active or worker in self._spares:
            return
        self.retired.discard(worker)
        self._add(self._spares, worker, now)

    def remove(self, worker: int) -> None:
        """A worker that is gone for good (left the directory): forgotten wherever it was. Its open tasks
        are not reassigned here; `review` would call it silent first if it were still active."""
        for group in (self._active, self._spares):
            if worker in group:
                group.remove(worker)
        self.retired.discard(worker)
        self.performance.forget(worker)

    def heard(self, worker: int, now: float) -> None:
        if self._known(worker):
            self.performance.heard(worker, now)

    def assign(self, task_id: str, now: float) -> int | None:
        """Give `task_id` to the best active worker (recorded as in flight there); None without one."""
        worker = self._best_active(now)
        if worker is not None:
            self.performance.assigned(worker, task_id, now)
        return worker

    def completed(self, worker: int, task_id: str, ok: bool, now: float) -> float | None:
        """A result came back; its latency, or None when the task was not open on that worker."""
        return self.performance.completed(worker, task_id, ok, now)

    def review(self, now: float) -> list[Replaced]:
        """Retire the workers below the threshold (see the rules); what was decided."""
        out: list[Replaced] = []
        for worker in list(self._active):
            reason = self._silent(worker, now)
            if reason is not None:
                out.append(self._replace(worker, reason, now))
        if self._spares and now - self._last_replacement >= self.policy.cooldown:
            judged = [(self._shortfall(w, now), w) for w in self._active]
            below = [(score, w, reason) for (score, reason), w in judged if reason is not None]
            if below:
                _, worker, reason = max(below)
                out.append(self._replace(worker, reason, now))
                self._last_replacement = now
        return out

    # --- internals ------------------------------------------------------------------------------------

    def _known(self, worker: int) -> bool:
        return worker in self._active or worker in self._spares

    def _add(self, group: list[int], worker: int, now: float) -> None:
        if worker not in group:
            group.append(worker)
        self.performance.heard(worker, now)

    def _best_active(self, now: float) -> int | None:
        active = set(self._active)
        for stats in self.performance.ranked(now):
            if stats.worker in active:
                return stats.worker
        return None

    def _silent(self, worker: int, now: float) -> str | None:
        stats = self.performance.stats(worker, now)
        silent = now - stats.last_heard if stats is not None else float("inf")
        if silent > self.performance.stale_after:
            return f"silent for {silent:.1f} s"
        return None

    def _latency(self, worker: int, now: float) -> float | None:
        """The latency judged: the larger of the average (once judged) and the oldest open task's age."""
        stats = self.performance.stats(worker, now)
        if stats is None:
            return None
        candidates = [now - at for _, at in self.performance.in_flight(worker)[:1]]
        if stats.latency is not None and stats.completed + stats.failed >= self.policy.min_results:
            candidates.append(stats.latency)
        return max(candidates) if candidates else None

    def _shortfall(self, worker: int, now: float) -> tuple[float, str | None]:
        """(how far below the threshold, why) or (0, None) when the worker is fine."""
        policy = self.policy
        stats = self.performance.stats(worker, now)
        if stats is None:
            return 0.0, None
        if stats.completed + stats.failed >= policy.min_results and stats.success_rate < policy.min_success:
            return 1.0 + policy.min_success - stats.success_rate, (
                f"success rate {stats.success_rate:.2f} is under {policy.min_success:.2f}"
            )
        latency = self._latency(worker, now)
        others = []
        for other in self._active:
            if other != worker:
                other_stats = self.performance.stats(other, now)
                if other_stats is not None and other_stats.latency is not None:
                    others.append(other_stats.latency)
        if latency is None or not others or latency <= policy.min_latency:
            return 0.0, None
        median = statistics.median(others)
        if median > 0 and latency > policy.slower_than * median:
            factor = latency / median
            return factor, (
                f"latency {latency:.3f} s is {factor:.1f}x the median {median:.3f} s of the other workers"
            )
        return 0.0, None

    def _replace(self, worker: int, reason: str, now: float) -> Replaced:
        index = self._active.index(worker)
        replacement = self._pick_spare(now)
        if replacement is not None:
            self._spares.remove(replacement)
            self._active[index] = replacement
            self.performance.heard(replacement, now)
        else:
            del self._active[index]
        self.retired.add(worker)
        tasks = self.performance.release(worker)
        reassigned: list[tuple[str, int]] = []
        unassigned: list[str] = []
        for task_id in tasks:
            target = self._best_active(now)
            if target is None:
                unassigned.append(task_id)
                continue
            self.performance.assigned(target, task_id, now)
            reassigned.append((task_id, target))
        return Replaced(worker, replacement, reason, tuple(reassigned), tuple(unassigned))

    def _pick_spare(self, now: float) -> int | None:
        def heard(worker: int) -> float:
            stats = self.performance.stats(worker, now)
            return stats.last_heard if stats is not None else float("-inf")

        live = [w for w in self._spares if now - heard(w) <= self.performance.stale_after]
        return max(live, key=heard) if live else None
