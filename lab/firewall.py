"""Cutting and healing the underlay between two hosts with nftables inside the hosts' namespaces.

Each host namespace gets one table `inet wgl` whose set `cut` holds the underlay addresses this host
must not exchange packets with (both directions, every protocol). Cutting A-B puts B's address in A's
set and A's in B's; healing removes them. Both are idempotent. The rules are stateless, so a flow that
was established before the cut is dropped too. The controller's address is never put in the set.
"""

from __future__ import annotations

import json
from ipaddress import IPv4Address

from lab.command import run

TABLE = "wgl"
SET = "cut"
_RULESET = f"""
table inet {TABLE} {{
  set {SET} {{ type ipv4_addr; }}
  chain input {{ type filter hook input priority 0; policy accept; ip saddr @{SET} drop; }}
  chain output {{ type filter hook output priority 0; policy accept; ip daddr @{SET} drop; }}
}}
"""


def _nft(namespace: str, *args: str, check: bool = True, input: str | None = None) -> str:
    return run(["ip", "netns", "exec", namespace, "nft", *args], check=check, input=input).stdout


def _has_table(namespace: str) -> bool:
    return (
        run(["ip", "netns", "exec", namespace, "nft", "list", "table", "inet", TABLE], check=False).returncode
        == 0
    )


def cut_addresses(namespace: str) -> list[IPv4Address]:
    """The underlay addresses `namespace` currently drops."""
    if not _has_table(namespace):
        return []
    data = json.loads(_nft(namespace, "-j", "list", "set", "inet", TABLE, SET))
    for item in data.get("nftables", []):
        if "set" in item:
            return sorted(IPv4Address(e) for e in item["set"].get("elem", []) if isinstance(e, str))
    return []


def block(namespace: str, *peers: IPv4Address) -> None:
    """Drop traffic between `namespace` and every one of `peers` (in one nft call: at once)."""
    if not _has_table(namespace):
        _nft(namespace, "-f", "-", input=_RULESET)
    _nft(namespace, "add", "element", "inet", TABLE, SET, "{ " + ", ".join(str(p) for p in peers) + " }")


def unblock(namespace: str, peer: IPv4Address) -> None:
    if peer in cut_addresses(namespace):
        _nft(namespace, "delete", "element", "inet", TABLE, SET, f"{{ {peer} }}")
