"""Backend figures: how long a backend takes to apply 1,000 peers and read them back, to re-apply an
unchanged state and to change one peer among 1,000, and how long two namespaces take from `apply` to
their first handshake. `--backend userspace` (default): a real wireguard-go over UAPI; `--backend
kernel`: the kernel module over netlink (the tests/kernel VM runs it, since these machines have no
module).

Baseline, measured in the same run on an identical fresh device: wireguard-tools' `wg setconf` (apply)
and `wg show dump` (read) of the same 1,000 peers (C, one process each, run where the device is), so
the ratios say what our Python codec and reconcile cost on top of the C tools.

Everything is named `wgb2*` (namespaces, interfaces) and removed at the end, also on failure; only the
wireguard-go processes started here are ended, by pid. Needs root, wireguard-go, wg and ip; otherwise it
prints a RESULT line saying why it was skipped.
"""

from __future__ import annotations

import argparse
import os
import shutil
import statistics
import subprocess
import sys
import tempfile
import time
from collections.abc import Callable
from ipaddress import IPv4Address, ip_network
from pathlib import Path

from agent.backends.base import Backend
from agent.backends.kernel import KernelBackend
from agent.backends.userspace import UserspaceBackend
from agent.device import DeviceConfig, PeerConfig
from agent.reconcile import diff
from agent.wgquick import render_wgquick
from keys.types import WireGuardPrivateKey

NS_A, NS_B = "wgb2a", "wgb2b"
IF, IF_BASE = "wgb2wg", "wgb2base"
PEERS = 1000
HANDSHAKE_ROUNDS = 3
PEER_ROUNDS = 3  # fresh devices and fresh keys each round; figures are medians
PORT = 51820


def sh(*argv: str) -> str:
    return subprocess.run(argv, capture_output=True, text=True, check=True, timeout=60).stdout


def timed(action: Callable[[], object]) -> float:
    start = time.perf_counter()
    action()
    return time.perf_counter() - start


def wait_for(what: str, probe: Callable[[], bool], timeout: float) -> None:
    deadline = time.monotonic() + timeout
    while not probe():
        if time.monotonic() > deadline:
            raise RuntimeError(f"timed out after {timeout:g} s waiting for {what}")
        time.sleep(0.005)


def many_peers(n: int) -> list[PeerConfig]:
    base = int(IPv4Address("10.64.0.0"))
    return [
        PeerConfig(
            WireGuardPrivateKey.generate().public_key(),
            (ip_network(f"{IPv4Address(base + i)}/32"),),
            endpoint=f"198.18.{100 + i // 250}.{1 + i % 250}:{PORT}",
        )
        for i in range(n)
    ]


def delete_namespaces() -> None:
    for ns in (NS_A, NS_B):
        if Path("/run/netns", ns).exists():
            subprocess.run(["ip", "netns", "del", ns], check=False)


def setup_underlay() -> None:
    delete_namespaces()
    for ns in (NS_A, NS_B):
        sh("ip", "netns", "add", ns)
        sh("ip", "-n", ns, "link", "set", "lo", "up")
    sh("ip", "link", "add", "wgb2va", "netns", NS_A, "type", "veth", "peer", "wgb2vb", "netns", NS_B)
    for ns, dev, addr in ((NS_A, "wgb2va", "198.18.252.1/24"), (NS_B, "wgb2vb", "198.18.252.2/24")):
        sh("ip", "-n", ns, "addr", "add", addr, "dev", dev)
        sh("ip", "-n", ns, "link", "set", dev, "up")


def wg_argv(backend: Backend, ns: str, ifname: str) -> list[str]:
    """`wg` run where it sees `ifname`: in wireguard-go's mount+net namespaces, or in the namespace."""
    if isinstance(backend, UserspaceBackend):
        pid = backend.pid(ifname)
        assert pid is not None
        return ["nsenter", "-t", str(pid), "-m", "-n", "wg"]
    return ["ip", "netns", "exec", ns, "wg"]


