"""The agent's firewall: the ruleset a NodePolicy asks for (tables of policy in -> rule labels out), the
pure diff against what the host has, and applying it idempotently on the fake nftables."""

from __future__ import annotations

import pytest

from agent.firewall import desired_ruleset, firewall_plan, parse_listing, rule_labels, table_name
from agent.nft import FakeNftables, apply_firewall
from wire.models import NodePolicy


def policy(**fields: object) -> NodePolicy:
    base: dict[str, object] = {"version": 1, "inbound": [], "outbound": [], "mesh_ports": [8421]}
    return NodePolicy.model_validate({**base, **fields})


API = {"rule": "api", "peers": ["100.64.0.3/32", "100.64.0.4/32"], "ports": ["tcp/8000"]}
WORK = {"rule": "work", "peers": ["100.64.0.1/32", "fd00::1/128"], "ports": ["any"]}
BASE = ["answers", "probes", "probes v6", "mesh"]


@pytest.mark.parametrize(
    ("node_policy", "labels"),
    [
        (None, []),
        (
            policy(),
            [f"input: {x}" for x in [*BASE, "everything else"]]
            + [f"output: {x}" for x in [*BASE, "everything else"]],
        ),
        (
            policy(inbound=[API], outbound=[WORK], mesh_ports=[]),
            [f"input: {x}" for x in ["answers", "probes", "probes v6", "api tcp/8000", "everything else"]]
            + [
                f"output: {x}"
                for x in ["answers", "probes", "probes v6", "work any", "work any", "everything else"]
            ],
        ),
        (
            policy(
                inbound=[
                    {"rule": "dns", "peers": ["100.64.0.9/32"], "ports": ["udp/53", "tcp/5000-5010", "icmp"]}
                ]
            ),
            [f"input: {x}" for x in [*BASE, "dns icmp", "dns tcp/5000-5010", "dns udp/53", "everything else"]]
            + [f"output: {x}" for x in [*BASE, "everything else"]],
        ),
    ],
)
def test_the_ruleset_a_policy_asks_for(node_policy: NodePolicy | None, labels: list[str]) -> None:
    assert rule_labels(desired_ruleset(node_policy, "wg0")) == labels


def test_rules_match_only_the_interface_and_name_the_peers() -> None:
    ruleset = desired_ruleset(policy(inbound=[API]), "wg0")
    assert ruleset is not None and ruleset.rules is not None
    api = next(r for r in ruleset.rules["input"] if r.label == "api tcp/8000")
    statements = api.statements()
    assert statements[0] == {"match": {"op": "==", "left": {"meta": {"key": "iifname"}}, "right": "wg0"}}
    assert statements[1]["match"]["right"] == {"set": ["100.64.0.3", "100.64.0.4"]}
    assert statements[2]["match"] == {
        "op": "==",
        "left": {"payload": {"protocol": "tcp", "field": "dport"}},
        "right": 8000,
    }
    assert statements[-1] == {"accept": None}
    assert ruleset.rules["input"][-1].statements()[-1] == {"drop": None}


def test_the_table_is_named_for_the_interface() -> None:
    assert table_name("wg0") == "wgmesh_wg0"
    assert table_name("wg-lab.1") == "wgmesh_wg_lab_1"


def test_the_diff_touches_only_the_chains_that_differ() -> None:
    one, two = (
        desired_ruleset(policy(inbound=[API]), "wg0"),
        desired_ruleset(policy(inbound=[API], outbound=[WORK]), "wg0"),
    )
    assert firewall_plan(one, one, "wg0").changes == []
    plan = firewall_plan(one, two, "wg0")
    assert [str(c) for c in plan.changes] == ["wgmesh_wg0 output: 5 -> 7 rules"]
    verbs = [next(iter(c)) for c in plan.commands]
    assert verbs == ["add", "flush", *["add"] * 7]
    assert [str(c) for c in firewall_plan(None, one, "wg0").changes] == [
        "table added: inet wgmesh_wg0",
        "wgmesh_wg0 input: 0 -> 6 rules",
        "wgmesh_wg0 output: 0 -> 5 rules",
    ]
    assert [str(c) for c in firewall_plan(one, None, "wg0").changes] == ["table removed: inet wgmesh_wg0"]
    assert not firewall_plan(None, None, "wg0")


def test_a_foreign_rule_in_our_chain_gets_the_chain_replaced() -> None:
    listing = {
        "nftables": [
            {"table": {"family": "inet", "name": "wgmesh_wg0"}},
            {"chain": {"family": "inet", "table": "wgmesh_wg0", "name": "input"}},
            {"rule": {"family": "inet", "table": "wgmesh_wg0", "chain": "input", "expr": []}},
        ]
    }
    current = parse_listing(listing, "wgmesh_wg0")
    assert current is not None and current.chains == {"input": ("",)}
    plan = firewall_plan(current, desired_ruleset(policy(), "wg0"), "wg0")
    assert [c.chain for c in plan.changes] == ["input", "output"]
    assert parse_listing({"nftables": []}, "wgmesh_wg0") is None


def test_apply_is_idempotent_and_removing_the_policy_removes_the_table() -> None:
    nft = FakeNftables()
    assert len(apply_firewall(nft, policy(inbound=[API]), "wg0")) == 3
    assert apply_firewall(nft, policy(inbound=[API]), "wg0") == []
    assert nft.applied == 1
    changes = apply_firewall(nft, policy(inbound=[API, WORK]), "wg0")
    assert [c.chain for c in changes] == ["input"]
    assert len(nft.tables["wgmesh_wg0"]["input"]) == 8
    assert [c.what for c in apply_firewall(nft, None, "wg0")] == ["table removed"]
    assert nft.tables == {}
    assert apply_firewall(nft, None, "wg0") == []
