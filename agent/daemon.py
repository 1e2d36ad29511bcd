"""The agent daemon: enroll once, then follow the network map and keep the host's interface matching it.

Every I/O edge is injected (`AgentEdges`): the WireGuard backend, the host network (addresses, routes,
forwarding), the link prober, the HTTP transport to the controller, the clock and the log. Production
wires real ones in `agent.cli`; component tests wire the fake backend and an in-process controller.

Rules:
- The data plane never waits for the controller: the cached map is applied at start, and a controller
  that goes away changes nothing on the interface.
- Apply is reconcile: read the device, diff against the desired state, apply only the difference.
  A restart therefore changes nothing and keeps every session.
- The connection state (connecting / connected / disconnected / rejected) is logged once per change,
  never once per retry; retries back off exponentially with jitter.
- Link measurements describe the DIRECT link: a peer routed through a relay is reported with
  rtt/loss None and only its handshake age.
- The agent asks for deltas (`delta=1`) against the last map the controller sent; a delta that does
  not apply to that map is dropped and the full map asked for. netmap.json always holds the full map.
- status.json is rewritten (atomically) whenever something in it other than its timestamp changes;
  p2p-directory.json whenever the applied map changes.
"""

from __future__ import annotations

import asyncio
import base64
import os
import socket
import time
from collections.abc import Awaitable, Callable, Sequence
from dataclasses import dataclass, field
from datetime import UTC, datetime
from pathlib import Path
from typing import Literal, Protocol

import httpx

from agent.backends.base import Backend, BackendError
from agent.backoff import Backoff
from agent.client import ControllerClient, ControllerError, ControllerRejected, ControllerUnreachable
from agent.desired import DesiredState, IPInterface, build_desired, name_endpoints
from agent.device import Device, IPNetwork
from agent.eventlog import EventLog
from agent.links import measure_links, peer_views, probe_targets
from agent.nft import Nftables, NftError, apply_firewall
from agent.probe import Prober
from agent.reconcile import (
    Change,
    FwmarkChanged,
    ListenPortChanged,
    PeerAdded,
    PeerChanged,
    PeerRemoved,
    PrivateKeyRotated,
    diff,
)
from agent.state import (
    AgentState,
    BackendName,
    HostKeys,
    StateError,
    StatePaths,
    load_credential,
    load_netmap,
    load_or_create_keys,
    save_credential,
    save_netmap,
)
from agent.status import AgentStatus, ControllerState
from keys.types import WireGuardPublicKey
from p2p.directory import directory_from_netmap, write_directory
from wire.delta import DeltaMismatch, apply_delta
from wire.models import (
    EnrollRequest,
    LinkMeasurement,
    LinkReport,
    NetMap,
    NetMapDelta,
    NodeId,
    enroll_signing_bytes,
)

DEFAULT_INTERFACE = "wg0"
DEFAULT_LISTEN_PORT = 51820
DEFAULT_PROBE_INTERVAL_S = 10.0
DEFAULT_POLL_TIMEOUT_S = 30.0
RESOLVE_TIMEOUT_S = 5.0


class AgentError(RuntimeError):
    """The agent cannot start; the message is one line saying what to do."""


class HostNetwork(Protocol):
    """The host side of the interface: its addresses, the routes into it, and IP forwarding."""

    async def apply(
        self, ifname: str, addresses: Sequence[IPInterface], routes: Sequence[IPNetwork], forward: bool
    ) -> list[str]:
        """Make `ifname` carry exactly `addresses` and `routes` and set forwarding; return one text per
        change made (empty: nothing to do)."""
        ...


class InMemoryHostNetwork:
    """The host network of a dry run (`--backend fake`): remembers what it was asked for, touches
    nothing, and reports changes the way the real one does."""

    def __init__(self) -> None:
        self.addresses: dict[str, tuple[IPInterface, ...]] = {}
        self.routes: dict[str, tuple[IPNetwork, ...]] = {}
        self.forward: dict[str, bool] = {}

    async def apply(
        self, ifname: str, addresses: Sequence[IPInterface], routes: Sequence[IPNetwork], forward: bool
    ) -> list[str]:
        changes = []
        old_addresses, old_routes = self.addresses.get(ifname, ()), self.routes.get(ifname, ())
        changes += [f"address {a} removed" for a in old_addresses if a not in addresses]
        changes += [f"address {a} added" for a in addresses if a not in old_addresses]
        changes += [f"route {r} removed" for r in old_routes if r not in routes]
        changes += [f"route {r} added" for r in routes if r not in old_routes]
        if self.forward.get(ifname, False) != forward:
            changes.append(f"forwarding {'on' if forward else 'off'}")
        self.addresses[ifname], self.routes[ifname] = tuple(addresses), tuple(routes)
        self.forward[ifname] = forward
        return changes


