"""Drives key rotation on one host: runs the pure `agent.rotation.Rotation`'s actions against the
device, the state directory, the controller and the rotation channel, and plays the peer's part
(swap on a notice, ack, keep the override until the map catches up).

Every device operation runs under the agent's apply lock, so a map being applied at the same moment
never undoes a switch or a swap. On a switch the host key the agent builds its desired state from is
replaced BEFORE the device's, under that lock.
"""

from __future__ import annotations

import asyncio
import base64
from collections.abc import Awaitable, Callable
from dataclasses import dataclass
from pathlib import Path

from agent.backends.base import Backend, BackendError
from agent.client import ControllerRejected, ControllerUnreachable
from agent.device import DeviceConfig, KeySwitch, endpoint_address
from agent.eventlog import EventLog
from agent.rotation import (
    Action,
    AdoptKey,
    AlreadySwapped,
    Event,
    Forget,
    KeyOverrides,
    KnownPeer,
    NoticeRefused,
    NotifyPeers,
    Persist,
    ReportKey,
    Rotation,
    Swap,
    SwitchDevice,
    fallback_swaps,
    judge_notice,
    swap_for,
)
from agent.rotation_channel import Message
from agent.rotation_files import adopt_key, destroy_pending, load_pending, save_pending
from agent.state import StatePaths
from agent.status import AgentStatus
from keys.types import IdentityPrivateKey, WireGuardPrivateKey, WireGuardPublicKey
from wire.models import NetMap, Peer
from wire.rotation import (
    ROTATION_PORT,
    KeyReport,
    KeyReportAnswer,
    RotationAck,
    RotationNotice,
    signing_bytes,
)

DEFAULT_KICK_KEEPALIVE_S = 25
NOTICE_COPIES = 2  # each notice is sent twice: a datagram lost on the way costs nothing


@dataclass
class RotationEdges:
    backend: Backend
    ifname: Callable[[], str]
    apply_lock: asyncio.Lock
    report_key: Callable[[KeyReport], Awaitable[KeyReportAnswer]]
    send: Callable[[Message, str, int], None]
    get_host_key: Callable[[], WireGuardPrivateKey]
    set_host_key: Callable[[WireGuardPrivateKey], None]
    log: EventLog
    clock: Callable[[], float]
    state_dir: Path
    phase_changed: Callable[[], None] = lambda: None  # e.g. rewrite status.json


