"""Access: what the policy in force means for the mesh's maps, on the routing arrays.

Given the policy document, the node cards in routing-index order and the routes (a
controller.routing.Router), `Access` answers per node: which destinations it routes to, which peers its map holds, which of its routes may
use a relay, whether it forwards for others, and the `NodePolicy` JSON its agent enforces.

Rules (property-tested: no map holds a forbidden peer or a route across a node that may not relay):
- Two nodes are *connected* when a rule lets either reach the other (any port).
- A path is usable only when every node inside it (not its ends) may relay. A connected pair whose
  shortest path is not usable talks over its direct link (its route says direct, cost unknown): it
  never crosses a node that may not relay.
- A node routes to the nodes it is connected to and to every destination of a usable path it lies
  inside (it relays for that pair); its peers are the first hops of those routes and the nodes it is
  connected to; a first hop that is not itself a destination is reached directly.
- A node forwards exactly when it lies inside a usable path of a connected pair.
Only relayed routes (the router's stored pairs) can cross a node: a direct route is usable and has no
inside, so the work and memory are O(nodes + relayed routes x their length), beside the connected
matrix. Pure: numpy only, no I/O, no clock.
"""

from __future__ import annotations

import ipaddress
from collections.abc import Sequence
from dataclasses import dataclass

import numpy as np
import numpy.typing as npt
from pydantic import TypeAdapter

from controller.netmap import JsonTemplate, NodeCard
from controller.routing import Router
from wire.models import FirewallRule, NodePolicy
from wire.policy import PolicyDocument, Subject, selects

_POLICY = JsonTemplate(NodePolicy)
_NO_VERSION = frozenset({"version"})
assert _POLICY.fields[0][0] == "version", "Access.node puts the version first"

BoolMatrix = npt.NDArray[np.bool_]


@dataclass(frozen=True)
class NodeAccess:
    """One node's share of the policy, as `controller.netmap` renders it (indexes: routing order)."""

    peers: npt.NDArray[np.bool_]  # positions whose peer entry the map holds
    routes: npt.NDArray[np.bool_]  # positions the map has a route to
    relayed: npt.NDArray[np.bool_]  # positions whose route may go through the next hop the router chose
    forward: bool
    policy_json: bytes  # the NodePolicy JSON


def subject_of(card: NodeCard) -> Subject:
    return Subject(card.name, frozenset(card.tags))


def connected_matrix(doc: PolicyDocument, subjects: Sequence[Subject]) -> BoolMatrix:
    """[i, j]: some rule lets node i reach node j or j reach i (never i == j)."""
    n = len(subjects)
    out = np.zeros((n, n), dtype=bool)
    for rule in doc.rules:
        src = np.array([selects(rule.sources, s) for s in subjects], dtype=bool)
        dst = np.array([selects(rule.destinations, s) for s in subjects], dtype=bool)
        if src.any() and dst.any():
            out |= np.outer(src, dst)
    out |= out.T
    np.fill_diagonal(out, False)
    return out


