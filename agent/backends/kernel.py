"""The kernel backend: the Linux WireGuard module through netlink (pyroute2 `IPRoute` for the link,
`WireGuard` generic netlink for keys and peers).

- Module detection (`kernel_module_present`) follows netbird/netclient: ask to create a
  `kind=wireguard` link with an impossible MTU. The kernel checks the link kind first: EOPNOTSUPP means
  no module; EINVAL (the MTU) means the module is there. Nothing is created either way. It speaks route
  netlink itself (agent/hostnet/rtnl.py), so an agent that picks `auto` never loads pyroute2 to ask.
- `netlink_set_calls(update)` is the pure translation from a `DeviceUpdate` to the keyword arguments of
  `WireGuard.set` (pyroute2 sets one peer per call); pyroute2's dicts never leave this module.
- Every pyroute2 socket is opened with `flags=0` when it names a namespace, so a missing namespace is an
  error rather than silently created.
- Synchronous (pyroute2's sync classes cannot run inside a running asyncio loop): asyncio callers use
  `asyncio.to_thread`.
"""

from __future__ import annotations

import contextlib
import errno
from collections.abc import Iterable
from typing import Any

from agent.backends.base import BackendError, BackendUnavailable
from agent.device import (
    Device,
    DeviceUpdate,
    IPNetwork,
    KeySwitch,
    PeerConfig,
    PeerStatus,
    PeerSwap,
    endpoint_address,
    normalize_ips,
)
from keys.types import PresharedKey, WireGuardPrivateKey, WireGuardPublicKey

PROBE_IFNAME = "wgmprobe0"
IMPOSSIBLE_MTU = 0xFFFFFFFF  # larger than any device's max_mtu: rejected after the kind is known
ZERO_KEY_B64 = "A" * 43 + "="


def kernel_module_present() -> bool:
    """True when the kernel can create WireGuard links (module loaded or loadable). Creates nothing."""
    return link_kind_supported("wireguard")


def link_kind_supported(kind: str, netns: str | None = None) -> bool:
    """True when the kernel knows links of `kind` (EINVAL for the impossible MTU), False when it does
    not (EOPNOTSUPP) or the question cannot be asked (no permission). Creates nothing."""
    from agent.hostnet.rtnl import NetlinkError, Rtnl  # route netlink only: no pyroute2 to ask this

    try:
        with Rtnl(netns) as rtnl:
            try:
                rtnl.add_link(PROBE_IFNAME, kind, IMPOSSIBLE_MTU)
            except NetlinkError as e:
                return bool(e.code == errno.EINVAL)
            # Should not happen; if the kernel took the MTU, remove what it created.
            with contextlib.suppress(NetlinkError):
                rtnl.delete_link(PROBE_IFNAME)
            return True
    except OSError:
        return False


def netlink_set_calls(update: DeviceUpdate) -> list[dict[str, Any]]:
    """The `WireGuard.set(interface, **kwargs)` calls that apply `update`, in order: device fields
    first (one call, only when something changes), then one call per removed peer, then one per
    upserted peer. Keys are base64 (pyroute2's format); an absent preshared key or keepalive is sent as
    the zero key / 0 so the kernel ends up exactly as desired. Raises BackendError for a host-name
    endpoint (the kernel takes only IP addresses)."""
    calls: list[dict[str, Any]] = []
    device: dict[str, Any] = {}
    if update.private_key is not None:
        device["private_key"] = update.private_key.base64()
    if update.listen_port is not None:
        device["listen_port"] = update.listen_port
    if update.fwmark is not None:
        device["fwmark"] = update.fwmark
    if device:
        calls.append(device)
    for key in update.remove:
        calls.append({"peer": {"public_key": key.base64(), "remove": True}})
    for upsert in update.upsert:
        calls.append({"peer": _peer_call(upsert.config, upsert.update_only)})
    return calls


