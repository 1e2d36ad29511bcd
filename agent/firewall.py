"""The host firewall on the WireGuard interface: the nftables ruleset a node's `NodePolicy` asks for, and
the pure diff from the ruleset the host has to it.

One table per interface, `inet wgmesh_<ifname>`, with two chains that see only the interface's traffic:
`input` (packets peers send to this host, `iifname IFNAME`) and `output` (packets this host sends to
peers, `oifname IFNAME`). Each chain accepts, in order: answers of allowed connections (conntrack
established/related), ICMP echo (the agent's link probes), the mesh's tcp ports (p2p), then one rule
per policy rule and port spec naming the peers' addresses; everything else on the interface is dropped.
Traffic a relay forwards (wg0 to wg0) goes through neither chain: its two ends filter it.

Rules:
- No policy (None): no table. The agent removes its table when it stops with `--down`.
- Each nftables rule carries a comment `wgmesh:<digest> <label>`; the digest covers the rule's whole
  expression, so comparing the comments of the rules the host has with the desired ones is comparing
  the rules. A chain whose rules differ is replaced (flush + add) inside one nftables transaction, so
  the host never runs half a ruleset; a chain that matches is left alone; applying twice changes nothing.
Pure: the commands are nftables JSON (`nft -j -f -`); `agent.nft` runs them.
"""

from __future__ import annotations

import hashlib
import json
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass
from ipaddress import IPv4Network, ip_network
from typing import TYPE_CHECKING, Any, Literal

from wire.models import NodePolicy

if TYPE_CHECKING:
    from wire.policy import PortSpec

Chain = Literal["input", "output"]
CHAINS: tuple[Chain, ...] = ("input", "output")
FAMILY = "inet"
COMMENT_PREFIX = "wgmesh:"
JsonObject = dict[str, Any]


def table_name(ifname: str) -> str:
    """`wgmesh_<ifname>` with every character nft names do not allow replaced by `_`."""
    return "wgmesh_" + "".join(c if c.isalnum() or c == "_" else "_" for c in ifname)


@dataclass(frozen=True)
class FilterRule:
    """One nftables rule: its match-and-verdict expression and the label that says where it comes from."""

    label: str
    expr: tuple[str, ...]  # each statement as canonical JSON (hashable, comparable)

    @property
    def comment(self) -> str:
        digest = hashlib.blake2b("\n".join(self.expr).encode(), digest_size=6).hexdigest()
        return f"{COMMENT_PREFIX}{digest} {self.label}"[:127]

    def statements(self) -> list[JsonObject]:
        return [json.loads(e) for e in self.expr]


@dataclass(frozen=True)
class Ruleset:
    """The table of one interface as comments per chain (what identifies its rules), and the rules
    themselves when they are known (the desired side)."""

    table: str
    chains: Mapping[Chain, tuple[str, ...]]  # chain -> rule comments, in order
    rules: Mapping[Chain, tuple[FilterRule, ...]] | None = None


@dataclass(frozen=True)
class FirewallChange:
    """One change the diff makes: a chain's rules replaced, the table added or removed."""

    what: Literal["table added", "table removed", "chain replaced"]
    table: str
    chain: Chain | None = None
    rules_before: int = 0
    rules_after: int = 0

    def __str__(self) -> str:
        if self.chain is None:
            return f"{self.what}: {FAMILY} {self.table}"
        return f"{self.table} {self.chain}: {self.rules_before} -> {self.rules_after} rules"


@dataclass(frozen=True)
class FirewallPlan:
    """What turns the current ruleset into the desired one: nftables JSON commands (one transaction)
    and the changes they make. Empty: nothing to do."""

    commands: list[JsonObject]
    changes: list[FirewallChange]

    def __bool__(self) -> bool:
        return bool(self.changes)

    def document(self) -> str:
        return json.dumps({"nftables": [{"metainfo": {"json_schema_version": 1}}, *self.commands]})


# --- the desired ruleset ----------------------------------------------------------------------------


def _s(statement: JsonObject) -> str:
    return json.dumps(statement, sort_keys=True, separators=(",", ":"))


def _match(left: JsonObject, right: Any, op: str = "==") -> str:
    return _s({"match": {"op": op, "left": left, "right": right}})


def _iface(chain: Chain, ifname: str) -> str:
    return _match({"meta": {"key": "iifname" if chain == "input" else "oifname"}}, ifname)


ACCEPT = _s({"accept": None})
DROP = _s({"drop": None})


def _port_match(spec: PortSpec, v6: bool) -> list[str]:
    if spec.protocol == "any":
        return []
    if spec.protocol == "icmp":
        return [_match({"meta": {"key": "l4proto"}}, "ipv6-icmp" if v6 else "icmp")]
    if spec.all_ports:
        return [_match({"meta": {"key": "l4proto"}}, spec.protocol)]
    right: Any = spec.first if spec.first == spec.last else {"range": [spec.first, spec.last]}
    return [_match({"payload": {"protocol": spec.protocol, "field": "dport"}}, right)]


def _addresses(peers: Iterable[str], v6: bool) -> list[Any]:
    out: list[Any] = []
    for text in sorted(set(peers)):
        net = ip_network(text, strict=False)
        if isinstance(net, IPv4Network) == v6:
            continue
        if net.prefixlen == net.max_prefixlen:
            out.append(str(net.network_address))
        else:
            out.append({"prefix": {"addr": str(net.network_address), "len": net.prefixlen}})
    return out


