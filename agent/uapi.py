"""The WireGuard cross-platform userspace API (UAPI) as text: encode a `DeviceUpdate` into a `set=1`
request, parse a `get=1` reply into a `Device`, and turn `errno=N` into a clear error. Pure: no sockets.

Protocol (wireguard.com/xplatform), as wireguard-go speaks it:
- a request is `get=1\\n\\n` or `set=1\\n` + `key=value` lines + an empty line;
- the reply is `key=value` lines ending with `errno=N` and an empty line; wireguard-go sends N
  negative (`errno=-22`), 0 meaning success;
- keys are lowercase hex (64 characters), never base64; an all-zero preshared key means none;
- `set` is not atomic: lines before a bad one are applied.

Rules for what we send:
- never `replace_peers` (it drops every session even when nothing changed); peers are updated one by
  one: `public_key=` first, then `remove=true`, or `update_only=true` when the update says the peer
  must already exist, then `replace_allowed_ips=true` followed by every `allowed_ip=`, then
  `endpoint=` (only when one is desired), `persistent_keepalive_interval=` and `preshared_key=`
  (always: 0 and the zero key switch them off, so the device ends up exactly as desired);
- endpoints must be IP literals: UAPI does not resolve names.
"""

from __future__ import annotations

import errno as errno_codes
import os
from collections.abc import Iterator
from dataclasses import dataclass
from ipaddress import ip_network
from typing import TypeVar

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
from keys.types import InvalidKey, PresharedKey, WireGuardPrivateKey, WireGuardPublicKey

K = TypeVar("K", WireGuardPublicKey, WireGuardPrivateKey, PresharedKey)

GET_REQUEST = "get=1\n\n"
ZERO_KEY_HEX = "0" * 64


class UapiError(Exception):
    """A UAPI exchange failed; the message says what and, where it can, why."""


class UapiErrno(UapiError):
    """The implementation answered `errno=N` with N != 0. `errno` is positive (EINVAL is 22)."""

    def __init__(self, errno: int, request_kind: str) -> None:
        self.errno = errno
        name = errno_codes.errorcode.get(errno, "unknown error")
        super().__init__(
            f"{request_kind} refused with errno {errno} ({name}: {os.strerror(errno)}); "
            + _ERRNO_HINTS.get(errno, "see the wireguard-go log")
        )


class UapiProtocolError(UapiError):
    """The reply is not valid UAPI text (truncated, a line without `=`, a bad value)."""


# What wireguard-go means by each errno it sends (device/uapi.go: ipcError*).
_ERRNO_HINTS = {
    errno_codes.EINVAL: "a value was invalid (bad key, address, endpoint or number)",
    errno_codes.EPROTO: "a line was not understood (unknown key or bad syntax)",
    errno_codes.EADDRINUSE: "the listen port is already in use",
    errno_codes.EIO: "the device could not be read or changed",
}


def encode_set(update: DeviceUpdate) -> str:
    """The `set=1` request (ending with the empty line) that applies `update`.

    Raises UapiError when an endpoint is a host name rather than an IP address.
    """
    lines = ["set=1"]
    if update.private_key is not None:
        lines.append(f"private_key={update.private_key.hex()}")
    if update.listen_port is not None:
        lines.append(f"listen_port={update.listen_port}")
    if update.fwmark is not None:
        lines.append(f"fwmark={update.fwmark}")
    for key in update.remove:
        lines += [f"public_key={key.hex()}", "remove=true"]
    for peer in update.upsert:
        lines += _peer_lines(peer.config, peer.update_only)
    return "\n".join(lines) + "\n\n"


def encode_swap(swap: PeerSwap) -> str:
    """The one `set=1` request of a key swap on a peer: the new peer first (taking the allowed IPs),
    then `remove=true` for the old one. Raises UapiError for a host-name endpoint."""
    lines = ["set=1", *_peer_lines(swap.new, update_only=False)]
    lines += [f"public_key={swap.old.hex()}", "remove=true"]
    return "\n".join(lines) + "\n\n"


def encode_switch(switch: KeySwitch) -> str:
    """The one `set=1` request of a key switch: the private key, then per kicked peer two blocks that
    set its keepalive to 0 and then to n (the 0 -> n transition is what sends a keepalive at once).
    Allowed IPs are not named, so they are not touched."""
    lines = ["set=1", f"private_key={switch.private_key.hex()}"]
    for key, seconds in switch.kick:
        for value in (0, seconds):
            lines += [f"public_key={key.hex()}", "update_only=true", f"persistent_keepalive_interval={value}"]
    return "\n".join(lines) + "\n\n"


def _peer_lines(config: PeerConfig, update_only: bool) -> list[str]:
    lines = [f"public_key={config.public_key.hex()}"]
    if update_only:
        lines.append("update_only=true")
    lines.append("replace_allowed_ips=true")
    lines += [f"allowed_ip={net}" for net in config.allowed_ips]
    if config.endpoint is not None:
        if endpoint_address(config.endpoint) is None:
            raise UapiError(
                f"peer {config.public_key}: endpoint {config.endpoint} is a host name; "
                "resolve it to an IP address first (UAPI takes only IP:port)"
            )
        lines.append(f"endpoint={config.endpoint}")
    lines.append(f"persistent_keepalive_interval={config.persistent_keepalive or 0}")
    psk = config.preshared_key.hex() if config.preshared_key is not None else ZERO_KEY_HEX
    lines.append(f"preshared_key={psk}")
    return lines