def _peer_call(cfg: PeerConfig, update_only: bool) -> dict[str, Any]:
    peer: dict[str, Any] = {
        "public_key": cfg.public_key.base64(),
        "update_only": update_only,
        "replace_allowed_ips": True,
        "allowed_ips": [str(net) for net in cfg.allowed_ips],
        "persistent_keepalive": cfg.persistent_keepalive or 0,
        "preshared_key": cfg.preshared_key.base64() if cfg.preshared_key else ZERO_KEY_B64,
    }
    if cfg.endpoint is not None:
        addr = endpoint_address(cfg.endpoint)
        if addr is None:
            raise BackendError(
                f"peer {cfg.public_key}: endpoint {cfg.endpoint} is a host name; resolve it first"
            )
        peer["endpoint_addr"], peer["endpoint_port"] = str(addr[0]), addr[1]
    return peer


def netlink_swap_calls(swap: PeerSwap) -> list[dict[str, Any]]:
    """The `WireGuard.set` calls of a key swap on a peer: the new peer first (the kernel moves each
    allowed IP to it atomically), then the old one removed. pyroute2 sends one peer per call, so these
    are two netlink requests; between them the old peer exists without allowed IPs, which routes
    nothing to it, so no packet is lost either way."""
    return [
        {"peer": _peer_call(swap.new, update_only=False)},
        {"peer": {"public_key": swap.old.base64(), "remove": True}},
    ]


def netlink_switch_calls(switch: KeySwitch) -> list[dict[str, Any]]:
    """The `WireGuard.set` calls of a key switch: the private key, then per kicked peer its keepalive
    to 0 and to n (the kernel sends a keepalive when it goes from 0 to n). No allowed IP is named."""
    calls: list[dict[str, Any]] = [{"private_key": switch.private_key.base64()}]
    for key, seconds in switch.kick:
        for value in (0, seconds):
            calls.append(
                {"peer": {"public_key": key.base64(), "update_only": True, "persistent_keepalive": value}}
            )
    return calls


def device_from_netlink(ifname: str, messages: Iterable[Any]) -> Device:
    """The `Device` described by the messages of a WG_CMD_GET_DEVICE dump (the kernel splits a device
    with many peers over several messages; a peer may continue in the next message)."""
    private_key: WireGuardPrivateKey | None = None
    listen_port: int | None = None
    fwmark: int | None = None
    peers: dict[WireGuardPublicKey, dict[str, Any]] = {}
    for msg in messages:
        raw_priv = msg.get_attr("WGDEVICE_A_PRIVATE_KEY")
        if raw_priv is not None and raw_priv != ZERO_KEY_B64.encode():
            private_key = WireGuardPrivateKey.from_base64(raw_priv)
        listen_port = msg.get_attr("WGDEVICE_A_LISTEN_PORT") or listen_port
        fwmark = msg.get_attr("WGDEVICE_A_FWMARK") or fwmark
        for nla in msg.get_attr("WGDEVICE_A_PEERS") or ():
            pub = WireGuardPublicKey.from_base64(nla.get_attr("WGPEER_A_PUBLIC_KEY"))
            state = peers.setdefault(pub, {"allowed_ips": []})
            for name in (
                "WGPEER_A_PRESHARED_KEY",
                "WGPEER_A_ENDPOINT",
                "WGPEER_A_PERSISTENT_KEEPALIVE_INTERVAL",
                "WGPEER_A_LAST_HANDSHAKE_TIME",
                "WGPEER_A_RX_BYTES",
                "WGPEER_A_TX_BYTES",
                "WGPEER_A_PROTOCOL_VERSION",
            ):
                value = nla.get_attr(name)
                if value is not None:
                    state[name] = value
            for allowed in nla.get_attr("WGPEER_A_ALLOWEDIPS") or ():
                if "addr" in allowed:
                    state["allowed_ips"].append(allowed["addr"])
    statuses = {pub: _peer_status(pub, state) for pub, state in peers.items()}
    return Device(ifname, private_key, listen_port or None, fwmark or None, statuses)


