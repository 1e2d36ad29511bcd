"""The agent's status view: the model of STATE_DIR/status.json, and its rendering as a table.

`AgentStatus` is the contract with anything that watches an agent (the lab, `wgmesh agent status`):
the agent rewrites status.json atomically whenever a field other than `updated_at` changes. Times are
unix seconds (float) so readers need no time zone handling. Everything here is pure: live device
counters come in as a `Device`, the current time as `now`.
"""

from __future__ import annotations

from pathlib import Path
from typing import Literal

from pydantic import BaseModel, ConfigDict, Field, ValidationError

from agent.device import Device
from keys.store import write_private_file
from wgmesh.table import table
from wire.models import IPAddress, IPNetwork, NodeId

STATUS_FORMAT = 1

ControllerState = Literal["connecting", "connected", "disconnected", "rejected", "removed"]
"""connecting: no answer yet since the agent started; connected: the last call succeeded;
disconnected: the controller cannot be reached (the agent retries with backoff);
rejected: the controller refused this node's credential (removed, or a different controller);
removed: the controller said this node was removed from the mesh; the agent took its peers down and
stopped."""

RouteKind = Literal["direct", "relay", "none"]
"""direct: packets go straight to the peer; relay: through the peer named in `via`;
none: the network map has no route to the peer."""


class StatusError(RuntimeError):
    """status.json is missing or unreadable; the message names the file and the problem."""


class PeerView(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True)

    node_id: NodeId
    name: str
    tunnel_address: IPAddress
    wg_public_key: str = Field(description="base64; public, shown so operators can match `wg show`.")
    endpoint: str | None = Field(default=None, description="None: not known yet (peer calls us).")
    latest_handshake: float | None = Field(default=None, description="unix seconds; None: never.")
    rx_bytes: int = Field(default=0, ge=0)
    tx_bytes: int = Field(default=0, ge=0)
    rtt_ms: float | None = Field(
        default=None, description="Direct-link probe RTT; None: no reply or not probed."
    )
    loss: float | None = Field(default=None, description="Direct-link probe loss; None: not probed.")
    route: RouteKind = "direct"
    via: str | None = Field(default=None, description="Relay's name when route == 'relay', else None.")


class AgentStatus(BaseModel):
    """STATE_DIR/status.json."""

    model_config = ConfigDict(extra="forbid", frozen=True)

    format: int = STATUS_FORMAT
    node_id: NodeId
    name: str
    tunnel_address: IPAddress
    mesh_cidr: IPNetwork
    interface: str
    backend: str
    controller_url: str
    controller: ControllerState
    controller_since: float | None = Field(
        default=None, description="unix seconds when `controller` took its value; None: unknown."
    )
    serial: int | None = Field(default=None, description="Serial of the map applied; None: none yet.")
    netmap_source: Literal["controller", "cache"] | None = Field(
        default=None, description="Where the applied map came from; None: no map applied yet."
    )
    forward: bool = False
    running: bool = Field(default=True, description="False once the agent has stopped.")
    pid: int | None = None
    last_error: str | None = Field(default=None, description="The last data-plane error; None: none.")
    updated_at: float
    peers: list[PeerView] = Field(default_factory=list)
    wg_public_key: str | None = Field(
        default=None, description="This host's WireGuard key, base64; None: unknown."
    )
    key_created_at: float | None = Field(
        default=None, description="unix seconds when this host's WireGuard key was made; None: unknown."
    )
    key_rotation: str | None = Field(
        default=None,
        description="The key rotation under way (prepared, switching, switched, recorded); None: none.",
    )
    controller_in_use: str | None = Field(
        default=None,
        description="The replica of `controller_url` (one of its URLs) the agent talks to now; None: unknown.",
    )

    @classmethod
    def load(cls, path: Path) -> AgentStatus:
        try:
            text = Path(path).read_text()
        except FileNotFoundError:
            raise StatusError(f"{path} does not exist: the agent has not run with this state dir") from None
        except OSError as e:
            raise StatusError(f"{path}: cannot read: {e.strerror}") from None
        try:
            return cls.model_validate_json(text)
        except ValidationError as e:
            raise StatusError(f"{path}: not a valid status file ({e.error_count()} errors)") from None

    def save(self, path: Path) -> None:
        write_private_file(Path(path), self.model_dump_json(indent=1) + "\n")

    def same_as(self, other: AgentStatus | None) -> bool:
        """Equal apart from `updated_at`: nothing a reader cares about has changed."""
        if other is None:
            return False
        return self.model_copy(update={"updated_at": 0.0}) == other.model_copy(update={"updated_at": 0.0})

    def peer(self, name: str) -> PeerView | None:
        return next((p for p in self.peers if p.name == name), None)