def check_errno(reply: str, request_kind: str = "set") -> None:
    """Raise UapiErrno when `reply` (the whole reply text) ends in a non-zero errno; UapiProtocolError
    when it has no errno line at all."""
    value = None
    for _, key, text in _lines(reply):
        if key == "errno":
            value = _int(text, key)
    if value is None:
        raise UapiProtocolError(f"{request_kind} reply has no errno line (truncated?): {reply[-80:]!r}")
    if value != 0:
        raise UapiErrno(abs(value), request_kind)


@dataclass
class _PeerBuilder:
    public_key: WireGuardPublicKey
    preshared_key: PresharedKey | None = None
    endpoint: str | None = None
    keepalive: int | None = None
    allowed_ips: list[IPNetwork] | None = None
    handshake_sec: int = 0
    handshake_nsec: int = 0
    rx_bytes: int = 0
    tx_bytes: int = 0
    protocol_version: int | None = None

    def build(self) -> PeerStatus:
        try:
            config = PeerConfig(
                self.public_key,
                normalize_ips(self.allowed_ips or ()),
                endpoint=self.endpoint,
                persistent_keepalive=self.keepalive,
                preshared_key=self.preshared_key,
            )
        except ValueError as e:
            raise UapiProtocolError(f"peer {self.public_key}: {e}") from None
        handshake = None
        if self.handshake_sec or self.handshake_nsec:
            handshake = self.handshake_sec + self.handshake_nsec / 1e9
        return PeerStatus(config, handshake, self.rx_bytes, self.tx_bytes, self.protocol_version)


def parse_get(name: str, reply: str) -> Device:
    """The `Device` called `name` described by a `get=1` reply.

    Raises UapiErrno when the reply ends in a non-zero errno and UapiProtocolError when it is not valid
    UAPI text. Keys this parser does not know are ignored (newer implementations add some).
    """
    check_errno(reply, "get")
    private_key: WireGuardPrivateKey | None = None
    listen_port: int | None = None
    fwmark: int | None = None
    peers: dict[WireGuardPublicKey, PeerStatus] = {}
    peer: _PeerBuilder | None = None
    for lineno, key, value in _lines(reply):
        if key == "errno":
            break
        if key == "public_key":
            if peer is not None:
                peers[peer.public_key] = peer.build()
            peer = _PeerBuilder(_key(WireGuardPublicKey, value, lineno))
        elif peer is None:
            if key == "private_key":
                private_key = None if value == ZERO_KEY_HEX else _key(WireGuardPrivateKey, value, lineno)
            elif key == "listen_port":
                listen_port = _int(value, key, lineno) or None
            elif key == "fwmark":
                fwmark = _int(value, key, lineno) or None
        elif key == "preshared_key":
            peer.preshared_key = None if value == ZERO_KEY_HEX else _key(PresharedKey, value, lineno)
        elif key == "endpoint":
            peer.endpoint = value
        elif key == "persistent_keepalive_interval":
            peer.keepalive = _int(value, key, lineno) or None
        elif key == "allowed_ip":
            try:
                net = _network(value)
            except ValueError as e:
                raise UapiProtocolError(f"line {lineno}: allowed_ip {value!r}: {e}") from None
            peer.allowed_ips = [*(peer.allowed_ips or []), net]
        elif key == "last_handshake_time_sec":
            peer.handshake_sec = _int(value, key, lineno)
        elif key == "last_handshake_time_nsec":
            peer.handshake_nsec = _int(value, key, lineno)
        elif key == "rx_bytes":
            peer.rx_bytes = _int(value, key, lineno)
        elif key == "tx_bytes":
            peer.tx_bytes = _int(value, key, lineno)
        elif key == "protocol_version":
            peer.protocol_version = _int(value, key, lineno)
    if peer is not None:
        peers[peer.public_key] = peer.build()
    try:
        return Device(name, private_key, listen_port, fwmark, peers)
    except ValueError as e:
        raise UapiProtocolError(f"get reply: {e}") from None


def _network(text: str) -> IPNetwork:
    # wireguard-go prints masked networks; strict parsing catches anything else.
    return ip_network(text, strict=True)


def _lines(reply: str) -> Iterator[tuple[int, str, str]]:
    for lineno, line in enumerate(reply.split("\n"), start=1):
        if not line:
            continue
        key, sep, value = line.partition("=")
        if not sep:
            raise UapiProtocolError(f"line {lineno}: expected key=value, got {line[:80]!r}")
        yield lineno, key, value


def _int(text: str, key: str, lineno: int | None = None) -> int:
    try:
        return int(text)
    except ValueError:
        where = f"line {lineno}: " if lineno is not None else ""
        raise UapiProtocolError(f"{where}{key}={text[:40]!r} is not a number") from None


def _key(kind: type[K], text: str, lineno: int) -> K:
    try:
        return kind.from_hex(text)
    except InvalidKey as e:
        raise UapiProtocolError(f"line {lineno}: {e}") from None
