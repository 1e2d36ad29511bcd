"""Capture the UAPI replies the unit tests parse, from a REAL wireguard-go (how the fixtures were made).

Run as root from the repository root:  .venv/bin/python tests/unit/data/capture_uapi.py

It creates two network namespaces (wgt2capa, wgt2capb) joined by a veth pair with underlay addresses
198.18.251.1/24 and .2, starts `wireguard-go -f wgt2cap` in each (private mount namespace, sockets in
a temp dir), configures them with raw `set=1` requests, pings across the tunnel so a handshake
happens, and writes into tests/unit/data/:
- uapi_get_*.txt: raw `get=1` replies (fresh device, configured device, device after handshake);
- uapi_err_*.txt: raw replies to bad requests (bad key, unknown key, line without '=', bad allowed_ip,
  host name endpoint, unknown operation);
- uapi_keys.json: the (throwaway, test-only) keys used, so tests can check the parsed values.
Everything is removed at the end, also on failure; only the wireguard-go pids started here are killed.
"""

from __future__ import annotations

import json
import subprocess
import sys
import tempfile
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[3]))

from agent.backends.userspace import UserspaceBackend, uapi_request
from keys.types import PresharedKey, WireGuardPrivateKey

OUT = Path(__file__).resolve().parent
NS = ("wgt2capa", "wgt2capb")
IF = "wgt2cap"


def sh(*args: str) -> None:
    subprocess.run(args, check=True)


def raw(path: Path, request: str) -> str:
    import socket

    with socket.socket(socket.AF_UNIX) as s:
        s.settimeout(5)
        s.connect(str(path))
        s.sendall(request.encode())
        data = b""
        while not data.endswith(b"\n\n"):
            chunk = s.recv(65536)
            if not chunk:
                break
            data += chunk
    return data.decode()


def main() -> None:
    a_priv, b_priv = WireGuardPrivateKey.generate(), WireGuardPrivateKey.generate()
    c_pub = WireGuardPrivateKey.generate().public_key()
    psk = PresharedKey.generate()
    tmp = Path(tempfile.mkdtemp(prefix="wgt2cap-"))
    backends = []
    try:
        for ns in NS:
            sh("ip", "netns", "add", ns)
        sh(
            "ip",
            "link",
            "add",
            "wgt2capva",
            "netns",
            NS[0],
            "type",
            "veth",
            "peer",
            "wgt2capvb",
            "netns",
            NS[1],
        )
        for ns, dev, addr in (
            (NS[0], "wgt2capva", "198.18.251.1/24"),
            (NS[1], "wgt2capvb", "198.18.251.2/24"),
        ):
            sh("ip", "-n", ns, "addr", "add", addr, "dev", dev)
            sh("ip", "-n", ns, "link", "set", dev, "up")
            sh("ip", "-n", ns, "link", "set", "lo", "up")
        for ns in NS:
            (tmp / ns).mkdir()
            b = UserspaceBackend(netns=ns, run_dir=tmp / ns)
            backends.append(b)
            b.create(IF)
        sock_a, sock_b = backends[0].socket_path(IF), backends[1].socket_path(IF)
        (OUT / "uapi_get_fresh.txt").write_text(raw(sock_a, "get=1\n\n"))

        set_a = (
            f"set=1\nprivate_key={a_priv.hex()}\nlisten_port=51820\nfwmark=81\n"
            f"public_key={b_priv.public_key().hex()}\nreplace_allowed_ips=true\n"
            "allowed_ip=198.19.251.2/32\nallowed_ip=10.77.0.0/16\nallowed_ip=fd77::/64\n"
            f"endpoint=198.18.251.2:51820\npersistent_keepalive_interval=25\npreshared_key={psk.hex()}\n"
            f"public_key={c_pub.hex()}\nreplace_allowed_ips=true\nallowed_ip=198.19.251.3/32\n"
            "endpoint=[2001:db8::3]:51820\n\n"
        )
        set_b = (
            f"set=1\nprivate_key={b_priv.hex()}\nlisten_port=51820\n"
            f"public_key={a_priv.public_key().hex()}\nreplace_allowed_ips=true\nallowed_ip=198.19.251.1/32\n"
            f"endpoint=198.18.251.1:51820\npreshared_key={psk.hex()}\n\n"
        )
        (OUT / "uapi_set_ok.txt").write_text(raw(sock_a, set_a))
        raw(sock_b, set_b)
        (OUT / "uapi_get_configured.txt").write_text(raw(sock_a, "get=1\n\n"))

        for ns, addr in ((NS[0], "198.19.251.1/24"), (NS[1], "198.19.251.2/24")):
            sh("ip", "-n", ns, "addr", "add", addr, "dev", IF)
            sh("ip", "-n", ns, "link", "set", IF, "up")
        subprocess.run(
            ["ip", "netns", "exec", NS[0], "ping", "-c", "3", "-i", "0.2", "-W", "5", "198.19.251.2"],
            check=True,
        )
        deadline = time.monotonic() + 10
        while "last_handshake_time_sec=0\n" in raw(sock_a, "get=1\n\n").split(f"public_key={c_pub.hex()}")[0]:
            if time.monotonic() > deadline:
                raise SystemExit("no handshake")
            time.sleep(0.05)
        (OUT / "uapi_get_handshake.txt").write_text(raw(sock_a, "get=1\n\n"))

        errors = {
            "bad_key": "set=1\npublic_key=zz\n\n",
            "unknown_key": "set=1\nbogus_key=1\n\n",
            "no_equals": "set=1\nlisten_port\n\n",
            "bad_allowed_ip": f"set=1\npublic_key={c_pub.hex()}\nallowed_ip=10.0.0.300/32\n\n",
            "hostname_endpoint": f"set=1\npublic_key={c_pub.hex()}\nendpoint=peer.example:51820\n\n",
            "unknown_operation": "frobnicate=1\n\n",
        }
        for name, request in errors.items():
            (OUT / f"uapi_err_{name}.txt").write_text(raw(sock_a, request))
        (OUT / "uapi_keys.json").write_text(
            json.dumps(
                {
                    "a_private_hex": a_priv.hex(),
                    "b_private_hex": b_priv.hex(),
                    "c_public_hex": c_pub.hex(),
                    "psk_hex": psk.hex(),
                },
                indent=2,
            )
            + "\n"
        )
        assert uapi_request(sock_a, "get=1\n\n")
    finally:
        for b in backends:
            b.delete(IF)
        for ns in NS:
            subprocess.run(["ip", "netns", "del", ns], check=False)
        subprocess.run(["rm", "-rf", str(tmp)], check=False)


if __name__ == "__main__":
    main()