@dataclass(frozen=True)
class AgentSettings:
    """What the operator chose on the command line; None means 'what the state dir says, else default'."""

    state_dir: Path
    controller_url: str | None = None
    token: str | None = None
    interface: str | None = None
    hostname: str | None = None
    listen_port: int = DEFAULT_LISTEN_PORT
    endpoints: tuple[str, ...] = ()
    probe_interval_s: float = DEFAULT_PROBE_INTERVAL_S
    poll_timeout_s: float = DEFAULT_POLL_TIMEOUT_S
    down_on_stop: bool = False


@dataclass
class AgentEdges:
    backend: Backend
    host_network: HostNetwork
    prober: Prober
    log: EventLog
    transport: httpx.AsyncBaseTransport | None = None  # None: real sockets
    firewall: Nftables | None = None  # None: the host's policy firewall is not managed here
    clock: Callable[[], float] = time.time
    backoff: Backoff = field(default_factory=Backoff)


_CHANGE_EVENTS: dict[type, str] = {
    PeerAdded: "peer_added",
    PeerRemoved: "peer_removed",
    PeerChanged: "peer_changed",
    ListenPortChanged: "listen_port_changed",
    FwmarkChanged: "fwmark_changed",
    PrivateKeyRotated: "private_key_set",
}


def _short_error(error: BaseException) -> str:
    text = str(error).strip().splitlines()
    return text[0] if text else type(error).__name__