def desired_ruleset(policy: NodePolicy | None, ifname: str) -> Ruleset | None:
    """The ruleset `policy` asks for on `ifname`; None: no policy, no table."""
    if policy is None:
        return None
    from wire.policy import parse_port_spec  # the policy's models load only where a policy is in force

    chains: dict[Chain, tuple[FilterRule, ...]] = {}
    for chain in CHAINS:
        here = _iface(chain, ifname)
        rules = [
            FilterRule(
                "answers", (here, _match({"ct": {"key": "state"}}, ["established", "related"], "in"), ACCEPT)
            ),
            FilterRule(
                "probes",
                (here, _match({"payload": {"protocol": "icmp", "field": "type"}}, "echo-request"), ACCEPT),
            ),
            FilterRule(
                "probes v6",
                (here, _match({"payload": {"protocol": "icmpv6", "field": "type"}}, "echo-request"), ACCEPT),
            ),
        ]
        if policy.mesh_ports:
            ports = sorted(set(policy.mesh_ports))
            right: Any = ports[0] if len(ports) == 1 else {"set": ports}
            rules.append(
                FilterRule(
                    "mesh", (here, _match({"payload": {"protocol": "tcp", "field": "dport"}}, right), ACCEPT)
                )
            )
        field = "saddr" if chain == "input" else "daddr"
        for entry in policy.inbound if chain == "input" else policy.outbound:
            for v6 in (False, True):
                addrs = _addresses((str(p) for p in entry.peers), v6)
                if not addrs:
                    continue
                who = _match({"payload": {"protocol": "ip6" if v6 else "ip", "field": field}}, {"set": addrs})
                for spec in sorted(set(map(parse_port_spec, entry.ports))):
                    rules.append(
                        FilterRule(f"{entry.rule} {spec}", (here, who, *_port_match(spec, v6), ACCEPT))
                    )
        rules.append(FilterRule("everything else", (here, DROP)))
        chains[chain] = tuple(rules)
    return Ruleset(
        table_name(ifname),
        {c: tuple(r.comment for r in rules) for c, rules in chains.items()},
        chains,
    )


# --- what the host has ------------------------------------------------------------------------------


def parse_listing(listing: Mapping[str, Any] | None, table: str) -> Ruleset | None:
    """The ruleset from `nft -j list table inet TABLE` output; None: no such table. Rules without our
    comment (someone else's) count as rules too, so a chain holding them gets replaced."""
    if listing is None:
        return None
    found = False
    chains: dict[Chain, list[str]] = {}
    for item in listing.get("nftables", []):
        if "table" in item and item["table"].get("name") == table:
            found = True
        elif "chain" in item and item["chain"].get("table") == table and item["chain"]["name"] in CHAINS:
            chains.setdefault(item["chain"]["name"], [])
        elif "rule" in item and item["rule"].get("table") == table and item["rule"].get("chain") in CHAINS:
            chains.setdefault(item["rule"]["chain"], []).append(str(item["rule"].get("comment", "")))
    if not found:
        return None
    return Ruleset(table, {c: tuple(v) for c, v in chains.items()})


# --- the diff ---------------------------------------------------------------------------------------


def _chain_obj(table: str, chain: Chain) -> JsonObject:
    return {
        "family": FAMILY,
        "table": table,
        "name": chain,
        "type": "filter",
        "hook": chain,
        "prio": 0,
        "policy": "accept",
    }


def firewall_plan(current: Ruleset | None, desired: Ruleset | None, ifname: str) -> FirewallPlan:
    """The commands and changes that turn `current` into `desired` (either None: no table)."""
    table = table_name(ifname)
    if desired is None:
        if current is None:
            return FirewallPlan([], [])
        return FirewallPlan(
            [{"delete": {"table": {"family": FAMILY, "name": table}}}],
            [FirewallChange("table removed", table)],
        )
    assert desired.rules is not None
    commands: list[JsonObject] = []
    changes: list[FirewallChange] = []
    if current is None:
        commands.append({"add": {"table": {"family": FAMILY, "name": table}}})
        changes.append(FirewallChange("table added", table))
    for chain in CHAINS:
        want = desired.chains[chain]
        have = None if current is None else current.chains.get(chain)
        if have == want:
            continue
        commands.append({"add": {"chain": _chain_obj(table, chain)}})
        if have is not None:
            commands.append({"flush": {"chain": {"family": FAMILY, "table": table, "name": chain}}})
        for rule in desired.rules[chain]:
            commands.append(
                {
                    "add": {
                        "rule": {
                            "family": FAMILY,
                            "table": table,
                            "chain": chain,
                            "comment": rule.comment,
                            "expr": rule.statements(),
                        }
                    }
                }
            )
        changes.append(FirewallChange("chain replaced", table, chain, len(have or ()), len(want)))
    return FirewallPlan(commands, changes)


def rule_labels(ruleset: Ruleset | None) -> Sequence[str]:
    """`chain: label` of every rule (for status and tests)."""
    if ruleset is None:
        return []
    return [f"{c}: {comment.partition(' ')[2]}" for c in CHAINS for comment in ruleset.chains.get(c, ())]
