"""The controller's book of key rotations, pure: who is asked to rotate, who waits in a `rotate --all`,
what each node's key age is, and the refusals. No I/O, no clock: `now` is an argument, and every method
returns the records it changed for the caller to persist. Replicas each hold a book: a step is tried on
a `copy()` and kept only once its records are committed at the version the book was read at, so
every decision is made once, on the current records, whichever replica makes it.

Rules:
- At most one rotation is active (requested or prepared) among neighbours: a node is refused while any
  of its neighbours rotates. Every node's map holds every other node, so in this mesh that means one
  node at a time.
- `rotate --all` queues every node (by id) and runs them one after the other: the next one is asked
  when the one before commits, times out or is removed. A second `--all`, or a single rotation while
  one runs, is refused.
- A requested node that does not prepare within `timeout` (offline) is given up ("timed_out") and the
  queue moves on; its map stops asking. A prepared node is never given up: it may already have
  switched, and the mesh must not be left half rotated.
- A commit is accepted for the active rotation, and again (idempotent) for the one that just finished
  with the same key: an agent that crashed before it saw the answer asks again.
- The schedule (`due`) asks the node with the oldest key, once its key is older than the interval and
  nothing else is active.
"""

from __future__ import annotations

from collections.abc import Iterable
from dataclasses import dataclass, replace
from datetime import datetime, timedelta

from wire.rotation import RotationOutcome, RotationState

DEFAULT_REQUEST_TIMEOUT = timedelta(seconds=120)


class RotationRefused(Exception):
    """A rotation cannot start or a key report does not fit; `status` is the HTTP status to answer."""

    def __init__(self, status: int, detail: str) -> None:
        super().__init__(detail)
        self.status = status
        self.detail = detail


@dataclass(frozen=True)
class NodeRotation:
    node_id: int
    key_created_at: datetime | None = None
    state: RotationState = "idle"
    rotation_id: int | None = None  # the active rotation, else the last one
    requested_at: datetime | None = None
    pending_key: str | None = None  # base64, from the prepare report
    queue_position: int | None = None
    finished_at: datetime | None = None
    outcome: RotationOutcome | None = None
    last_key: str | None = None  # the key the last finished rotation recorded (idempotent commits)

    @property
    def active(self) -> bool:
        return self.state in ("requested", "prepared")


