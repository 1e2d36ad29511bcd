"""The agent as one pure state machine (`AgentCore`): what the host should look like and what to do
next, from the controller's answers, apply and probe results, and `now`. The driver (agent.daemon)
carries out its actions and feeds the outcomes back (agent.actions lists both).

Parts, each pure and in its own module: the map session (agent.mapsession: which map to ask for, deltas
turned into full maps), the connection state (agent.connection), the desired state (agent.desired), link
measurement (agent.links) and the reconnect backoff (agent.backoff).

Rules:
- The data plane never waits for the controller: a cached map is applied at start; a controller that
  goes away changes nothing on the host.
- At most one poll, one apply, one measurement and one link report are in flight. A map that arrives
  while another is being applied is applied next (the newest wins).
- A map the data plane refused is retried every `apply_retry_s` on its own timer, and logged once per
  distinct error; a newer map is applied at once.
- Polls that fail are retried with exponential backoff with jitter; link rounds keep a steady cadence
  (a slow round shortens the next wait, never shifts every later one).
- Time only moves forward for timers: when `now` steps back (the wall clock was set back), every pending
  deadline moves back by the same step.
- status.json is written only when something other than its timestamp changed; netmap.json whenever a
  new map from the controller is applied; p2p-directory.json whenever the applied map changes.
- Removal (the controller answers 410): the node's peers, addresses, routes and forwarding are taken
  down (one empty desired state), the cached map and p2p directory are forgotten, the removal is logged
  once, and the core asks to stop with `EXIT_REMOVED`.

Plugging in another state machine (key rotation, the nftables firewall):
- Its inputs and actions go in agent.actions; the driver gets one `match` case per new action.
- A new part of the host's desired state (the firewall's ruleset) is a field of `DesiredState` built in
  `_desired()`, applied by the driver's `Apply` after the host network and reported in `Applied`.
- A new private key (rotation) goes through `rekey()`: the current map is applied again with it.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass
from typing import Literal

from agent.actions import (
    Action,
    Applied,
    Apply,
    Crashed,
    ForgetMap,
    Input,
    Log,
    MapAnswered,
    Measure,
    Measured,
    Poll,
    PollFailed,
    PollRefused,
    Ready,
    Reported,
    ReportFailed,
    ReportLinks,
    ReportRefused,
    Resolve,
    Resolved,
    SaveCache,
    Stop,
    WriteDirectory,
    WriteStatus,
)
from agent.backoff import RetryBackoff
from agent.connection import Connection
from agent.desired import DesiredState, build_desired, name_endpoints
from agent.device import Device, DeviceConfig
from agent.links import measure_links, peer_views, probe_targets
from agent.mapsession import DeltaDropped, MapSession
from agent.reconcile import (
    Change,
    FwmarkChanged,
    ListenPortChanged,
    PeerAdded,
    PeerChanged,
    PeerRemoved,
    PrivateKeyRotated,
)
from agent.state import AgentState
from agent.status import AgentStatus
from keys.types import WireGuardPrivateKey, WireGuardPublicKey
from wire.models import LinkMeasurement, LinkReport, NetMap, NodeId

EXIT_REMOVED = 3  # the exit code of an agent whose node was removed from the mesh
REMOVED_REASON = (
    "the controller removed this node from the mesh; its peers, routes and forwarding are down. "
    "To join again, enroll anew: delete node.json from the state directory and run "
    "`wgmesh agent up --controller URL --token PRE-AUTH-KEY`"
)
MapSource = Literal["controller", "cache"]

_CHANGE_EVENTS: dict[type, str] = {
    PeerAdded: "peer_added",
    PeerRemoved: "peer_removed",
    PeerChanged: "peer_changed",
    ListenPortChanged: "listen_port_changed",
    FwmarkChanged: "fwmark_changed",
    PrivateKeyRotated: "private_key_set",
}


@dataclass(frozen=True)
class CoreSettings:
    probe_interval_s: float = 10.0
    poll_timeout_s: float = 30.0
    apply_retry_s: float | None = None  # None: the probe interval
    restart_pause_s: float | None = None  # after a driver task crashed; None: max(1 s, probe interval)
    direct_probes: bool = False  # probe addresses on wg0, relayed peers probed there (agent.desired)

    @property
    def retry_s(self) -> float:
        return self.apply_retry_s if self.apply_retry_s is not None else self.probe_interval_s

    @property
    def pause_s(self) -> float:
        return self.restart_pause_s if self.restart_pause_s is not None else max(1.0, self.probe_interval_s)


@dataclass(frozen=True)
class _Target:
    netmap: NetMap
    source: MapSource


class AgentCore:
    """One host's agent, sans I/O. `start(cached, now)` applies the cached map, `serve(now)` begins
    following the controller and measuring links; then `handle(input, now)` per outcome and
    `tick(now)` at `deadline()`. `shutdown(now, interface_kept)` when the driver stops."""

    def __init__(
        self,
        node: AgentState,
        backend: str,
        private_key: WireGuardPrivateKey,
        settings: CoreSettings,
        backoff: RetryBackoff,
        pid: int,
    ) -> None:
        self.node = node
        self.backend = backend
        self.private_key = private_key
        self.settings = settings
        self.backoff = backoff
        self.pid = pid
        self.session = MapSession(settings.poll_timeout_s)
        self.connection = Connection(node.controller_url)
        # what the host runs
        self.netmap: NetMap | None = None  # the map applied last
        self.netmap_source: MapSource | None = None
        self.device: Device | None = None  # as read last
        self.measurements: dict[NodeId, LinkMeasurement] = {}
        self.last_error: str | None = None  # the last data-plane error; None: none
        self.removed = False
        # work in flight and timers (absolute times on the `now` clock; None: not due)
        self._target: _Target | None = None  # the map the host should match
        self._applying: _Target | None = None
        self._taking_down = False  # the removal's empty state is being applied
        self._serving = False
        self._polling = False
        self._measuring = False
        self._reporting = False
        self._poll_at: float | None = None
        self._measure_at: float | None = None
        self._retry_at: float | None = None
        self._last_now: float | None = None
        # what was said already, so it is said once
        self._names: dict[WireGuardPublicKey, str] = {}
        self._status: AgentStatus | None = None
        self._report_error: str | None = None
        self._probe_error: str | None = None
        self._crash_errors: dict[str, str] = {}

    # --- entry points -------------------------------------------------------------------------------

    def start(self, cached: NetMap | None, now: float) -> list[Action]:
        self._clock(now)
        if cached is not None:
            return self._want(_Target(cached, "cache"), now)
        return self._status_actions(now)

    def serve(self, now: float) -> list[Action]:
        self._clock(now)
        if self.removed:
            return []
        self._serving = True
        self._measure_at = now + self.settings.probe_interval_s
        return self._poll()

    def deadline(self) -> float | None:
        times = [t for t in (self._poll_at, self._measure_at, self._retry_at) if t is not None]
        return min(times, default=None)

    def tick(self, now: float) -> list[Action]:
        self._clock(now)
        actions: list[Action] = []
        if self._poll_at is not None and now >= self._poll_at:
            self._poll_at = None
            actions += self._poll()
        if self._retry_at is not None and now >= self._retry_at:
            self._retry_at = None
            if self._target is not None and self._applying is None:
                actions += self._begin_apply(now)
        if self._measure_at is not None and now >= self._measure_at:
            interval = self.settings.probe_interval_s
            self._measure_at = max(self._measure_at + interval, now)
            actions += self._measure()
        return actions

    def handle(self, event: Input, now: float) -> list[Action]:
        self._clock(now)
        match event:
            case MapAnswered():
                return self._answered(event, now)
            case PollFailed(error=error):
                self._polling = False
                self.session.lost()
                lines = self.connection.unreachable(now, error, from_cache=self.netmap_source == "cache")
                return [*lines, *self._status_if(lines, now), *self._poll_later(now)]
            case PollRefused(status=410, error=error):
                self._polling = False
                return self._remove(now, error)
            case PollRefused(error=error):
                self._polling = False
                self.session.lost()
                lines = self.connection.rejected(now, error)
                return [*lines, *self._status_if(lines, now), *self._poll_later(now)]
            case Resolved():
                return self._resolved(event, now)
            case Applied():
                return self._applied(event, now)
            case Measured():
                return self._measured(event, now)
            case Reported():
                self._reporting = False
                self._report_error = None
                lines = self.connection.succeeded(now)
                return [*lines, *self._status_if(lines, now)]
            case ReportFailed(error=error):
                self._reporting = False
                lines = self.connection.unreachable(now, error, from_cache=self.netmap_source == "cache")
                return [*lines, *self._status_if(lines, now)]
            case ReportRefused():
                return self._report_refused(event, now)
            case Crashed():
                return self._crashed(event, now)
        raise TypeError(f"no part of the agent core takes {type(event).__name__}")

    def rekey(self, private_key: WireGuardPrivateKey, now: float) -> list[Action]:
        """Run the interface with `private_key` from now on: the current map is applied again."""
        self._clock(now)
        self.private_key = private_key
        held = self._target or (_Target(self.netmap, self.netmap_source or "cache") if self.netmap else None)
        # a new target object: an apply in flight with the old key is followed by one with the new key
        return self._want(_Target(held.netmap, held.source), now) if held is not None else []

    def shutdown(self, now: float, interface_kept: bool) -> list[Action]:
        self._serving = False
        self._poll_at = self._measure_at = self._retry_at = None
        return [
            *self._status_actions(now, running=False),
            Log("info", "stopped", {"interface": self.node.interface, "interface_kept": interface_kept}),
        ]

    # --- status -------------------------------------------------------------------------------------

    def status(self, now: float, running: bool = True) -> AgentStatus:
        netmap = self.netmap
        peers = peer_views(netmap, self.device, self.measurements) if netmap is not None else []
        return AgentStatus(
            node_id=self.node.node_id,
            name=netmap.node.name if netmap is not None else self.node.name,
            tunnel_address=self.node.tunnel_address,
            mesh_cidr=self.node.mesh_cidr,
            interface=self.node.interface,
            backend=self.backend,
            controller_url=self.node.controller_url,
            controller=self.connection.state,
            controller_since=self.connection.since,
            serial=netmap.serial if netmap is not None else None,
            netmap_source=self.netmap_source if netmap is not None else None,
            forward=netmap.forward if netmap is not None else False,
            running=running,
            pid=self.pid if running else None,
            last_error=self.last_error,
            updated_at=now,
            peers=peers,
        )

    def _status_actions(self, now: float, running: bool = True) -> list[Action]:
        status = self.status(now, running)
        if status.same_as(self._status):
            return []
        self._status = status
        return [WriteStatus(status)]

    def _status_if(self, changed: list[Log], now: float) -> list[Action]:
        return self._status_actions(now) if changed else []

    # --- following the controller -------------------------------------------------------------------

    def _poll(self) -> list[Action]:
        if not self._serving or self.removed or self._polling:
            return []
        self._polling = True
        since, timeout = self.session.request()
        policy = self.netmap.policy if self.netmap is not None else None
        return [Poll(since, timeout, None if policy is None else policy.version)]

    def _poll_later(self, now: float) -> list[Action]:
        if not self.removed:
            self._poll_at = now + self.backoff.next_delay()
        return []

    def _answered(self, event: MapAnswered, now: float) -> list[Action]:
        self._polling = False
        self.backoff.reset()
        actions: list[Action] = []
        lines = self.connection.succeeded(now)
        actions += [*lines, *self._status_if(lines, now)]
        outcome = self.session.receive(event.answer)
        if isinstance(outcome, DeltaDropped):
            # not a delta to the map held: drop it and ask for the whole map
            fields = {"base_serial": outcome.base_serial, "held_serial": outcome.held_serial}
            actions.append(
                Log("warning", "netmap_delta_dropped", {**fields, "note": "asking for the full map"})
            )
        elif outcome is not None:
            actions += self._want(_Target(outcome, "controller"), now)
        return actions + self._poll()

    def _remove(self, now: float, error: str) -> list[Action]:
        actions: list[Action] = list(self.connection.removed(now, error))
        if self.removed:
            return actions
        self.removed = True
        self._serving = False
        self._target = None
        self._poll_at = self._measure_at = self._retry_at = None
        if self._applying is None:
            actions += self._take_down()
        return actions + self._status_actions(now)

    def _take_down(self) -> list[Action]:
        self._taking_down = True
        listen_port = self.netmap.node.listen_port if self.netmap is not None else self.node.listen_port
        device = DeviceConfig.build(self.private_key, (), listen_port=listen_port)
        return [Apply(DesiredState(device=device, addresses=(), routes=(), forward=False))]

    def _report_refused(self, event: ReportRefused, now: float) -> list[Action]:
        self._reporting = False
        if event.status == 410:
            return self._remove(now, event.error)
        if event.status in (401, 403):
            lines = self.connection.rejected(now, event.error)
            return [*lines, *self._status_if(lines, now)]
        if self._report_error == event.error:
            return []
        self._report_error = event.error
        return [Log("warning", "link_report_refused", {"error": event.error})]

    def _crashed(self, event: Crashed, now: float) -> list[Action]:
        """A bug in the driver's `loop`: said once per distinct error, that loop resumes after a pause."""
        actions: list[Action] = []
        if self._crash_errors.get(event.loop) != event.error:
            self._crash_errors[event.loop] = event.error
            fields = {"loop": event.loop, "error": event.error, "note": "restarting the loop"}
            actions.append(Log("error", "internal_error", fields))
        pause = now + self.settings.pause_s
        match event.action:
            case Measure() | ReportLinks():
                self._measuring = self._reporting = False
                if self._measure_at is not None:
                    self._measure_at = max(self._measure_at, pause)
            case Resolve() | Apply():
                self._applying = None
                if self._taking_down:
                    self._taking_down = False
                    return actions + self._taken_down(Applied(error=event.error), now)
                self._retry_at = pause
            case Poll():
                self._polling = False
                self.session.lost()
                if not self.removed:
                    self._poll_at = pause
        return actions

    # --- applying a map -----------------------------------------------------------------------------

    def _want(self, target: _Target, now: float) -> list[Action]:
        if self.removed:
            return []
        self._target = target
        if self._applying is not None:
            return []  # applied once the one in flight is done
        return self._begin_apply(now)

    def _begin_apply(self, now: float) -> list[Action]:
        target = self._target
        assert target is not None
        self._retry_at = None
        self._applying = target
        for peer in target.netmap.peers:
            self._names[peer.wg_public_key] = peer.name
        names = name_endpoints(target.netmap)
        if names:
            return [Resolve(tuple(names))]
        return self._apply(target, {}, now)

    def _resolved(self, event: Resolved, now: float) -> list[Action]:
        target = self._applying
        if target is None:
            return []
        if self.removed:  # the removal came while names were being resolved
            self._applying = None
            return self._take_down()
        actions: list[Action] = [
            Log("warning", "endpoint_unresolved", {"endpoint": endpoint, "error": error})
            for endpoint, error in event.errors.items()
        ]
        return actions + self._apply(target, event.addresses, now)

    def _apply(self, target: _Target, resolved: Mapping[str, str | None], now: float) -> list[Action]:
        try:
            desired = self._desired(target.netmap, resolved)
        except ValueError as e:
            self._applying = None
            return self._apply_failed(target, str(e), now)
        return [Apply(desired)]

    def _desired(self, netmap: NetMap, resolved: Mapping[str, str | None]) -> DesiredState:
        return build_desired(netmap, self.private_key, resolved, self.settings.direct_probes)

    def _applied(self, event: Applied, now: float) -> list[Action]:
        target, self._applying = self._applying, None
        if event.device is not None:
            self.device = event.device
        actions: list[Action] = [self._change_line(c) for c in event.device_changes]
        actions += [
            Log("info", "host_network_changed", {"interface": self.node.interface, "detail": text})
            for text in event.host_changes
        ]
        actions += [
            Log("info", "firewall_changed", {"interface": self.node.interface, "detail": text})
            for text in event.firewall_changes
        ]
        if self._taking_down and target is None:
            self._taking_down = False
            return actions + self._taken_down(event, now)
        if target is None:
            return actions
        if self.removed:  # the removal came while this map was being applied
            return actions + self._take_down()
        if event.error is not None:
            actions += self._apply_failed(target, event.error, now)
        else:
            actions += self._apply_done(target, event, now)
        if self._target is not None and self._target is not target:
            actions += self._begin_apply(now)  # a newer map came meanwhile
        return actions

    def _apply_done(self, target: _Target, event: Applied, now: float) -> list[Action]:
        netmap, source = target.netmap, target.source
        actions: list[Action] = []
        total = len(event.device_changes) + len(event.host_changes) + len(event.firewall_changes)
        if self.netmap is None or netmap.serial != self.netmap.serial or total:
            fields = {
                "serial": netmap.serial,
                "source": source,
                "peers": len(netmap.peers),
                "changes": total,
                "forward": netmap.forward,
            }
            actions.append(Log("info", "netmap_applied", fields))
        previous = self.netmap
        self.netmap, self.netmap_source = netmap, source
        self.last_error = None
        self._retry_at = None
        if source == "controller" and netmap != previous:
            actions.append(SaveCache(netmap))
        actions.append(WriteDirectory(netmap, changed=netmap != previous))
        return [*actions, *self._status_actions(now), Ready()]

    def _apply_failed(self, target: _Target, error: str, now: float) -> list[Action]:
        actions: list[Action] = []
        if error != self.last_error:  # a retry that fails the same way is not news
            fields = {"serial": target.netmap.serial, "source": target.source, "error": error}
            actions.append(Log("error", "apply_failed", fields))
        self.last_error = error
        self._retry_at = now + self.settings.retry_s
        return actions + self._status_actions(now)

    def _taken_down(self, event: Applied, now: float) -> list[Action]:
        actions: list[Action] = []
        reason = REMOVED_REASON
        if event.error is not None:
            self.last_error = event.error
            actions.append(Log("error", "take_down_failed", {"error": event.error}))
            reason += f" (taking the peers down failed: {event.error}; run `wgmesh agent down`)"
        self.netmap, self.netmap_source, self.measurements = None, None, {}
        return [*actions, ForgetMap(), *self._status_actions(now), Stop(EXIT_REMOVED, reason)]

    def _change_line(self, change: Change) -> Log:
        event = _CHANGE_EVENTS.get(type(change), "device_changed")
        key = getattr(change, "public_key", None)
        if isinstance(key, WireGuardPublicKey):
            return Log("info", event, {"peer": self._names.get(key, "?"), "detail": str(change)})
        return Log("info", event, {"interface": self.node.interface, "detail": str(change)})

    # --- link measurements --------------------------------------------------------------------------

    def _measure(self) -> list[Action]:
        if self.netmap is None or self._measuring or self.removed:
            return []
        self._measuring = True
        return [Measure(tuple(probe_targets(self.netmap, self.settings.direct_probes)))]

    def _measured(self, event: Measured, now: float) -> list[Action]:
        self._measuring = False
        netmap = self.netmap
        if netmap is None or self.removed:
            return []
        actions: list[Action] = []
        if event.device is not None:
            self.device = event.device
        elif event.device_error is not None:
            if self._applying is None and self._retry_at is None and self._target is not None:
                self._retry_at = now + self.settings.retry_s  # the interface may have gone: apply again
            if self.last_error != event.device_error:
                self.last_error = event.device_error
                fields = {"interface": self.node.interface, "error": event.device_error}
                actions.append(Log("error", "device_unreadable", fields))
        if event.probe_error is None:
            self._probe_error = None
        elif self._probe_error != event.probe_error:
            self._probe_error = event.probe_error
            actions.append(Log("warning", "probe_failed", {"error": event.probe_error}))
        self.measurements = measure_links(netmap, self.device, event.probes, now, self.settings.direct_probes)
        actions += self._status_actions(now)
        if self.measurements and not self._reporting:
            self._reporting = True
            actions.append(ReportLinks(LinkReport(measurements=list(self.measurements.values()))))
        return actions

    # --- time ---------------------------------------------------------------------------------------

    def _clock(self, now: float) -> None:
        """Keep timers relative when the clock steps back (see the module rules)."""
        last, self._last_now = self._last_now, now
        if last is None or now >= last:
            return
        step = now - last
        if self._poll_at is not None:
            self._poll_at += step
        if self._measure_at is not None:
            self._measure_at += step
        if self._retry_at is not None:
            self._retry_at += step