class PolicyMasks:
    """What the policy says about one directory, whatever the routes: who may relay, who is connected
    to whom, and each rule's members and firewall JSON. Kept while neither the policy nor the
    directory changes (a link change only moves routes)."""

    def __init__(self, doc: PolicyDocument, cards: Sequence[NodeCard]) -> None:
        self.doc = doc
        subjects = [subject_of(c) for c in cards]
        self.relay = np.array([selects(doc.relays, s) for s in subjects], dtype=bool)
        self.connected = connected_matrix(doc, subjects)
        self.rule_parts = self._render_rules(cards, subjects)
        self.mesh_ports = TypeAdapter(list[int]).dump_json([] if doc.p2p_port is None else [doc.p2p_port])
        self.messages = TypeAdapter(dict[str, list[str]]).dump_json(doc.messages)

    def _render_rules(
        self, cards: Sequence[NodeCard], subjects: Sequence[Subject]
    ) -> list[tuple[npt.NDArray[np.bool_], npt.NDArray[np.bool_], bytes, bytes]]:
        """Per rule: its source and destination masks and the JSON of its firewall entries."""
        out = []
        for i, rule in enumerate(self.doc.rules):
            src = np.array([selects(rule.sources, s) for s in subjects], dtype=bool)
            dst = np.array([selects(rule.destinations, s) for s in subjects], dtype=bool)
            ports = [str(p) for p in rule.port_specs()]
            name = self.doc.rule_name(i)

            def entry(mask: npt.NDArray[np.bool_], name: str = name, ports: list[str] = ports) -> bytes:
                peers = [ipaddress.ip_network(cards[k].tunnel_address) for k in np.flatnonzero(mask).tolist()]
                return (
                    FirewallRule.model_construct(rule=name, peers=peers, ports=ports)
                    .model_dump_json()
                    .encode()
                )

            out.append((src, dst, entry(src), entry(dst)))
        return out


class Access:
    """The policy's meaning for one directory and one set of shortest-path trees."""

    def __init__(self, masks: PolicyMasks, router: Router) -> None:
        self.masks = masks
        self.relay = masks.relay
        self.connected = masks.connected
        self._router = router
        self._unusable: dict[int, list[int]] = {}  # source index -> destinations its path may not take
        self._inside: dict[int, set[int]] = {}  # node index -> destinations it relays for (usable paths)
        relay, connected = self.relay, self.connected
        for s, d in router.relayed_routes():
            inner = router.path_indexes(s, d)[1:-1]
            if not all(relay[x] for x in inner):
                self._unusable.setdefault(s, []).append(d)
            elif connected[s, d]:
                for x in inner:
                    self._inside.setdefault(x, set()).add(d)

    def forwards(self, index: int) -> bool:
        """The node lies inside a usable path of a connected pair."""
        return bool(self._inside.get(index))

    def rules_json(self, index: int) -> bytes:
        """The node's firewall and message rights: its NodePolicy JSON without the version."""
        return _POLICY.render(self._rules_parts(index), _NO_VERSION)

    def _rules_parts(self, index: int) -> dict[str, bytes]:
        parts = self.masks.rule_parts
        inbound = [src_json for src, dst, src_json, _ in parts if dst[index] and src.any()]
        outbound = [dst_json for src, dst, _, dst_json in parts if src[index] and dst.any()]
        return {
            "inbound": b"[" + b",".join(inbound) + b"]",
            "outbound": b"[" + b",".join(outbound) + b"]",
            "mesh_ports": self.masks.mesh_ports,
            "messages": self.masks.messages,
        }

    def node(self, index: int, version: int, rules_json: bytes | None = None) -> NodeAccess:
        """What the node at `index` may see, route and must enforce; `version`: the policy version its
        rules were last changed at (`rules_json`: its `rules_json`, when already made)."""
        n = len(self._router)
        col = self.connected[index]
        inside = np.zeros(n, dtype=bool)
        inside[list(self._inside.get(index, ()))] = True
        dests = col | inside
        hops = self._router.next_hop_row(self._router.nodes[index])
        ok = np.ones(n, dtype=bool)
        ok[self._unusable.get(index, [])] = False
        relayed = ok & (hops >= 0) & (hops != np.arange(len(hops)))
        peers = col.copy()
        via = hops[dests & relayed]
        peers[via] = True
        peers |= dests & ~relayed
        peers[index] = False
        routes = dests | peers
        routes[index] = False
        relayed &= dests  # a peer that is only a first hop is reached directly
        if rules_json is None:
            rules_json = self.rules_json(index)
        policy = b'{"version":%d,' % version + rules_json[1:]  # version is NodePolicy's first field
        return NodeAccess(
            peers=peers, routes=routes, relayed=relayed, forward=bool(inside.any()), policy_json=policy
        )
