"""What the agent core asks its driver to do (`Action`) and what the driver tells it back (`Input`).

The core (agent.core) is sans-I/O: every input is one of the `Input` types below, fed with `now`, and
every effect it wants is one of the `Action` types, carried out by the driver (agent.daemon). An action
that does I/O answers with exactly one input when it is done (the docstring names it); the others are
fire-and-forget.

Rules:
- Pure data: frozen dataclasses of pure types (wire models, agent.device/desired types); no I/O here.
- A new state machine plugged into the core (key rotation, the firewall) adds its inputs and actions
  here, next to these, and the driver one `match` case per action.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Literal

from agent.desired import DesiredState
from agent.device import Device
from agent.links import ProbeResult
from agent.reconcile import Change
from agent.status import AgentStatus
from wire.models import IPAddress, LinkReport, NetMap, NetMapDelta

LogLevel = Literal["info", "warning", "error"]

# --- actions ------------------------------------------------------------------------------------------


@dataclass(frozen=True)
class Poll:
    """Ask the controller for the map after `since` (0: the full map at once), waiting up to
    `timeout_s`. Answers `MapAnswered`, `PollFailed` or `PollRefused`."""

    since: int
    timeout_s: float
    policy_version: int | None = None  # the policy version the host enforces, reported back; None: none


@dataclass(frozen=True)
class Resolve:
    """Resolve these host-name endpoints ("name:port"). Answers `Resolved`."""

    endpoints: tuple[str, ...]


@dataclass(frozen=True)
class Apply:
    """Make the host match `desired`: reconcile the device, then the host network (and any later part,
    e.g. a firewall). Answers `Applied`."""

    desired: DesiredState


@dataclass(frozen=True)
class Measure:
    """Read the device and probe `targets` (the directly routed peers). Answers `Measured`."""

    targets: tuple[IPAddress, ...]


@dataclass(frozen=True)
class ReportLinks:
    """Send link measurements to the controller. Answers `Reported`, `ReportFailed` or `ReportRefused`."""

    report: LinkReport


@dataclass(frozen=True)
class SaveCache:
    """Write STATE_DIR/netmap.json (the full map, for a start without the controller)."""

    netmap: NetMap


@dataclass(frozen=True)
class WriteDirectory:
    """Write STATE_DIR/p2p-directory.json from `netmap`; when `changed` is False only if it is missing."""

    netmap: NetMap
    changed: bool


@dataclass(frozen=True)
class ForgetMap:
    """Delete the cached map and the p2p directory: this node is no longer in any mesh."""


@dataclass(frozen=True)
class WriteStatus:
    """Write STATE_DIR/status.json (emitted only when something but `updated_at` changed)."""

    status: AgentStatus


@dataclass(frozen=True)
class Ready:
    """The host runs a network map (tell the service manager: systemd READY=1)."""


@dataclass(frozen=True)
class Log:
    level: LogLevel
    event: str
    fields: Mapping[str, object] = field(default_factory=dict)


@dataclass(frozen=True)
class Stop:
    """Stop serving and exit with `exit_code`; `reason` is the one line to show the operator."""

    exit_code: int
    reason: str


Action = (
    Poll
    | Resolve
    | Apply
    | Measure
    | ReportLinks
    | SaveCache
    | WriteDirectory
    | ForgetMap
    | WriteStatus
    | Ready
    | Log
    | Stop
)

# --- inputs -------------------------------------------------------------------------------------------


@dataclass(frozen=True)
class MapAnswered:
    """The controller answered a poll: a full map, a delta, or None (nothing newer within the wait)."""

    answer: NetMap | NetMapDelta | None


@dataclass(frozen=True)
class PollFailed:
    """No usable answer (unreachable, timeout, 5xx, unreadable map); retry with backoff."""

    error: str


@dataclass(frozen=True)
class PollRefused:
    """The controller refused the poll (a 4xx); 410 means this node was removed from the mesh."""

    status: int
    error: str


@dataclass(frozen=True)
class Resolved:
    """Host-name endpoints resolved: "ip:port", or None with the reason in `errors`."""

    addresses: Mapping[str, str | None]
    errors: Mapping[str, str] = field(default_factory=dict)


@dataclass(frozen=True)
class Applied:
    """The outcome of `Apply`: the device changes made (even when a later part failed), the host
    network's change lines, the device as read after, and the first error (None: all applied)."""

    device_changes: tuple[Change, ...] = ()
    host_changes: tuple[str, ...] = ()
    device: Device | None = None
    error: str | None = None
    firewall_changes: tuple[str, ...] = ()  # the policy firewall's change lines (agent.firewall)


@dataclass(frozen=True)
class Measured:
    """The outcome of `Measure`. `device` None with `device_error`: the device could not be read;
    `probe_error`: probing failed (handshake ages are reported anyway)."""

    device: Device | None
    probes: Mapping[IPAddress, ProbeResult]
    device_error: str | None = None
    probe_error: str | None = None


@dataclass(frozen=True)
class Reported:
    """The controller took the link report."""


@dataclass(frozen=True)
class ReportFailed:
    """The link report did not reach the controller."""

    error: str


@dataclass(frozen=True)
class ReportRefused:
    status: int
    error: str


@dataclass(frozen=True)
class Crashed:
    """Carrying out `action` died of an unexpected error (a bug in the driver or an edge)."""

    action: Action
    error: str

    @property
    def loop(self) -> Literal["netmap", "links"]:
        """The part of the agent it belongs to: following the map, or measuring links."""
        return "links" if isinstance(self.action, Measure | ReportLinks) else "netmap"


Input = (
    MapAnswered
    | PollFailed
    | PollRefused
    | Resolved
    | Applied
    | Measured
    | Reported
    | ReportFailed
    | ReportRefused
    | Crashed
)