def measure_peers(a: Backend) -> dict[str, float]:
    """1,000 peers through our backend and through `wg`, each on a fresh device."""
    desired = DeviceConfig.build(WireGuardPrivateKey.generate(), many_peers(PEERS), listen_port=PORT)
    a.create(IF)
    a.create(IF_BASE)

    def apply_ours() -> None:
        a.apply(IF, diff(a.read(IF), desired).update)

    figures = {"apply": timed(apply_ours)}
    figures["read"] = timed(lambda: a.read(IF))
    got = a.read(IF)
    assert len(got.peers) == PEERS, f"read back {len(got.peers)} peers, applied {PEERS}"
    figures["noop"] = timed(lambda: a.apply(IF, diff(a.read(IF), desired).update))
    assert diff(a.read(IF), desired).is_empty()

    one_changed = dict(desired.peers)
    first = next(iter(one_changed))
    one_changed[first] = PeerConfig(first, (ip_network("10.99.0.0/16"),))
    changed = DeviceConfig(desired.private_key, desired.listen_port, None, one_changed)

    def apply_one() -> None:
        rec = diff(a.read(IF), changed)
        assert len(rec.changes) == 1
        a.apply(IF, rec.update)

    figures["one"] = timed(apply_one)

    # Baseline: the same peers through wireguard-tools on the other fresh device.
    conf = Path(tempfile.mkdtemp(prefix="wgb2-")) / "base.conf"
    text = render_wgquick(desired, [])
    conf.write_text(text.replace(f"ListenPort = {PORT}", f"ListenPort = {PORT + 1}"))
    conf.chmod(0o600)
    nsenter = wg_argv(a, NS_A, IF_BASE)
    try:
        figures["wg_apply"] = timed(lambda: sh(*nsenter, "setconf", IF_BASE, str(conf)))
        dump: list[str] = []
        figures["wg_read"] = timed(lambda: dump.append(sh(*nsenter, "show", IF_BASE, "dump")))
        assert len(dump[0].splitlines()) == PEERS + 1
    finally:
        shutil.rmtree(conf.parent, ignore_errors=True)
    a.delete(IF_BASE)
    a.delete(IF)
    return figures


def measure_first_handshake(a: Backend, b: Backend, rounds: int = HANDSHAKE_ROUNDS) -> list[float]:
    """Seconds from the second side's apply to a handshake seen on the first side, on fresh devices."""
    samples = []
    for _ in range(rounds):
        ka, kb = WireGuardPrivateKey.generate(), WireGuardPrivateKey.generate()

        def side(key: WireGuardPrivateKey, other: WireGuardPrivateKey, other_ip: str) -> DeviceConfig:
            peer = PeerConfig(
                other.public_key(),
                (ip_network("198.19.252.0/32"),),
                endpoint=f"{other_ip}:{PORT}",
                persistent_keepalive=25,
            )
            return DeviceConfig.build(key, [peer], listen_port=PORT)

        for backend, ns in ((a, NS_A), (b, NS_B)):
            backend.create(IF)
            sh("ip", "-n", ns, "link", "set", IF, "up")
        a.apply(IF, diff(a.read(IF), side(ka, kb, "198.18.252.2")).update)
        start = time.monotonic()
        b.apply(IF, diff(b.read(IF), side(kb, ka, "198.18.252.1")).update)
        wait_for(
            "the first handshake",
            lambda: any(p.last_handshake for p in a.read(IF).peers.values()),
            30,
        )
        samples.append(time.monotonic() - start)
        a.delete(IF)
        b.delete(IF)
    return samples


def table(rows: list[tuple[str, str, str, str]], rounds: int) -> str:
    headers = (f"figure (median of {rounds})", "wgmesh", "wg (C)", "ratio")
    widths = [max(len(r[i]) for r in [headers, *rows]) for i in range(4)]
    lines = ["  ".join(h.ljust(w) for h, w in zip(headers, widths, strict=True))]
    lines.append("  ".join("-" * w for w in widths))
    lines += ["  ".join(c.ljust(w) for c, w in zip(r, widths, strict=True)) for r in rows]
    return "\n".join(lines)


