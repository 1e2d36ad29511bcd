"""wg-quick export: a device and its addresses as the `/etc/wireguard/IFNAME.conf` text wg-quick reads,
built with wgconfig (which also reads the result back once), written atomically with mode 0600.

Rules:
- The file holds the private key, so it is written only through `keys.store.write_private_file`
  (temp file 0600 + fsync + rename); wgconfig's own `write_file` is never used (it writes in place,
  0640).
- Output is stable: peers sorted by public key, allowed IPs sorted, so re-exporting an unchanged
  device gives the same bytes.
- Only what wg-quick understands is written; a peer's learned endpoint is written too (it is where the
  peer was last seen), which is what `wg showconf` does.
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping
from ipaddress import IPv4Interface, IPv6Interface, ip_address
from pathlib import Path

from wgconfig import WGConfig

from agent.device import Device, DeviceConfig, PeerConfig
from keys.store import write_private_file
from keys.types import WireGuardPublicKey

IPInterface = IPv4Interface | IPv6Interface
WIREGUARD_ETC = Path("/etc/wireguard")
HEADER = "# Written by wgmesh from the running device; wgmesh overwrites changes made here."


def wgquick_path(ifname: str, etc_dir: Path = WIREGUARD_ETC) -> Path:
    """Where wg-quick looks for `ifname`'s configuration."""
    return etc_dir / f"{ifname}.conf"


def render_wgquick(
    device: Device | DeviceConfig,
    addresses: Iterable[IPInterface],
    *,
    dns: Iterable[str] = (),
    mtu: int | None = None,
    peer_names: Mapping[WireGuardPublicKey, str] | None = None,
) -> str:
    """The wg-quick configuration text of `device` with `addresses` on the interface.

    `dns`: DNS servers (IP addresses) or search domains for wg-quick's `DNS =`; `mtu`: wg-quick's
    `MTU =` (None: wg-quick chooses); `peer_names`: a comment line above each named peer.
    Raises ValueError when the device has no private key or a DNS entry is not usable.
    """
    config = device.config() if isinstance(device, Device) else device
    if config is None:
        raise ValueError("the device has no private key: nothing wg-quick could bring up")
    names = peer_names or {}
    wc = WGConfig()
    wc.initialize_file(HEADER)
    wc.add_attr(None, "PrivateKey", config.private_key.base64())
    if config.listen_port is not None:
        wc.add_attr(None, "ListenPort", config.listen_port)
    if config.fwmark:
        wc.add_attr(None, "FwMark", hex(config.fwmark))
    addrs = sorted(set(addresses), key=lambda a: (a.version, a.ip))
    if addrs:
        wc.add_attr(None, "Address", ", ".join(str(a) for a in addrs))
    dns_entries = [_dns_entry(d) for d in dns]
    if dns_entries:
        wc.add_attr(None, "DNS", ", ".join(dns_entries))
    if mtu is not None:
        if not 68 <= mtu <= 65535:
            raise ValueError(f"MTU {mtu}: must be 68..65535")
        wc.add_attr(None, "MTU", mtu)
    # Peers are appended as lines in wgconfig's own format rather than through add_peer/add_attr:
    # wgconfig re-parses the whole file on every call, which is quadratic (1,000 peers: ~10 s).
    # wgconfig then parses the result once, to check every peer reads back.
    for key in sorted(config.peers, key=lambda k: k.base64()):
        wc.lines += _peer_lines(config.peers[key], names.get(key))
    wc.invalidate_data()
    if len(wc.get_peers()) != len(config.peers):
        raise ValueError("wgconfig did not read back every peer of the rendered configuration")
    return "\n".join(wc.lines) + "\n"


def _peer_lines(peer: PeerConfig, name: str | None) -> list[str]:
    lines = [""]
    if name:
        lines.append("# " + " ".join(name.split()))  # one line, whatever the name holds
    lines += ["[Peer]", f"PublicKey = {peer.public_key.base64()}"]
    if peer.preshared_key is not None:
        lines.append(f"PresharedKey = {peer.preshared_key.base64()}")
    if peer.allowed_ips:
        lines.append("AllowedIPs = " + ", ".join(str(n) for n in peer.allowed_ips))
    if peer.endpoint is not None:
        lines.append(f"Endpoint = {peer.endpoint}")
    if peer.persistent_keepalive:
        lines.append(f"PersistentKeepalive = {peer.persistent_keepalive}")
    return lines


def _dns_entry(entry: str) -> str:
    entry = entry.strip()
    try:
        return str(ip_address(entry))
    except ValueError:
        pass
    labels = entry.rstrip(".").split(".")
    if not entry or any(not label or not all(c.isalnum() or c == "-" for c in label) for label in labels):
        raise ValueError(f"DNS entry {entry!r}: neither an IP address nor a search domain")
    return entry


def write_wgquick(path: Path, text: str) -> None:
    """Write wg-quick text to `path` atomically with mode 0600 (its directory is made 0700 if new)."""
    write_private_file(path, text)


def export_wgquick(
    device: Device | DeviceConfig,
    addresses: Iterable[IPInterface],
    path: Path,
    *,
    dns: Iterable[str] = (),
    mtu: int | None = None,
    peer_names: Mapping[WireGuardPublicKey, str] | None = None,
) -> str:
    """Render and write in one step; returns the text written."""
    text = render_wgquick(device, addresses, dns=dns, mtu=mtu, peer_names=peer_names)
    write_wgquick(path, text)
    return text