def _peer_status(pub: WireGuardPublicKey, state: dict[str, Any]) -> PeerStatus:
    psk_raw = state.get("WGPEER_A_PRESHARED_KEY")
    psk = PresharedKey.from_base64(psk_raw) if psk_raw and psk_raw != ZERO_KEY_B64.encode() else None
    endpoint = None
    ep = state.get("WGPEER_A_ENDPOINT")
    if ep is not None and ep.get("port"):
        addr = ep["addr"]
        endpoint = f"[{addr}]:{ep['port']}" if ":" in addr else f"{addr}:{ep['port']}"
    handshake = None
    hs = state.get("WGPEER_A_LAST_HANDSHAKE_TIME")
    if hs is not None and (hs["tv_sec"] or hs["tv_nsec"]):
        handshake = hs["tv_sec"] + hs["tv_nsec"] / 1e9
    ips: list[IPNetwork | str] = list(state["allowed_ips"])
    config = PeerConfig(
        pub,
        normalize_ips(ips),
        endpoint=endpoint,
        persistent_keepalive=state.get("WGPEER_A_PERSISTENT_KEEPALIVE_INTERVAL") or None,
        preshared_key=psk,
    )
    return PeerStatus(
        config,
        handshake,
        int(state.get("WGPEER_A_RX_BYTES") or 0),
        int(state.get("WGPEER_A_TX_BYTES") or 0),
        state.get("WGPEER_A_PROTOCOL_VERSION"),
    )


class KernelBackend:
    """WireGuard links of the kernel module, optionally in a named network namespace."""

    name = "kernel"

    def __init__(self, netns: str | None = None) -> None:
        self.netns = netns

    def _ns_kwargs(self) -> dict[str, Any]:
        return {"netns": self.netns, "flags": 0} if self.netns is not None else {}

    def _iproute(self) -> Any:
        from pyroute2 import IPRoute

        try:
            return IPRoute(**self._ns_kwargs())
        except OSError as e:
            raise BackendError(f"cannot open network namespace {self.netns}: {e}") from None

    def _wireguard(self) -> Any:
        from pyroute2 import WireGuard
        from pyroute2.netlink.exceptions import NetlinkError

        try:
            return WireGuard(**self._ns_kwargs())
        except NetlinkError as e:
            if e.code == errno.ENOENT:
                raise BackendUnavailable("the kernel has no WireGuard module: `modprobe wireguard`") from None
            raise BackendError(f"cannot open WireGuard netlink: {e}") from None
        except OSError as e:
            raise BackendError(
                f"cannot open WireGuard netlink in {self.netns or 'this namespace'}: {e}"
            ) from None

    def exists(self, ifname: str) -> bool:
        with self._iproute() as ipr:
            for link in ipr.link("dump", ifname=ifname):
                info = link.get_attr("IFLA_LINKINFO")
                return bool(info is not None and info.get_attr("IFLA_INFO_KIND") == "wireguard")
        return False

    def create(self, ifname: str) -> None:
        from pyroute2.netlink.exceptions import NetlinkError

        if self.exists(ifname):
            return
        with self._iproute() as ipr:
            try:
                ipr.link("add", ifname=ifname, kind="wireguard")
            except NetlinkError as e:
                if e.code == errno.EOPNOTSUPP:
                    raise BackendError("the kernel has no WireGuard module: `modprobe wireguard`") from None
                raise BackendError(f"cannot create {ifname}: {e}") from None

    def delete(self, ifname: str) -> None:
        from pyroute2.netlink.exceptions import NetlinkError

        if not self.exists(ifname):
            return
        with self._iproute() as ipr:
            try:
                ipr.link("del", ifname=ifname)
            except NetlinkError as e:
                if e.code != errno.ENODEV:
                    raise BackendError(f"cannot delete {ifname}: {e}") from None

    def read(self, ifname: str) -> Device:
        from pyroute2.netlink.exceptions import NetlinkError

        with self._wireguard() as wg:
            try:
                return device_from_netlink(ifname, wg.info(ifname))
            except NetlinkError as e:
                raise BackendError(f"cannot read {ifname}: {e}") from None

    def apply(self, ifname: str, update: DeviceUpdate) -> None:
        self._run(ifname, netlink_set_calls(update))

    def swap_peer(self, ifname: str, swap: PeerSwap) -> None:
        self._run(ifname, netlink_swap_calls(swap))

    def switch_key(self, ifname: str, switch: KeySwitch) -> None:
        self._run(ifname, netlink_switch_calls(switch))

    def _run(self, ifname: str, calls: list[dict[str, Any]]) -> None:
        from pyroute2.netlink.exceptions import NetlinkError

        if not calls:
            return
        with self._wireguard() as wg:
            for kwargs in calls:
                try:
                    wg.set(ifname, **kwargs)
                except NetlinkError as e:
                    raise BackendError(f"cannot configure {ifname}: {e}") from None