class Agent:
    """One host's agent. `start()` enrolls or loads, attaches the interface and applies the cached map;
    `serve(stop)` follows the controller until `stop` is set; `shutdown()` leaves (or removes) the
    interface and marks the status stopped. `run(stop)` does all three."""

    def __init__(self, settings: AgentSettings, edges: AgentEdges) -> None:
        self.settings = settings
        self.edges = edges
        self.log = edges.log
        self.paths = StatePaths(settings.state_dir)
        self.keys: HostKeys | None = None
        self.state: AgentState | None = None
        self.client: ControllerClient | None = None
        self.netmap: NetMap | None = None
        self.netmap_source: str | None = None
        self.controller: ControllerState = "connecting"
        self.controller_since: float | None = None
        self.last_error: str | None = None
        self.measurements: dict[NodeId, LinkMeasurement] = {}
        self._device: Device | None = None
        self._pending: tuple[NetMap, str] | None = None  # a map the data plane refused, to retry
        self._names: dict[WireGuardPublicKey, str] = {}
        self._status: AgentStatus | None = None
        self._apply_lock = asyncio.Lock()
        self._disconnected_at: float | None = None
        self._report_error: str | None = None  # last refused link report, logged once
        self._probe_error: str | None = None  # last probe failure, logged once

    @property
    def ifname(self) -> str:
        assert self.state is not None
        return self.state.interface

    # --- lifecycle ----------------------------------------------------------------------------------

    async def run(self, stop: asyncio.Event) -> None:
        """start, serve until `stop`, shutdown. A stop during start (say, a slow enrollment) ends it."""
        starting = asyncio.create_task(self.start(), name="start")
        stopping = asyncio.create_task(stop.wait(), name="stop")
        try:
            await asyncio.wait([starting, stopping], return_when=asyncio.FIRST_COMPLETED)
        finally:
            stopping.cancel()
        if not starting.done():
            starting.cancel()
            await asyncio.gather(starting, return_exceptions=True)
            await self.shutdown()
            return
        starting.result()  # raises AgentError when the start failed
        try:
            await self.serve(stop)
        finally:
            await self.shutdown()

    async def start(self) -> None:
        """Keys, enrollment (first start only), interface, and the cached map. AgentError on failure."""
        try:
            self.keys, created = load_or_create_keys(self.settings.state_dir)
        except StateError as e:
            raise AgentError(_short_error(e)) from None
        except OSError as e:
            raise AgentError(
                f"cannot use state directory {self.settings.state_dir}: {e.strerror or e}"
            ) from None
        self.log.add_secret(self.keys.wireguard)
        self.log.add_secret(self.keys.identity)
        if self.settings.token:
            self.log.add_secret(self.settings.token)
        if created:
            self.log.info(
                "keys_generated",
                state_dir=self.settings.state_dir,
                wg_public_key=self.keys.wireguard.public_key(),
            )
        self.state = await self._load_or_enroll()
        self.log.node = self.state.name
        credential = self._load_credential()
        self.log.add_secret(credential)
        self.client = ControllerClient(
            self.state.controller_url, credential=credential, transport=self.edges.transport
        )
        try:
            await asyncio.to_thread(self.edges.backend.create, self.ifname)
        except BackendError as e:
            raise AgentError(f"cannot create interface {self.ifname}: {_short_error(e)}") from None
        self.log.info(
            "started",
            interface=self.ifname,
            backend=self.edges.backend.name,
            node_id=self.state.node_id,
            tunnel_address=self.state.tunnel_address,
            controller=self.state.controller_url,
            pid=os.getpid(),
        )
        try:
            cached = load_netmap(self.settings.state_dir)
        except StateError as e:
            self.log.warning("cache_unreadable", error=_short_error(e))
            cached = None
        if cached is not None:
            await self.apply(cached, source="cache")
        self._write_status()

    async def serve(self, stop: asyncio.Event) -> None:
        tasks = [
            asyncio.create_task(self._supervised("netmap", self._follow_netmap), name="netmap"),
            asyncio.create_task(self._supervised("links", self._measure_links), name="links"),
        ]
        try:
            await stop.wait()
        finally:
            for task in tasks:
                task.cancel()
            await asyncio.gather(*tasks, return_exceptions=True)

    async def _supervised(self, name: str, loop: Callable[[], Awaitable[None]]) -> None:
        """Run one of the agent's loops for as long as the agent serves. A loop that dies of an
        unexpected error is logged (once per distinct error) and started again after a pause: one bug
        must not take the mesh's agent down."""
        last: str | None = None
        while True:
            try:
                await loop()
            except Exception as e:  # the supervisor's whole job; asyncio.CancelledError passes through
                error = f"{type(e).__name__}: {_short_error(e)}"
                if error != last:
                    self.log.error("internal_error", loop=name, error=error, note="restarting the loop")
                    last = error
                await asyncio.sleep(max(1.0, self.settings.probe_interval_s))

    async def shutdown(self) -> None:
        async with self._apply_lock:  # let an apply running in a worker thread finish first
            pass
        if self.client is not None:
            await self.client.aclose()
        if self.state is None:
            return
        if self.settings.down_on_stop:
            try:
                await asyncio.to_thread(self.edges.backend.delete, self.ifname)
                self.log.info("interface_removed", interface=self.ifname)
            except BackendError as e:
                self.log.error("interface_remove_failed", interface=self.ifname, error=_short_error(e))
            if self.edges.firewall is not None:
                try:
                    for fw in await apply_firewall(self.edges.firewall, None, self.ifname):
                        self.log.info("firewall_changed", interface=self.ifname, detail=str(fw))
                except NftError as e:
                    self.log.error("firewall_remove_failed", interface=self.ifname, error=_short_error(e))
        self._write_status(running=False)
        self.log.info("stopped", interface=self.ifname, interface_kept=not self.settings.down_on_stop)

    # --- enrollment ---------------------------------------------------------------------------------

    async def _load_or_enroll(self) -> AgentState:
        assert self.keys is not None
        try:
            state = AgentState.load(self.settings.state_dir)
        except StateError as e:
            if self.paths.node.exists():
                raise AgentError(_short_error(e)) from None
            return await self._enroll()
        if self.settings.token:
            self.log.info("already_enrolled", name=state.name, node_id=state.node_id, note="--token ignored")
        update: dict[str, object] = {"backend": self._backend_name()}
        if self.settings.controller_url and self.settings.controller_url != state.controller_url:
            update["controller_url"] = self.settings.controller_url
        if self.settings.interface and self.settings.interface != state.interface:
            update["interface"] = self.settings.interface
        new_state = state.model_copy(update=update)
        if new_state != state:
            new_state.save(self.settings.state_dir)
        return new_state

    def _backend_name(self) -> BackendName:
        name = self.edges.backend.name
        if name not in ("kernel", "userspace", "fake"):
            raise AgentError(f"backend {name!r} is not one the state dir can record")
        return name  # type: ignore[return-value]  # checked just above

    async def _enroll(self) -> AgentState:
        assert self.keys is not None
        url, token = self.settings.controller_url, self.settings.token
        if not url or not token:
            raise AgentError(
                f"this host has not enrolled yet ({self.paths.node} is missing): "
                "give --controller URL and --token PRE-AUTH-KEY"
            )
        hostname = self.settings.hostname or "localhost"
        unsigned = EnrollRequest(
            preauth_key=token,
            hostname=hostname,
            wg_public_key=self.keys.wireguard.public_key(),
            identity_public_key=self.keys.identity.public_key(),
            endpoints=list(self.settings.endpoints),
            listen_port=self.settings.listen_port,
            signature="",
        )
        signature = base64.b64encode(self.keys.identity.sign(enroll_signing_bytes(unsigned))).decode()
        request = unsigned.model_copy(update={"signature": signature})
        async with ControllerClient(url, transport=self.edges.transport) as client:
            try:
                response = await client.enroll(request)
            except ControllerError as e:
                raise AgentError(f"enrollment with {url} failed: {_short_error(e)}") from None
        self.log.add_secret(response.node_credential)
        save_credential(self.settings.state_dir, response.node_credential)
        state = AgentState(
            node_id=response.node_id,
            name=response.name,
            tunnel_address=response.tunnel_address,
            mesh_cidr=response.mesh_cidr,
            controller_url=url,
            interface=self.settings.interface or DEFAULT_INTERFACE,
            backend=self._backend_name(),
            listen_port=self.settings.listen_port,
            enrolled_at=datetime.fromtimestamp(self.edges.clock(), UTC),
        )
        state.save(self.settings.state_dir)  # written last: its presence means "enrolled"
        self.log.node = state.name
        self.log.info(
            "enrolled",
            node_id=state.node_id,
            tunnel_address=state.tunnel_address,
            mesh_cidr=state.mesh_cidr,
            controller=url,
        )
        return state

    def _load_credential(self) -> str:
        try:
            return load_credential(self.settings.state_dir)
        except StateError as e:
            raise AgentError(_short_error(e)) from None

    # --- applying a map -----------------------------------------------------------------------------

    async def apply(self, netmap: NetMap, source: str) -> bool:
        """Make the host match `netmap`. Returns False (and logs why) when the data plane refused."""
        assert self.keys is not None and self.state is not None
        async with self._apply_lock:
            for peer in netmap.peers:
                self._names[peer.wg_public_key] = peer.name
            try:
                resolved = await self._resolve(name_endpoints(netmap))
                desired = build_desired(netmap, self.keys.wireguard, resolved)
                changes = await asyncio.to_thread(self._reconcile_device, desired)
            except (BackendError, OSError, ValueError) as e:
                return self._apply_failed(netmap, source, e)
            for change in changes:  # logged now: they are made even if the host network fails next
                self._log_change(change)
            try:
                host_changes = await self.edges.host_network.apply(
                    self.ifname, desired.addresses, desired.routes, desired.forward
                )
            except (OSError, ValueError) as e:
                return self._apply_failed(netmap, source, e)
            for text in host_changes:
                self.log.info("host_network_changed", interface=self.ifname, detail=text)
            firewall_changes = []
            if self.edges.firewall is not None:
                try:
                    firewall_changes = await apply_firewall(self.edges.firewall, netmap.policy, self.ifname)
                except NftError as e:
                    return self._apply_failed(netmap, source, e)
            for fw in firewall_changes:
                self.log.info("firewall_changed", interface=self.ifname, detail=str(fw))
            total = len(changes) + len(host_changes) + len(firewall_changes)
            if self.netmap is None or netmap.serial != self.netmap.serial or total:
                self.log.info(
                    "netmap_applied",
                    serial=netmap.serial,
                    source=source,
                    peers=len(netmap.peers),
                    changes=total,
                    forward=netmap.forward,
                )
            previous = self.netmap
            self.netmap, self.netmap_source = netmap, source
            self.last_error = None
            self._pending = None
            if source == "controller" and netmap != previous:
                try:
                    save_netmap(self.settings.state_dir, netmap)
                except OSError as e:
                    self.log.error("cache_write_failed", path=self.paths.netmap, error=_short_error(e))
            if netmap != previous or not self.paths.p2p_directory.exists():
                self._write_directory(netmap)
            self._write_status()
            return True

    def _apply_failed(self, netmap: NetMap, source: str, error: BaseException) -> bool:
        text = _short_error(error)
        if text != self.last_error:  # a retry that fails the same way is not news
            self.log.error("apply_failed", serial=netmap.serial, source=source, error=text)
        self.last_error = text
        self._pending = (netmap, source)
        self._write_status()
        return False

    def _write_directory(self, netmap: NetMap) -> None:
        """STATE_DIR/p2p-directory.json: who is in the mesh, for p2p on this host."""
        assert self.keys is not None
        try:
            directory = directory_from_netmap(netmap, self.keys.identity.public_key())
            write_directory(self.paths.p2p_directory, directory)
        except (OSError, ValueError) as e:
            self.log.error("p2p_directory_write_failed", path=self.paths.p2p_directory, error=_short_error(e))

    def _reconcile_device(self, desired: DesiredState) -> tuple[Change, ...]:
        """In a worker thread: read, diff, apply the difference. Creates the interface if it vanished."""
        backend, ifname = self.edges.backend, self.ifname
        if not backend.exists(ifname):
            backend.create(ifname)
        current = backend.read(ifname)
        reconciliation = diff(current, desired.device)
        if not reconciliation.is_empty():
            backend.apply(ifname, reconciliation.update)
        self._device = backend.read(ifname) if not reconciliation.is_empty() else current
        return reconciliation.changes

    def _log_change(self, change: Change) -> None:
        event = _CHANGE_EVENTS.get(type(change), "device_changed")
        key = getattr(change, "public_key", None)
        if isinstance(key, WireGuardPublicKey):
            self.log.info(event, peer=self._names.get(key, "?"), detail=str(change))
        else:
            self.log.info(event, interface=self.ifname, detail=str(change))

    async def _resolve(self, endpoints: list[str]) -> dict[str, str | None]:
        """Host-name endpoints to 'ip:port'; None for a name that does not resolve (logged)."""
        loop = asyncio.get_running_loop()
        result: dict[str, str | None] = {}
        for endpoint in endpoints:
            host, _, port = endpoint.rpartition(":")
            try:
                infos = await asyncio.wait_for(
                    loop.getaddrinfo(host, int(port), type=socket.SOCK_DGRAM), RESOLVE_TIMEOUT_S
                )
                address = str(infos[0][4][0])
                result[endpoint] = f"[{address}]:{port}" if ":" in address else f"{address}:{port}"
            except (OSError, TimeoutError, IndexError) as e:
                self.log.warning("endpoint_unresolved", endpoint=endpoint, error=_short_error(e))
                result[endpoint] = None
        return result

    # --- following the controller -------------------------------------------------------------------

    async def _follow_netmap(self) -> None:
        assert self.client is not None
        fresh = True  # after start and after a failure, ask for the whole map right away
        backoff = self.edges.backoff
        # The last map the controller sent (deltas applied), applied or not: the base of the next delta.
        received: NetMap | None = None
        while True:
            # Long-poll from the last map received, not the last applied: a map the data plane refused
            # is retried by the link loop, never fetched again in a tight loop.
            since = 0 if fresh or received is None else received.serial
            timeout = 0.0 if fresh else self.settings.poll_timeout_s
            try:
                held = self.netmap.policy if self.netmap is not None else None
                answer = await self.client.netmap_update(
                    since=since, timeout_s=timeout, policy_version=None if held is None else held.version
                )
            except ControllerRejected as e:
                self._set_controller("rejected", e)
                fresh = True
                await asyncio.sleep(backoff.next_delay())
                continue
            except ControllerError as e:
                self._set_controller("disconnected", e)
                fresh = True
                await asyncio.sleep(backoff.next_delay())
                continue
            backoff.reset()
            fresh = False
            self._set_controller("connected")
            if answer is None:
                continue
            if isinstance(answer, NetMapDelta):
                try:
                    netmap = apply_delta(received, answer) if received is not None else None
                except DeltaMismatch:
                    netmap = None
                if netmap is None:
                    # Not a delta to the map held: drop it and ask for the whole map.
                    self.log.warning(
                        "netmap_delta_dropped",
                        base_serial=answer.base_serial,
                        held_serial=received.serial if received is not None else None,
                        note="asking for the full map",
                    )
                    fresh = True
                    continue
            else:
                netmap = answer
            received = netmap
            await self.apply(netmap, source="controller")

    def _set_controller(self, state: ControllerState, error: BaseException | None = None) -> None:
        """Record the connection state; log and write status only when it changes."""
        if state == self.controller:
            return
        now = self.edges.clock()
        previous, self.controller, self.controller_since = self.controller, state, now
        url = self.state.controller_url if self.state else None
        if state == "connected":
            if previous == "connecting":
                self.log.info("controller_connected", controller=url)
            else:
                away = now - self._disconnected_at if self._disconnected_at is not None else None
                self.log.info("controller_reconnected", controller=url, away_s=away)
            self._disconnected_at = None
        elif state == "disconnected":
            if self._disconnected_at is None:
                self._disconnected_at = now
            note = "keeping the data plane; retrying with backoff"
            if previous == "connecting" and self.netmap_source == "cache":
                note = "running from the cached map; retrying with backoff"
            self.log.warning(
                "controller_disconnected",
                controller=url,
                error=_short_error(error) if error else None,
                note=note,
            )
        else:
            if self._disconnected_at is None:
                self._disconnected_at = now
            self.log.error(
                "controller_rejected",
                controller=url,
                error=_short_error(error) if error else None,
                note="this node's credential is refused (removed from the mesh?); retrying with backoff",
            )
        self._write_status()

    # --- link measurements --------------------------------------------------------------------------

    async def _measure_links(self) -> None:
        assert self.client is not None
        loop = asyncio.get_running_loop()
        interval = self.settings.probe_interval_s
        next_round = loop.time() + interval
        while True:
            # a steady cadence: a slow round shortens the next wait instead of shifting every later one
            await asyncio.sleep(max(0.0, next_round - loop.time()))
            next_round = max(next_round + interval, loop.time())
            if self._pending is not None:
                await self.apply(*self._pending)
            if self.netmap is None:
                continue
            report = await self.measure()
            self._write_status()
            if not report.measurements:
                continue
            try:
                await self.client.report_links(report)
            except ControllerRejected as e:
                if e.status in (401, 403):
                    self._set_controller("rejected", e)
                elif self._report_error != e.detail:
                    self._report_error = e.detail
                    self.log.warning("link_report_refused", error=_short_error(e))
            except ControllerUnreachable as e:
                self._set_controller("disconnected", e)
            else:
                self._report_error = None
                self._set_controller("connected")

    async def measure(self) -> LinkReport:
        """Probe the directly routed peers and read handshake ages from the device."""
        netmap = self.netmap
        assert netmap is not None
        try:
            self._device = await asyncio.to_thread(self.edges.backend.read, self.ifname)
        except BackendError as e:
            self._pending = self._pending or (netmap, self.netmap_source or "cache")
            if self.last_error != _short_error(e):
                self.last_error = _short_error(e)
                self.log.error("device_unreadable", interface=self.ifname, error=self.last_error)
        try:
            results = await self.edges.prober.probe(probe_targets(netmap))
        except OSError as e:  # probing is best effort: report handshake ages anyway
            if self._probe_error != _short_error(e):
                self._probe_error = _short_error(e)
                self.log.warning("probe_failed", error=self._probe_error)
            results = {}
        else:
            self._probe_error = None
        self.measurements = measure_links(netmap, self._device, results, self.edges.clock())
        return LinkReport(measurements=list(self.measurements.values()))

    # --- status -------------------------------------------------------------------------------------

    def build_status(self, running: bool = True) -> AgentStatus:
        assert self.state is not None
        netmap = self.netmap
        peers = peer_views(netmap, self._device, self.measurements) if netmap is not None else []
        return AgentStatus(
            node_id=self.state.node_id,
            name=netmap.node.name if netmap is not None else self.state.name,
            tunnel_address=self.state.tunnel_address,
            mesh_cidr=self.state.mesh_cidr,
            interface=self.ifname,
            backend=self.edges.backend.name,
            controller_url=self.state.controller_url,
            controller=self.controller,
            controller_since=self.controller_since,
            serial=netmap.serial if netmap is not None else None,
            netmap_source=self._source_label(),
            forward=netmap.forward if netmap is not None else False,
            running=running,
            pid=os.getpid() if running else None,
            last_error=self.last_error,
            updated_at=self.edges.clock(),
            peers=peers,
        )

    def _source_label(self) -> Literal["controller", "cache"] | None:
        if self.netmap is None:
            return None
        return "cache" if self.netmap_source == "cache" else "controller"

    def _write_status(self, running: bool = True) -> None:
        if self.state is None:
            return
        status = self.build_status(running)
        if status.same_as(self._status):
            return
        try:
            status.save(self.paths.status)
        except OSError as e:
            self.log.error("status_write_failed", path=self.paths.status, error=_short_error(e))
            return
        self._status = status