def skip_reason(backend: str) -> str | None:
    if os.geteuid() != 0:
        return "not_root"
    tools = ("ip", "wireguard-go", "wg", "nsenter", "unshare") if backend == "userspace" else ("ip", "wg")
    for tool in tools:
        if shutil.which(tool) is None:
            return f"no_{tool.replace('-', '_')}"
    if backend == "kernel":
        from agent.backends.kernel import kernel_module_present

        if not kernel_module_present():
            return "no_kernel_module"
    return None


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m bench.backend")
    parser.add_argument("--backend", choices=("userspace", "kernel"), default="userspace")
    parser.add_argument("--rounds", type=int, default=PEER_ROUNDS, help="rounds of 1,000 peers (median)")
    args = parser.parse_args(argv)
    name = "backend" if args.backend == "userspace" else "backend_kernel"
    reason = skip_reason(args.backend)
    if reason:
        print(f"skipped: {reason}")
        print(f"RESULT name={name} skipped=1 reason={reason}")
        return 0
    run_root = Path(tempfile.mkdtemp(prefix="wgb2-run-"))
    backends: list[Backend] = []
    try:
        setup_underlay()
        for ns in (NS_A, NS_B):
            if args.backend == "kernel":
                backends.append(KernelBackend(netns=ns))
                continue
            (run_root / ns).mkdir(mode=0o700)
            backends.append(UserspaceBackend(netns=ns, run_dir=run_root / ns))
        a, b = backends
        print(f"{args.backend}: applying {PEERS} peers x{args.rounds} ...", file=sys.stderr, flush=True)
        rounds = [measure_peers(a) for _ in range(args.rounds)]
        f = {key: statistics.median(r[key] for r in rounds) for key in rounds[0]}
        hs_rounds = max(1, min(args.rounds, HANDSHAKE_ROUNDS))
        print(f"first handshake x{hs_rounds} ...", file=sys.stderr, flush=True)
        hs = measure_first_handshake(a, b, hs_rounds)
    finally:
        for backend in backends:
            for ifname in (IF, IF_BASE):
                try:
                    backend.delete(ifname)
                except Exception as e:  # keep cleaning up
                    print(f"cleanup: {e}", file=sys.stderr)
        delete_namespaces()
        shutil.rmtree(run_root, ignore_errors=True)

    hs_median = statistics.median(hs)
    print(
        table(
            [
                (
                    f"apply {PEERS} peers (s)",
                    f"{f['apply']:.3f}",
                    f"{f['wg_apply']:.3f}",
                    f"{f['apply'] / f['wg_apply']:.2f}",
                ),
                (
                    f"read {PEERS} peers (s)",
                    f"{f['read']:.3f}",
                    f"{f['wg_read']:.3f}",
                    f"{f['read'] / f['wg_read']:.2f}",
                ),
                (f"re-apply unchanged {PEERS} (s)", f"{f['noop']:.3f}", "-", "-"),
                (f"change 1 of {PEERS} peers (s)", f"{f['one']:.3f}", "-", "-"),
                (
                    "apply -> first handshake (s)",
                    f"{hs_median:.3f} ({', '.join(f'{x:.3f}' for x in hs)})",
                    "-",
                    "-",
                ),
            ],
            args.rounds,
        )
    )
    print(
        f"RESULT name={name} "
        f"apply_1000_s={f['apply']:.4f} read_1000_s={f['read']:.4f} first_handshake_s={hs_median:.4f} "
        f"noop_reapply_1000_s={f['noop']:.4f} change_1_of_1000_s={f['one']:.4f} "
        f"wg_setconf_1000_s={f['wg_apply']:.4f} wg_dump_1000_s={f['wg_read']:.4f} "
        f"apply_ratio_vs_wg={f['apply'] / f['wg_apply']:.2f} read_ratio_vs_wg={f['read'] / f['wg_read']:.2f}"
    )
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
