"""The agent daemon: the driver of `AgentCore`. It loads or enrolls the host, attaches the interface,
then carries out the core's actions (agent.actions) with the injected I/O edges and feeds each outcome
back, waking the core at its deadline.

Every I/O edge is injected (`AgentEdges`): the WireGuard backend, the host network (agent.hostnet), the
link prober, the HTTP transport to the controller, the clock and the log. Production wires real ones in
`agent.cli`; component tests wire the fake backend and an in-process controller.

Rules:
- Only this module (and the edges) do I/O; every decision is the core's.
- Backends and the host network are synchronous: they run in a worker thread, one apply at a time (the
  core never asks for two).
- An edge that fails the way edges fail (BackendError, OSError, ControllerError) is an outcome the core
  handles; anything else is a bug, reported to the core as `Crashed` (logged once, that part resumes
  after a pause): one bug must not take the mesh's agent down.
- Stopping cancels polls, probes and reports at once; an apply in its worker thread is waited for.
"""

from __future__ import annotations

import asyncio
import contextlib
import dataclasses
import os
import socket
import time
from collections import deque
from collections.abc import Callable, Coroutine
from dataclasses import dataclass, field
from ipaddress import ip_address
from typing import Any

import httpx

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
from agent.backends.base import Backend, BackendError
from agent.backoff import RetryBackoff
from agent.client import ControllerClient, ControllerError, ControllerRejected
from agent.core import AgentCore, CoreSettings
from agent.desired import DesiredState
from agent.device import Device
from agent.enrollment import load_or_enroll, trusted_verify
from agent.eventlog import EventLog
from agent.hostnet.base import HostNetwork
from agent.links import ProbeResult, probe_targets
from agent.nft import Nftables, NftError, apply_firewall
from agent.probe import Prober
from agent.reconcile import Change, diff
from agent.rotation_channel import Message as RotationMessage
from agent.rotation_channel import RotationChannel
from agent.rotation_driver import RotationDriver, RotationEdges, swap_changed_keys
from agent.settings import AgentError, AgentSettings, ipv6_usable, short_error
from agent.state import (
    AgentState,
    HostKeys,
    StateError,
    StatePaths,
    load_credential,
    load_netmap,
    load_or_create_keys,
    save_netmap,
)
from agent.status import AgentStatus
from keys.types import WireGuardPrivateKey
from wire.models import IPAddress, LinkReport, NetMap
from wire.rotation import ROTATION_PORT

__all__ = ["Agent", "AgentEdges", "AgentError", "AgentSettings"]

RESOLVE_TIMEOUT_S = 5.0
ROTATION_TICK_S = 0.5


@dataclass
class AgentEdges:
    backend: Backend
    host_network: HostNetwork
    prober: Prober
    log: EventLog
    transport: httpx.AsyncBaseTransport | None = None  # None: real sockets
    clock: Callable[[], float] = time.time
    backoff: RetryBackoff = field(default_factory=RetryBackoff)
    ready: Callable[[], None] = lambda: None  # called after every applied map (systemd READY=1)
    firewall: Nftables | None = None  # the policy firewall (agent.nft); None: not managed here