class RotationDriver:
    def __init__(self, edges: RotationEdges, node_id: int, identity: IdentityPrivateKey) -> None:
        self.edges = edges
        self.node_id = node_id
        self.identity = identity
        self.machine = Rotation()
        self.overrides = KeyOverrides()
        self.netmap: NetMap | None = None
        self.acked: set[int] = set()
        self._running = asyncio.Lock()

    @property
    def phase(self) -> str | None:
        return self.machine.phase

    # --- the agent's hooks -------------------------------------------------------------------------

    async def start(self) -> None:
        """Load a rotation that was under way when the agent stopped, and resume or abort it."""
        self.machine = Rotation(load_pending(self.edges.state_dir))
        if self.machine.pending is None:
            return
        self.edges.log.add_secret(self.machine.pending.new_key)
        self.edges.log.add_secret(self.machine.pending.old_key)
        try:
            device = await asyncio.to_thread(self.edges.backend.read, self.edges.ifname())
            running = device.private_key.public_key() if device.private_key is not None else None
        except BackendError:
            running = None
        await self._run(lambda: self.machine.resume(running, self.edges.clock()))

    def decorate(self, status: AgentStatus) -> AgentStatus:
        """`status` with this host's key, its age and the rotation under way."""
        key_file = StatePaths(self.edges.state_dir).wireguard_key
        try:
            made: float | None = key_file.stat().st_mtime
        except OSError:
            made = None
        return status.model_copy(
            update={
                "wg_public_key": self.edges.get_host_key().public_key().base64(),
                "key_created_at": made,
                "key_rotation": self.machine.phase,
            }
        )

    def device_config(self, desired: DeviceConfig) -> DeviceConfig:
        """What the device should hold: `desired` with the host key as it is NOW (an apply built before
        a switch and run after it must not switch back) and the keys swapped on a notice (see
        KeyOverrides)."""
        if self.netmap is not None:
            self.overrides.prune({p.node_id: p.wg_public_key for p in self.netmap.peers})
        current = self.overrides.apply_to(desired)
        return DeviceConfig(self.edges.get_host_key(), current.listen_port, current.fwmark, current.peers)

    async def on_map(self, netmap: NetMap) -> None:
        """A map was applied: start the rotation it asks for, if any."""
        self.netmap = netmap
        wanted = netmap.node.key_rotation
        if wanted is None or self.machine.pending is not None or wanted == self.machine.finished:
            return
        new_key = WireGuardPrivateKey.generate()
        self.edges.log.add_secret(new_key)
        self.acked = set()
        await self._run(
            lambda: self.machine.request(wanted, self.edges.get_host_key(), new_key, self.edges.clock())
        )

    async def tick(self) -> None:
        if self.machine.pending is None:
            return
        unconfirmed = await self._unconfirmed()
        await self._run(lambda: self.machine.tick(self.edges.clock(), unconfirmed))

    def on_message(self, message: Message, source: str) -> None:
        """A datagram arrived on the rotation channel (called by the channel, in the event loop)."""
        asyncio.get_running_loop().create_task(self._handle(message, source), name="rotation-message")

    # --- the peer's part ---------------------------------------------------------------------------

    async def _handle(self, message: Message, source: str) -> None:
        if isinstance(message, RotationAck):
            pending = self.machine.pending
            if pending is not None and message.rotation_id == pending.rotation_id and self._ack_ok(message):
                self.acked.add(message.node_id)
            return
        await self._on_notice(message, source)

    def _ack_ok(self, ack: RotationAck) -> bool:
        peer = self._peer(ack.node_id)
        if peer is None:
            return False
        try:
            signature = base64.b64decode(ack.signature, validate=True)
        except ValueError:
            return False
        return bool(peer.identity_public_key.verify_with_libcrypto(signature, signing_bytes(ack)))

    async def _on_notice(self, notice: RotationNotice, source: str) -> None:
        netmap = self.netmap
        if netmap is None:
            return
        known = {
            p.node_id: KnownPeer(p.node_id, p.identity_public_key, p.wg_public_key) for p in netmap.peers
        }
        ifname = self.edges.ifname()
        async with self.edges.apply_lock:
            try:
                device = await asyncio.to_thread(self.edges.backend.read, ifname)
            except BackendError as e:
                self.edges.log.error("rotation_notice_failed", node_id=notice.node_id, error=str(e))
                return
            decision = judge_notice(notice, known, device.peers, self.overrides)
            if isinstance(decision, NoticeRefused):
                self.edges.log.warning("rotation_notice_refused", source=source, reason=decision.reason)
                return
            if isinstance(decision, Swap):
                peer = self._peer(notice.node_id)
                desired_keepalive = peer.persistent_keepalive if peer is not None else None
                swap = swap_for(
                    device.peers[decision.old], decision.new, desired_keepalive or DEFAULT_KICK_KEEPALIVE_S
                )
                try:
                    await asyncio.to_thread(self.edges.backend.swap_peer, ifname, swap)
                except BackendError as e:
                    self.edges.log.error("rotation_swap_failed", node_id=notice.node_id, error=str(e))
                    return
                self.overrides.add(decision)
                self.edges.log.info(
                    "peer_key_swapped",
                    node_id=notice.node_id,
                    rotation_id=notice.rotation_id,
                    old=decision.old,
                    new=decision.new,
                    via="notice",
                )
        if isinstance(decision, Swap | AlreadySwapped):
            self._ack(notice, source)

    def _ack(self, notice: RotationNotice, source: str) -> None:
        ack = RotationAck(
            node_id=self.node_id, rotation_id=notice.rotation_id, new_wg_public_key=notice.new_wg_public_key
        )
        signature = base64.b64encode(self.identity.sign_with_libcrypto(signing_bytes(ack))).decode()
        self.edges.send(ack.model_copy(update={"signature": signature}), source, ROTATION_PORT)

    def _peer(self, node_id: int) -> Peer | None:
        if self.netmap is None:
            return None
        return next((p for p in self.netmap.peers if p.node_id == node_id), None)

    # --- the rotating node's part ------------------------------------------------------------------

    async def _unconfirmed(self) -> int:
        pending, netmap = self.machine.pending, self.netmap
        if pending is None or pending.switched_at is None or netmap is None:
            return len(netmap.peers) if netmap is not None else 0
        try:
            device = await asyncio.to_thread(self.edges.backend.read, self.edges.ifname())
        except BackendError:
            return len(netmap.peers)
        count = 0
        for peer in netmap.peers:
            status = device.peers.get(self.overrides.key_of(peer.node_id, peer.wg_public_key))
            handshook = status is not None and (status.last_handshake or 0) >= pending.switched_at
            if peer.node_id not in self.acked and not handshook:
                count += 1
        return count

    async def _run(self, step: Callable[[], list[Action]]) -> None:
        """Feed the machine one input (`step`) and perform what it asks, one rotation step at a time."""
        async with self._running:
            before = self.machine.phase
            queue = list(step())
            while queue:
                queue[:0] = await self._perform(queue.pop(0))
            if self.machine.phase != before:
                self.edges.phase_changed()

    async def _perform(self, action: Action) -> list[Action]:
        e = self.edges
        if isinstance(action, Persist):
            save_pending(e.state_dir, action.pending)
        elif isinstance(action, Forget):
            destroy_pending(e.state_dir)
            e.log.info("rotation_key_destroyed", key=action.destroyed)
        elif isinstance(action, AdoptKey):
            adopt_key(e.state_dir, action.new_key)
            e.set_host_key(action.new_key)
        elif isinstance(action, Event):
            e.log.info(action.name, **dict(action.detail))
        elif isinstance(action, NotifyPeers):
            await self._notify(action)
        elif isinstance(action, SwitchDevice):
            return await self._switch(action.new_key)
        elif isinstance(action, ReportKey):
            report = KeyReport(
                rotation_id=action.rotation_id, phase=action.phase, wg_public_key=action.public_key
            )
            try:
                await e.report_key(report)
            except ControllerRejected as err:
                e.log.warning("rotation_report_refused", phase=action.phase, error=err.detail)
                return self.machine.reported(action.phase, "refused", e.clock())
            except ControllerUnreachable:
                return self.machine.reported(action.phase, "unreachable", e.clock())
            return self.machine.reported(action.phase, "ok", e.clock())
        return []

    async def _notify(self, action: NotifyPeers) -> None:
        """Sign one notice and send it to every peer's underlay address, as the device knows it now."""
        if self.netmap is None:
            return
        try:
            device = await asyncio.to_thread(self.edges.backend.read, self.edges.ifname())
        except BackendError as e:
            self.edges.log.warning("rotation_notice_not_sent", error=str(e), note="peers converge from maps")
            return
        notice = RotationNotice(
            node_id=self.node_id,
            rotation_id=action.rotation_id,
            old_wg_public_key=action.old_public_key,
            new_wg_public_key=action.new_public_key,
        )
        signature = base64.b64encode(self.identity.sign_with_libcrypto(signing_bytes(notice))).decode()
        signed = notice.model_copy(update={"signature": signature})
        hosts = []
        for peer in self.netmap.peers:
            status = device.peers.get(self.overrides.key_of(peer.node_id, peer.wg_public_key))
            address = endpoint_address(status.config.endpoint) if status and status.config.endpoint else None
            if address is not None:
                hosts.append(str(address[0]))
        for _ in range(NOTICE_COPIES):
            for host in hosts:
                self.edges.send(signed, host, ROTATION_PORT)

    async def _switch(self, new_key: WireGuardPrivateKey) -> list[Action]:
        e = self.edges
        ifname = e.ifname()
        async with e.apply_lock:
            try:
                device = await asyncio.to_thread(e.backend.read, ifname)
                kick = tuple(
                    (key, status.config.persistent_keepalive or DEFAULT_KICK_KEEPALIVE_S)
                    for key, status in device.peers.items()
                )
                e.set_host_key(new_key)
                await asyncio.to_thread(e.backend.switch_key, ifname, KeySwitch(new_key, kick))
            except BackendError as err:
                e.log.error("rotation_switch_failed", error=str(err), note="retrying on the next tick")
                return []
        return self.machine.switched(e.clock())

    def public_key(self) -> WireGuardPublicKey:
        return self.edges.get_host_key().public_key()


def swap_changed_keys(backend: Backend, ifname: str, desired: DeviceConfig) -> int:
    """In the apply's worker thread, before the diff: a peer whose key the map changed while the device
    still holds the old one is swapped in one call (allowed IPs moved, handshake started), never
    removed and re-added. Returns how many were swapped."""
    current = backend.read(ifname)
    swaps = fallback_swaps(current, desired, DEFAULT_KICK_KEEPALIVE_S)
    for swap in swaps:
        backend.swap_peer(ifname, swap)
    return len(swaps)
