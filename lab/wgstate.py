"""What each host's WireGuard interface says, read from outside the host: over its UAPI socket
(userspace backend) or through netlink in its namespace (kernel backend, `read_kernel_device`).

Each host's `/run/wireguard` is a directory of the lab (see `lab.processes`), so the lab reads
`HOSTDIR/run/wg0.sock` directly: a unix socket path works across network namespaces, and this needs no
process per poll. `parse_uapi_get` is pure: it is the agent's UAPI parser (`agent.uapi.parse_get`),
its `Device` seen as a `WgDeviceView`.
"""

from __future__ import annotations

import socket
from dataclasses import dataclass, field
from pathlib import Path

from agent.device import Device
from agent.uapi import UapiError, parse_get
from keys.types import WireGuardPublicKey

UAPI_TIMEOUT_S = 2.0


@dataclass(frozen=True)
class WgPeerView:
    public_key: WireGuardPublicKey
    endpoint: str | None
    allowed_ips: tuple[str, ...]
    last_handshake: float | None  # unix seconds; None: never
    rx_bytes: int
    tx_bytes: int


@dataclass(frozen=True)
class WgDeviceView:
    public_key: WireGuardPublicKey | None  # None: no private key configured yet
    listen_port: int | None
    peers: dict[WireGuardPublicKey, WgPeerView] = field(default_factory=dict)


def view_of(device: Device) -> WgDeviceView:
    peers = {
        key: WgPeerView(
            key,
            p.config.endpoint,
            tuple(str(n) for n in p.config.allowed_ips),
            p.last_handshake,
            p.rx_bytes,
            p.tx_bytes,
        )
        for key, p in device.peers.items()
    }
    public = device.private_key.public_key() if device.private_key is not None else None
    return WgDeviceView(public, device.listen_port, peers)


def parse_uapi_get(text: str) -> WgDeviceView:
    """The reply to `get=1`. Raises agent.uapi's UapiError on a non-zero errno or a malformed reply."""
    return view_of(parse_get("wg", text))


def read_device(sock_path: Path, timeout: float = UAPI_TIMEOUT_S) -> WgDeviceView | None:
    """The device behind `sock_path`; None when no wireguard-go listens there (not started, or gone)."""
    try:
        with socket.socket(socket.AF_UNIX, socket.SOCK_STREAM) as s:
            s.settimeout(timeout)
            s.connect(str(sock_path))
            s.sendall(b"get=1\n\n")
            chunks = []
            while True:
                chunk = s.recv(65536)
                if not chunk:
                    break
                chunks.append(chunk)
                if b"\n\n" in b"".join(chunks[-2:]):
                    break
    except (FileNotFoundError, ConnectionRefusedError, TimeoutError, OSError):
        return None
    try:
        return parse_uapi_get(b"".join(chunks).decode())
    except UapiError:
        return None


def read_kernel_device(namespace: str, ifname: str) -> WgDeviceView | None:
    """The kernel module's device `ifname` in `namespace`; None when there is none (or no module)."""
    from agent.backends.base import BackendError
    from agent.backends.kernel import KernelBackend

    backend = KernelBackend(netns=namespace)
    try:
        if not backend.exists(ifname):
            return None
        device = backend.read(ifname)
    except (BackendError, OSError):
        return None
    return view_of(device)