class Agent:
    """One host's agent. `start()` enrolls or loads, attaches the interface and applies the cached map;
    `serve(stop)` follows the controller until `stop` is set (or the core stops); `shutdown()` leaves
    (or removes) the interface and marks the status stopped. `run(stop)` does all three and returns the
    exit code."""

    def __init__(self, settings: AgentSettings, edges: AgentEdges) -> None:
        self.settings = settings
        self.edges = edges
        self.log = edges.log
        self.paths = StatePaths(settings.state_dir)
        self.keys: HostKeys | None = None
        self.state: AgentState | None = None
        self.client: ControllerClient | None = None
        self.core: AgentCore | None = None
        self.stopped: Stop | None = None  # the core asked to stop
        self._tasks: dict[asyncio.Task[Input], Action] = {}
        self._inbox: deque[Input] = deque()
        self._wake = asyncio.Event()
        self._closing = False
        # key rotation (agent.rotation_driver): device operations and applies take turns on this lock
        self.rotation: RotationDriver | None = None
        self._channel: RotationChannel | None = None
        self._device_lock = asyncio.Lock()
        self._side_tasks: set[asyncio.Task[None]] = set()
        self._last_status: AgentStatus | None = None

    @property
    def netmap(self) -> NetMap | None:
        """The map applied last."""
        return self.core.netmap if self.core is not None else None

    @property
    def last_status(self) -> AgentStatus | None:
        """The status written last (None: none yet); readable from any thread (it is immutable)."""
        return self._last_status

    @property
    def ifname(self) -> str:
        assert self.state is not None
        return self.state.interface

    # --- lifecycle ----------------------------------------------------------------------------------

    async def run(self, stop: asyncio.Event) -> int:
        """start, serve until `stop`, shutdown; the exit code. A stop during start ends it."""
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
            return 0
        starting.result()  # raises AgentError when the start failed
        try:
            await self.serve(stop)
        finally:
            await self.shutdown()
        return self.stopped.exit_code if self.stopped is not None else 0

    async def start(self) -> None:
        """Keys, enrollment (first start only), interface, and the cached map. AgentError on failure."""
        try:
            self.keys, created = load_or_create_keys(self.settings.state_dir)
        except StateError as e:
            raise AgentError(short_error(e)) from None
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
        backend = self.edges.backend
        self.state = await load_or_enroll(
            self.settings, self.keys, backend.name, self.log, self.edges.transport, self.edges.clock()
        )
        self.log.node = self.state.name
        try:
            credential = load_credential(self.settings.state_dir)
        except StateError as e:
            raise AgentError(short_error(e)) from None
        self.log.add_secret(credential)
        self.client = ControllerClient(
            self.state.controller_url,
            credential=credential,
            transport=self.edges.transport,
            verify=trusted_verify(self.settings),
            on_target=self._replica_changed,
        )
        try:
            await asyncio.to_thread(backend.create, self.ifname)
        except BackendError as e:
            raise AgentError(f"cannot create interface {self.ifname}: {short_error(e)}") from None
        self.edges.host_network.up(self.ifname)
        self.log.info(
            "started",
            interface=self.ifname,
            backend=backend.name,
            node_id=self.state.node_id,
            tunnel_address=self.state.tunnel_address,
            controller=self.state.controller_url,
            pid=os.getpid(),
        )
        try:
            cached = load_netmap(self.settings.state_dir)
        except StateError as e:
            self.log.warning("cache_unreadable", error=short_error(e))
            cached = None
        # A rotation under way resumes (or aborts) before the cached map is applied, so the map is
        # applied with the key the device runs.
        await self._start_rotation(cached)
        settings = CoreSettings(
            probe_interval_s=self.settings.probe_interval_s,
            poll_timeout_s=self.settings.poll_timeout_s,
            direct_probes=ipv6_usable()
            if self.settings.direct_probes is None
            else self.settings.direct_probes,
        )
        self.core = AgentCore(
            self.state, backend.name, self.keys.wireguard, settings, self.edges.backoff, os.getpid()
        )
        self._execute(self.core.start(cached, self.edges.clock()))
        await self._pump(lambda: not self._tasks and not self._inbox)

    async def serve(self, stop: asyncio.Event) -> None:
        """Follow the controller until `stop` is set or the core stops."""
        assert self.core is not None
        watcher = asyncio.create_task(stop.wait(), name="stop")
        watcher.add_done_callback(lambda _: self._wake.set())
        ticker = asyncio.create_task(self._rotation_ticks(), name="rotation-ticks")
        try:
            self._execute(self.core.serve(self.edges.clock()))
            await self._pump(lambda: stop.is_set() or self.stopped is not None)
        finally:
            watcher.cancel()
            ticker.cancel()
            for task in list(self._side_tasks):
                task.cancel()
            await asyncio.gather(ticker, *self._side_tasks, return_exceptions=True)
            await self._settle()

    async def shutdown(self) -> None:
        await self._settle()
        if self.client is not None:
            await self.client.aclose()
            self.client = None
        if self.state is None or self.core is None:
            return
        if self.settings.down_on_stop:
            try:
                await asyncio.to_thread(self.edges.backend.delete, self.ifname)
                self.log.info("interface_removed", interface=self.ifname)
            except BackendError as e:
                self.log.error("interface_remove_failed", interface=self.ifname, error=short_error(e))
            if self.edges.firewall is not None:
                try:
                    for change in await asyncio.to_thread(
                        apply_firewall, self.edges.firewall, None, self.ifname
                    ):
                        self.log.info("firewall_changed", interface=self.ifname, detail=str(change))
                except NftError as e:
                    self.log.error("firewall_remove_failed", interface=self.ifname, error=short_error(e))
        self.edges.host_network.close()
        if self._channel is not None:
            self._channel.close()
            self._channel = None
        self._execute(self.core.shutdown(self.edges.clock(), interface_kept=not self.settings.down_on_stop))

    # --- the loop -----------------------------------------------------------------------------------

    async def _pump(self, done: Callable[[], bool]) -> None:
        """Feed outcomes to the core and tick it at its deadline until `done()`."""
        core, clock = self.core, self.edges.clock
        assert core is not None
        while True:
            self._wake.clear()
            while self._inbox:
                self._execute(core.handle(self._inbox.popleft(), clock()))
            due = core.deadline()
            if due is not None and clock() >= due:
                self._execute(core.tick(clock()))
                continue
            if done():
                return
            timeout = None if due is None else max(0.001, due - clock())
            with contextlib.suppress(TimeoutError):
                async with asyncio.timeout(timeout):  # not wait_for: see agent.probe
                    await self._wake.wait()

    async def _settle(self) -> None:
        """Cancel what can be cancelled, wait for applies in their threads, and take their outcomes."""
        self._closing = True
        for task, action in list(self._tasks.items()):
            if not isinstance(action, Apply):
                task.cancel()
        while self._tasks:
            await asyncio.gather(*self._tasks, return_exceptions=True)
        assert self.core is not None or not self._inbox
        while self._inbox and self.core is not None:
            self._execute(self.core.handle(self._inbox.popleft(), self.edges.clock()))
        self._closing = False

    def _execute(self, actions: list[Action]) -> None:
        for action in actions:
            match action:
                case Log(level=level, event=event, fields=fields):
                    getattr(self.log, level)(event, **fields)
                case WriteStatus(status=status):
                    self._write_status(status)
                case SaveCache(netmap=netmap):
                    try:
                        save_netmap(self.settings.state_dir, netmap)
                    except OSError as e:
                        self.log.error("cache_write_failed", path=self.paths.netmap, error=short_error(e))
                case WriteDirectory(netmap=netmap, changed=changed):
                    if changed or not self.paths.p2p_directory.exists():
                        self._write_directory(netmap)
                    self._map_applied(netmap)
                case ForgetMap():
                    for path in (self.paths.netmap, self.paths.p2p_directory):
                        path.unlink(missing_ok=True)
                case Ready():
                    self.edges.ready()
                case Stop():
                    self.stopped = action
                case Poll() | Resolve() | Apply() | Measure() | ReportLinks():
                    self._spawn(action)

    def _spawn(self, action: Action) -> None:
        if self._closing:
            return
        task = asyncio.create_task(self._carry_out(action), name=type(action).__name__)
        self._tasks[task] = action
        task.add_done_callback(self._finished)

    def _finished(self, task: asyncio.Task[Input]) -> None:
        self._tasks.pop(task, None)
        if not task.cancelled():
            self._inbox.append(task.result())  # _carry_out never raises
        self._wake.set()

    async def _carry_out(self, action: Action) -> Input:
        try:
            match action:
                case Poll(since=since, timeout_s=timeout_s, policy_version=policy_version):
                    return await self._poll(since, timeout_s, policy_version)
                case Resolve(endpoints=endpoints):
                    return await self._resolve(endpoints)
                case Apply(desired=desired):
                    async with self._device_lock:
                        return await asyncio.to_thread(self._apply, desired)
                case Measure(targets=targets):
                    return await self._measure(targets)
                case ReportLinks(report=report):
                    return await self._report(report)
            raise TypeError(f"{type(action).__name__} is not an I/O action")
        except Exception as e:  # a bug: the core logs it once and resumes that part after a pause
            return Crashed(action, f"{type(e).__name__}: {short_error(e)}")

    # --- key rotation -------------------------------------------------------------------------------

    async def _start_rotation(self, cached: NetMap | None) -> None:
        assert self.state is not None and self.keys is not None and self.client is not None
        edges = RotationEdges(
            backend=self.edges.backend,
            ifname=lambda: self.ifname,
            apply_lock=self._device_lock,
            report_key=self.client.report_key,
            send=self._send_rotation,
            get_host_key=lambda: self._host_keys().wireguard,
            set_host_key=self._rekey,
            log=self.log,
            clock=self.edges.clock,
            state_dir=self.settings.state_dir,
            phase_changed=self._rotation_phase_changed,
        )
        self.rotation = RotationDriver(edges, self.state.node_id, self.keys.identity)
        if self.edges.backend.name != "fake":  # a dry run sends nothing to anyone
            try:
                self._channel = await RotationChannel.open(
                    ip_address("0.0.0.0"), ROTATION_PORT, self.rotation.on_message
                )
            except OSError as e:
                self.log.warning(
                    "rotation_channel_unavailable",
                    error=short_error(e),
                    note="peers learn new keys from maps only",
                )
        self.rotation.netmap = cached
        try:
            await self.rotation.start()
        except StateError as e:
            raise AgentError(short_error(e)) from None

    def _host_keys(self) -> HostKeys:
        assert self.keys is not None
        return self.keys

    def _rekey(self, key: WireGuardPrivateKey) -> None:
        """The host's WireGuard key is now `key`: the desired state is built with it from now on."""
        keys = self._host_keys()
        if keys.wireguard.public_key() == key.public_key():
            return
        self.keys = dataclasses.replace(keys, wireguard=key)
        if self.core is not None:
            self._execute(self.core.rekey(key, self.edges.clock()))

    def _send_rotation(self, message: RotationMessage, address: str, port: int) -> None:
        if self._channel is not None:
            self._channel.send(message, address, port)

    def _map_applied(self, netmap: NetMap) -> None:
        if self.rotation is None or self.core is None or self.core.netmap_source != "controller":
            return  # a rotation is started only by the controller's own map, never by a cached one
        rotation = self.rotation
        self._side_task(lambda: rotation.on_map(netmap))

    def _rotation_phase_changed(self) -> None:
        if self._last_status is not None:
            self._write_status(self._last_status)

    def _side_task(self, work: Callable[[], Coroutine[Any, Any, None]]) -> None:
        if self._closing:
            return
        task = asyncio.create_task(self._guarded(work), name="rotation")
        self._side_tasks.add(task)
        task.add_done_callback(self._side_tasks.discard)

    async def _guarded(self, work: Callable[[], Coroutine[Any, Any, None]]) -> None:
        try:
            await work()
        except Exception as e:  # a bug in a rotation step must not take the agent down
            self.log.error("internal_error", loop="rotation", error=f"{type(e).__name__}: {short_error(e)}")

    async def _rotation_ticks(self) -> None:
        while True:
            await asyncio.sleep(ROTATION_TICK_S)
            if self.rotation is not None:
                await self._guarded(self.rotation.tick)

    # --- the edges ----------------------------------------------------------------------------------

    async def _poll(self, since: int, timeout_s: float, policy_version: int | None = None) -> Input:
        assert self.client is not None
        try:
            answer = await self.client.netmap_update(
                since=since, timeout_s=timeout_s, policy_version=policy_version
            )
            return MapAnswered(answer)
        except ControllerRejected as e:
            return PollRefused(e.status, short_error(e))
        except ControllerError as e:
            return PollFailed(short_error(e))

    async def _resolve(self, endpoints: tuple[str, ...]) -> Resolved:
        """Host-name endpoints to 'ip:port'; None (and why) for a name that does not resolve."""
        loop = asyncio.get_running_loop()
        addresses: dict[str, str | None] = {}
        errors: dict[str, str] = {}
        for endpoint in endpoints:
            host, _, port = endpoint.rpartition(":")
            try:
                async with asyncio.timeout(RESOLVE_TIMEOUT_S):
                    infos = await loop.getaddrinfo(host, int(port), type=socket.SOCK_DGRAM)
                address = str(infos[0][4][0])
                addresses[endpoint] = f"[{address}]:{port}" if ":" in address else f"{address}:{port}"
            except (OSError, TimeoutError, IndexError) as e:
                addresses[endpoint] = None
                errors[endpoint] = short_error(e)
        return Resolved(addresses, errors)

    def _apply(self, desired: DesiredState) -> Applied:
        """In a worker thread: the device (read, diff, apply the difference; created if it vanished),
        then the host network, then the policy firewall."""
        backend, ifname = self.edges.backend, self.ifname
        changes: tuple[Change, ...] = ()
        if self.rotation is not None:
            desired = dataclasses.replace(desired, device=self.rotation.device_config(desired.device))
        try:
            if not backend.exists(ifname):
                backend.create(ifname)
            swap_changed_keys(backend, ifname, desired.device)
            current = backend.read(ifname)
            reconciliation = diff(current, desired.device)
            device: Device = current
            if not reconciliation.is_empty():
                backend.apply(ifname, reconciliation.update)
                device = backend.read(ifname)
            changes = reconciliation.changes
        except (BackendError, OSError, ValueError) as e:
            return Applied(error=short_error(e))
        try:
            host_changes = self.edges.host_network.set(desired.host)
        except (OSError, ValueError) as e:
            return Applied(changes, (), device, short_error(e))
        firewall: list[str] = []
        if self.edges.firewall is not None:
            try:
                firewall = [str(c) for c in apply_firewall(self.edges.firewall, desired.policy, ifname)]
            except NftError as e:
                return Applied(changes, tuple(host_changes), device, short_error(e))
        return Applied(changes, tuple(host_changes), device, firewall_changes=tuple(firewall))

    async def _measure(self, targets: tuple[IPAddress, ...]) -> Measured:
        device: Device | None = None
        device_error = probe_error = None
        try:
            device = await asyncio.to_thread(self.edges.backend.read, self.ifname)
        except BackendError as e:
            device_error = short_error(e)
        probes: dict[IPAddress, ProbeResult] = {}
        try:
            probes = dict(await self.edges.prober.probe(list(targets)))
        except OSError as e:  # probing is best effort: report handshake ages anyway
            probe_error = short_error(e)
        return Measured(device, probes, device_error, probe_error)

    async def _report(self, report: LinkReport) -> Input:
        assert self.client is not None
        try:
            await self.client.report_links(report)
        except ControllerRejected as e:
            return ReportRefused(e.status, short_error(e))
        except ControllerError as e:
            return ReportFailed(short_error(e))
        return Reported()

    async def measure(self) -> LinkReport:
        """One link round now: probe the directly routed peers, read handshake ages from the device;
        the report the core sends."""
        core = self.core
        assert core is not None and core.netmap is not None
        measured = await self._measure(tuple(probe_targets(core.netmap, core.settings.direct_probes)))
        self._execute(core.handle(measured, self.edges.clock()))
        return LinkReport(measurements=list(core.measurements.values()))

    def build_status(self, running: bool = True) -> AgentStatus:
        assert self.core is not None
        return self.core.status(self.edges.clock(), running)

    def _replica_changed(self, _label: str) -> None:
        """The client moved to another controller replica: the status says which, at once."""
        if self._last_status is not None:
            self._write_status(self._last_status)

    def _write_status(self, status: AgentStatus) -> None:
        self._last_status = status
        if self.rotation is not None:
            status = self.rotation.decorate(status)
        if self.client is not None:
            status = status.model_copy(update={"controller_in_use": self.client.base_url})
        try:
            status.save(self.paths.status)
        except OSError as e:
            self.log.error("status_write_failed", path=self.paths.status, error=short_error(e))

    def _write_directory(self, netmap: NetMap) -> None:
        """STATE_DIR/p2p-directory.json: who is in the mesh, for p2p on this host."""
        from p2p.directory import directory_from_netmap, write_directory

        assert self.keys is not None
        try:
            directory = directory_from_netmap(netmap, self.keys.identity.public_key())
            write_directory(self.paths.p2p_directory, directory)
        except (OSError, ValueError) as e:
            self.log.error("p2p_directory_write_failed", path=self.paths.p2p_directory, error=short_error(e))