def with_live_device(status: AgentStatus, device: Device) -> AgentStatus:
    """The status with endpoint, handshake and transfer read from the running device."""
    by_key = {key.base64(): peer for key, peer in device.peers.items()}
    peers = []
    for view in status.peers:
        live = by_key.get(view.wg_public_key)
        if live is None:
            peers.append(view)
            continue
        peers.append(
            view.model_copy(
                update={
                    "endpoint": live.config.endpoint or view.endpoint,
                    "latest_handshake": live.last_handshake,
                    "rx_bytes": live.rx_bytes,
                    "tx_bytes": live.tx_bytes,
                }
            )
        )
    return status.model_copy(update={"peers": peers})


# --- rendering --------------------------------------------------------------------------------------


def format_age(seconds: float | None) -> str:
    """'12s ago', '3m 4s ago', '2h 5m ago', '3d 4h ago'; 'never' for None."""
    if seconds is None:
        return "never"
    s = max(0, int(seconds))
    if s < 60:
        return f"{s}s ago"
    if s < 3600:
        return f"{s // 60}m {s % 60}s ago"
    if s < 86400:
        return f"{s // 3600}h {s % 3600 // 60}m ago"
    return f"{s // 86400}d {s % 86400 // 3600}h ago"


def format_bytes(n: int) -> str:
    """Binary units like `wg show`: '0 B', '1.50 KiB', '2.00 MiB'."""
    if n < 1024:
        return f"{n} B"
    value = float(n)
    for unit in ("KiB", "MiB", "GiB", "TiB"):
        value /= 1024
        if value < 1024 or unit == "TiB":
            return f"{value:.2f} {unit}"
    raise AssertionError("unreachable")


def format_rtt(rtt_ms: float | None, loss: float | None) -> str:
    if rtt_ms is None:
        return "-" if loss is None or loss < 1.0 else "lost"
    text = f"{rtt_ms:.1f} ms" if rtt_ms < 100 else f"{rtt_ms:.0f} ms"
    if loss:
        text += f" ({loss:.0%} loss)"
    return text


def format_route(peer: PeerView) -> str:
    if peer.route == "relay":
        return f"via {peer.via}" if peer.via else "via relay"
    return peer.route


def render_table(status: AgentStatus, now: float) -> str:
    """The human view of an agent: a header line with the controller state, then one row per peer."""
    since = ""
    if status.controller_since is not None:
        since = f" since {format_age(now - status.controller_since).removesuffix(' ago')}"
    serial = f"map serial {status.serial}" if status.serial is not None else "no map yet"
    if status.netmap_source == "cache":
        serial += " (from cache)"
    state = status.controller if status.running else "agent stopped"
    controller = status.controller_url
    if status.controller_in_use and status.controller_in_use != controller and status.running:
        controller += f" (using {status.controller_in_use})"
    head = (
        f"node {status.name} (id {status.node_id}) {status.tunnel_address} on {status.interface}; "
        f"controller {controller}: {state}{since}; {serial}"
    )
    lines = [head]
    if status.wg_public_key is not None:
        age = None if status.key_created_at is None else now - status.key_created_at
        made = "made " + format_age(age) if age is not None else "age unknown"
        rotation = f"; rotation {status.key_rotation}" if status.key_rotation else ""
        lines.append(f"key {status.wg_public_key} ({made}){rotation}")
    if status.last_error:
        lines.append(f"last error: {status.last_error}")
    if not status.peers:
        lines += ["", "no peers"]
        return "\n".join(lines) + "\n"
    header = ("NAME", "TUNNEL ADDRESS", "ENDPOINT", "HANDSHAKE", "TRANSFER (rx / tx)", "RTT", "ROUTE")
    rows = []
    for p in sorted(status.peers, key=lambda p: (p.name, p.node_id)):
        age = None if p.latest_handshake is None else now - p.latest_handshake
        rows.append(
            (
                p.name,
                str(p.tunnel_address),
                p.endpoint or "-",
                format_age(age),
                f"{format_bytes(p.rx_bytes)} / {format_bytes(p.tx_bytes)}",
                format_rtt(p.rtt_ms, p.loss),
                format_route(p),
            )
        )
    lines += ["", table(header, rows)]
    return "\n".join(lines) + "\n"
