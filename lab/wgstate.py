"""What each host's WireGuard interface says, read from outside the host: over its UAPI socket
(userspace backend) or through netlink in its namespace (kernel backend, `read_kernel_device`).

Each host's `/run/wireguard` is a directory of the lab (see `lab.processes`), so the lab reads
`HOSTDIR/run/wg0.sock` directly: a unix socket path works across network namespaces, and this needs no
process per poll. `parse_uapi_get` is pure; keys in UAPI are hex.
"""

from __future__ import annotations

import socket
from dataclasses import dataclass, field
from pathlib import Path

from keys.types import InvalidKey, WireGuardPrivateKey, WireGuardPublicKey

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


class UapiError(RuntimeError):
    pass


@dataclass
class _PeerFields:
    public_key: WireGuardPublicKey
    endpoint: str | None = None
    allowed_ips: list[str] = field(default_factory=list)
    hs_sec: int = 0
    hs_nsec: int = 0
    rx: int = 0
    tx: int = 0

    def view(self) -> WgPeerView:
        handshake = self.hs_sec + self.hs_nsec / 1e9 if self.hs_sec else None
        return WgPeerView(
            self.public_key, self.endpoint, tuple(self.allowed_ips), handshake, self.rx, self.tx
        )


def parse_uapi_get(text: str) -> WgDeviceView:
    """Parse the reply to `get=1`. Raises UapiError on a non-zero errno or a malformed reply."""
    public: WireGuardPublicKey | None = None
    port: int | None = None
    parsed: list[_PeerFields] = []
    errno: int | None = None
    try:
        for line in text.splitlines():
            if not line:
                continue
            key, sep, value = line.partition("=")
            if not sep:
                raise UapiError(f"malformed UAPI line {line!r}")
            peer = parsed[-1] if parsed else None
            if key == "private_key":
                public = WireGuardPrivateKey.from_hex(value).public_key()
            elif key == "listen_port":
                port = int(value)
            elif key == "public_key":
                parsed.append(_PeerFields(WireGuardPublicKey.from_hex(value)))
            elif key == "errno":
                errno = int(value)
            elif peer is None:
                continue
            elif key == "endpoint":
                peer.endpoint = value
            elif key == "allowed_ip":
                peer.allowed_ips.append(value)
            elif key == "last_handshake_time_sec":
                peer.hs_sec = int(value)
            elif key == "last_handshake_time_nsec":
                peer.hs_nsec = int(value)
            elif key == "rx_bytes":
                peer.rx = int(value)
            elif key == "tx_bytes":
                peer.tx = int(value)
    except (ValueError, InvalidKey) as e:
        raise UapiError(f"malformed UAPI reply: {e}") from None
    if errno is None:
        raise UapiError("UAPI reply has no errno line")
    if errno != 0:
        raise UapiError(f"UAPI get failed with errno={errno}")
    return WgDeviceView(public, port, {p.public_key: p.view() for p in parsed})


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
