"""Latency and loss between two lab hosts, added in userspace (this kernel has no netem and no nfqueue).

`lab delay h1 h2 80ms --loss 5%` steers the pair's WireGuard packets through a small UDP relay in the
underlay namespace (`lab/delay_relay.py`) that holds each packet for half the delay and drops the given
share of them, in each direction. So pings between h1 and h2 take 80 ms longer; with 5 % loss each way,
about 10 % of echo requests or replies are lost.

Steering is stateless nftables address rewriting in the two hosts' namespaces (table `ip wgl_delay`,
built whole from the lab's record each time, so applying it twice changes nothing):
- on the way out, h1's packets to h2's WireGuard port go to the relay's port for h1 instead (a `route`
  chain, so the kernel routes the rewritten packet again);
- on the way in, packets from that relay port are rewritten back to come from h2's address and port,
  so WireGuard on h1 sees its peer where it expects it (no roaming, no endpoint change).
The relay knows both ends, so it needs no state either. Other traffic (the controller, pings on the
underlay) is not touched. `lab heal h1 h2` removes both the cut and the delay.
"""

from __future__ import annotations

import re
from dataclasses import dataclass
from ipaddress import IPv4Address

from lab.command import run
from lab.layout import WG_LISTEN_PORT

TABLE = "wgl_delay"
MAX_DELAY_MS = 10_000.0
_DELAY = re.compile(r"^(\d+(?:\.\d+)?)(ms|s)$")
_LOSS = re.compile(r"^(\d+(?:\.\d+)?)%$")


class ImpairmentError(ValueError):
    """A delay or loss that cannot be used; the message says what is allowed."""


def parse_delay_ms(text: str) -> float:
    """'80ms' -> 80.0, '0.25s' -> 250.0; negative, unitless or over 10 s is an ImpairmentError."""
    value = text.strip().lower()
    if value.startswith("-"):
        raise ImpairmentError(f"delay {text!r}: must not be negative")
    match = _DELAY.match(value)
    if not match:
        raise ImpairmentError(f"delay {text!r}: expected a duration like 80ms or 0.2s")
    ms = float(match.group(1)) * (1000.0 if match.group(2) == "s" else 1.0)
    if ms > MAX_DELAY_MS:
        raise ImpairmentError(f"delay {text!r}: at most {MAX_DELAY_MS / 1000:g} s")
    return ms


def parse_loss(text: str) -> float:
    """'5%' -> 0.05; anything outside 0-100 % is an ImpairmentError."""
    value = text.strip()
    if value.startswith("-"):
        raise ImpairmentError(f"loss {text!r}: must not be negative")
    match = _LOSS.match(value)
    if not match:
        raise ImpairmentError(f"loss {text!r}: expected a percentage like 5%")
    share = float(match.group(1)) / 100.0
    if share > 1.0:
        raise ImpairmentError(f"loss {text!r}: at most 100%")
    return share


@dataclass(frozen=True)
class Rewrite:
    """One host's view of an impaired pair: its peer's address, and the relay port that stands for it."""

    peer: IPv4Address
    relay: IPv4Address
    relay_port: int


def nft_ruleset(table: str, wg_port: int, rewrites: list[Rewrite]) -> str:
    """The whole `ip TABLE` for one host namespace: replaces what was there (empty list: no table)."""
    lines = [f"table ip {table}", f"delete table ip {table}"]
    if rewrites:
        out = [
            f"ip daddr {r.peer} udp dport {wg_port} ip daddr set {r.relay} udp dport set {r.relay_port}"
            for r in rewrites
        ]
        back = [
            f"ip saddr {r.relay} udp sport {r.relay_port} ip saddr set {r.peer} udp sport set {wg_port}"
            for r in rewrites
        ]
        lines += [
            f"table ip {table} {{",
            "  chain out { type route hook output priority -150; policy accept;",
            *(f"    {rule}" for rule in out),
            "  }",
            "  chain back { type filter hook prerouting priority -300; policy accept;",
            *(f"    {rule}" for rule in back),
            "  }",
            "}",
        ]
    return "\n".join(lines) + "\n"


def relay_ports(log_text: str) -> tuple[int, int] | None:
    """The (port for a, port for b) the relay printed in its log, or None before it printed them."""
    for line in log_text.splitlines():
        parts = line.split()
        if len(parts) == 3 and parts[0] == "ports" and parts[1].isdigit() and parts[2].isdigit():
            return int(parts[1]), int(parts[2])
    return None


def apply(namespace: str, rewrites: list[Rewrite]) -> None:
    """Make the namespace's `ip wgl_delay` table exactly what `rewrites` say (idempotent)."""
    run(
        ["ip", "netns", "exec", namespace, "nft", "-f", "-"],
        input=nft_ruleset(TABLE, WG_LISTEN_PORT, rewrites),
    )


def installed_rules(namespace: str) -> list[str]:
    """The rules of the namespace's `ip wgl_delay` table as nft prints them (empty: no table)."""
    done = run(["ip", "netns", "exec", namespace, "nft", "list", "table", "ip", TABLE], check=False)
    if done.returncode != 0:
        return []
    return [line.strip() for line in done.stdout.splitlines() if " set " in line]