class RotationBook:
    def __init__(self, records: Iterable[NodeRotation] = ()) -> None:
        self.records: dict[int, NodeRotation] = {r.node_id: r for r in records}
        self._next_id = 1 + max((r.rotation_id or 0 for r in self.records.values()), default=0)

    def copy(self) -> RotationBook:
        """A book to try a step on: the caller keeps it only if the step's records are committed."""
        book = RotationBook(self.records.values())
        book._next_id = max(book._next_id, self._next_id)
        return book

    def take(self, record: NodeRotation) -> None:
        """A record another replica committed."""
        self.records[record.node_id] = record
        self._next_id = max(self._next_id, (record.rotation_id or 0) + 1)

    def forget(self, node_id: int) -> None:
        """A node another replica removed (that replica moved a running `--all` on)."""
        self.records.pop(node_id, None)

    # --- queries -----------------------------------------------------------------------------------

    def get(self, node_id: int) -> NodeRotation:
        return self.records.get(node_id) or NodeRotation(node_id)

    def requested_of(self, node_id: int) -> int | None:
        """The rotation id the node's map asks for, or None."""
        r = self.records.get(node_id)
        return r.rotation_id if r is not None and r.active else None

    def campaign_running(self) -> bool:
        return any(r.state == "queued" for r in self.records.values()) or any(
            r.active and r.queue_position is not None for r in self.records.values()
        )

    def active(self) -> list[NodeRotation]:
        return [r for r in self.records.values() if r.active]

    # --- changes -----------------------------------------------------------------------------------

    def enrolled(self, node_id: int, now: datetime) -> list[NodeRotation]:
        """A node enrolled (or re-enrolled with maybe a new key): its key is as old as now."""
        old = self.get(node_id)
        if old.active:
            return []  # a re-enrollment mid-rotation keeps the rotation; its commit dates the key
        return self._put(replace(old, key_created_at=now))

    def removed(self, node_id: int, now: datetime) -> list[NodeRotation]:
        """A node left the mesh: forget it, and move a running `--all` on if it was its turn."""
        old = self.records.pop(node_id, None)
        if old is None or not old.active:
            return []
        return self._advance(now)

    def request(self, node_id: int, neighbours: Iterable[int], now: datetime) -> list[NodeRotation]:
        """Ask `node_id` to rotate. RotationRefused (409) when it or a neighbour already rotates, or
        when a `rotate --all` runs."""
        r = self.get(node_id)
        if r.active or r.state == "queued":
            raise RotationRefused(409, f"node {node_id} is already rotating ({r.state})")
        if self.campaign_running():
            raise RotationRefused(409, "a rotate --all is running; wait for it to finish")
        self._refuse_if_neighbour_rotates(node_id, neighbours)
        return self._start(r, now, queue_position=None)

    def request_all(self, node_ids: Iterable[int], now: datetime) -> list[NodeRotation]:
        """Queue every node of `node_ids` (in that order) and ask the first."""
        busy = self.active()
        if self.campaign_running():
            raise RotationRefused(409, "a rotate --all is already running")
        if busy:
            raise RotationRefused(409, f"node {busy[0].node_id} is rotating; wait for it to finish")
        ids = list(node_ids)
        if not ids:
            raise RotationRefused(409, "there are no nodes to rotate")
        changed = [
            self._put(replace(self.get(n), state="queued", queue_position=i))[0] for i, n in enumerate(ids)
        ]
        return changed + self._advance(now)

    def prepare(self, node_id: int, rotation_id: int, key: str) -> list[NodeRotation]:
        r = self.get(node_id)
        if not r.active or r.rotation_id != rotation_id:
            raise RotationRefused(409, f"node {node_id} has no rotation {rotation_id} under way")
        return self._put(replace(r, state="prepared", pending_key=key))

    def commit(self, node_id: int, rotation_id: int, key: str, now: datetime) -> list[NodeRotation]:
        """The node switched to `key`. Returns the changed records; the caller records the key."""
        r = self.get(node_id)
        if not r.active and r.rotation_id == rotation_id and r.outcome == "done" and r.last_key == key:
            return []  # the same commit again
        if not r.active or r.rotation_id != rotation_id:
            raise RotationRefused(409, f"node {node_id} has no rotation {rotation_id} under way")
        done = replace(
            r,
            state="idle",
            key_created_at=now,
            requested_at=None,
            pending_key=None,
            queue_position=None,
            finished_at=now,
            outcome="done",
            last_key=key,
        )
        return self._put(done) + self._advance(now)

    def tick(self, now: datetime, timeout: timedelta = DEFAULT_REQUEST_TIMEOUT) -> list[NodeRotation]:
        """Give up requested rotations older than `timeout` (the node never prepared)."""
        changed: list[NodeRotation] = []
        for r in list(self.records.values()):
            if r.state == "requested" and r.requested_at is not None and now - r.requested_at >= timeout:
                changed += self._finish(r, now, "timed_out")
                changed += self._advance(now)
        return changed

    def due(self, node_ids: Iterable[int], now: datetime, interval: timedelta) -> list[NodeRotation]:
        """The schedule: when nothing rotates, ask the node with the oldest key older than `interval`."""
        if self.active() or self.campaign_running():
            return []
        aged = [
            self.get(n)
            for n in node_ids
            if (created := self.get(n).key_created_at) is not None and now - created >= interval
        ]
        if not aged:
            return []
        oldest = min(aged, key=lambda r: (r.key_created_at, r.node_id))
        return self._start(oldest, now, queue_position=None)

    # --- internals ---------------------------------------------------------------------------------

    def _refuse_if_neighbour_rotates(self, node_id: int, neighbours: Iterable[int]) -> None:
        near = set(neighbours)
        for r in self.active():
            if r.node_id in near:
                raise RotationRefused(
                    409, f"neighbour node {r.node_id} is rotating; neighbours rotate one at a time"
                )

    def _start(self, r: NodeRotation, now: datetime, queue_position: int | None) -> list[NodeRotation]:
        rotation_id, self._next_id = self._next_id, self._next_id + 1
        started = replace(
            r,
            state="requested",
            rotation_id=rotation_id,
            requested_at=now,
            pending_key=None,
            queue_position=queue_position,
        )
        return self._put(started)

    def _finish(self, r: NodeRotation, now: datetime, outcome: RotationOutcome) -> list[NodeRotation]:
        return self._put(
            replace(
                r,
                state="idle",
                requested_at=None,
                pending_key=None,
                queue_position=None,
                finished_at=now,
                outcome=outcome,
            )
        )

    def _advance(self, now: datetime) -> list[NodeRotation]:
        """Ask the next queued node of a running `--all`, unless one is active."""
        if self.active():
            return []
        queued = sorted(
            (r for r in self.records.values() if r.state == "queued"), key=lambda r: r.queue_position or 0
        )
        if not queued:
            return []
        return self._start(queued[0], now, queue_position=queued[0].queue_position)

    def _put(self, r: NodeRotation) -> list[NodeRotation]:
        self.records[r.node_id] = r
        return [r]
