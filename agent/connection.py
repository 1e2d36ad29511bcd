"""The agent's connection to its controller as a pure state machine: connecting, connected,
disconnected, rejected, removed (agent.status.ControllerState says what each means).

Rules:
- Each change is logged once, never once per retry: the machine answers an input with the log lines
  of the change it made, and nothing when the state stays.
- `away_s` on reconnection counts from the first moment the controller was lost (disconnected or
  rejected), however many states came in between.
- `removed` is final: the controller said this node is no longer in the mesh.
"""

from __future__ import annotations

from agent.actions import Log
from agent.status import ControllerState


class Connection:
    def __init__(self, controller_url: str) -> None:
        self.controller_url = controller_url
        self.state: ControllerState = "connecting"
        self.since: float | None = None  # when `state` took its value (unix seconds)
        self.lost_at: float | None = None  # when the controller was first lost since last connected

    def _enter(self, state: ControllerState, now: float) -> ControllerState | None:
        """Move to `state`; the previous state, or None when nothing changed (or removed already)."""
        if state == self.state or self.state == "removed":
            return None
        previous, self.state, self.since = self.state, state, now
        if state in ("disconnected", "rejected", "removed") and self.lost_at is None:
            self.lost_at = now
        return previous

    def succeeded(self, now: float) -> list[Log]:
        previous = self._enter("connected", now)
        if previous is None:
            return []
        url = self.controller_url
        if previous == "connecting":
            line = Log("info", "controller_connected", {"controller": url})
        else:
            away = now - self.lost_at if self.lost_at is not None else None
            line = Log("info", "controller_reconnected", {"controller": url, "away_s": away})
        self.lost_at = None
        return [line]

    def unreachable(self, now: float, error: str, from_cache: bool) -> list[Log]:
        """The controller cannot be reached; `from_cache`: the data plane runs on the cached map."""
        previous = self._enter("disconnected", now)
        if previous is None:
            return []
        note = "keeping the data plane; retrying with backoff"
        if previous == "connecting" and from_cache:
            note = "running from the cached map; retrying with backoff"
        return [
            Log(
                "warning",
                "controller_disconnected",
                {"controller": self.controller_url, "error": error, "note": note},
            )
        ]

    def rejected(self, now: float, error: str) -> list[Log]:
        if self._enter("rejected", now) is None:
            return []
        note = "this node's credential is refused (removed from the mesh?); retrying with backoff"
        return [
            Log(
                "error",
                "controller_rejected",
                {"controller": self.controller_url, "error": error, "note": note},
            )
        ]

    def removed(self, now: float, error: str) -> list[Log]:
        if self._enter("removed", now) is None:
            return []
        note = "this node was removed from the mesh: taking its peers down and stopping"
        return [
            Log("error", "node_removed", {"controller": self.controller_url, "error": error, "note": note})
        ]
