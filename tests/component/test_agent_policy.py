"""Agents under a policy (AgentCore with the fake nftables): the firewall follows the map's policy, a
policy change moves only the maps it touches, agents report the version they enforce, and an agent
stopping with --down removes its table."""

from __future__ import annotations

import dataclasses

from agent.firewall import parse_listing, rule_labels
from tests.support import AgentMesh, eventually
from wire import api

POLICY = """
[tags]
alpha = ["supervisor"]
beta = ["worker"]
gamma = ["client"]
[[rules]]
name = "api"
from = ["tag:client"]
to = ["tag:supervisor"]
ports = ["tcp/8000"]
[[rules]]
name = "work"
from = ["tag:worker"]
to = ["tag:supervisor"]
"""


def labels(mesh: AgentMesh, name: str) -> list[str]:
    fw = mesh.hosts[name].firewall
    return list(rule_labels(parse_listing(fw.list_table("wgmesh_wg0"), "wgmesh_wg0")))


def peer_names(mesh: AgentMesh, name: str) -> set[str]:
    agent = mesh.hosts[name].agent
    if agent is None or agent.netmap is None:
        return set()
    return {p.name for p in agent.netmap.peers}


async def test_the_firewall_follows_the_policy(mesh: AgentMesh) -> None:
    for name in ("alpha", "beta", "gamma"):
        await mesh.start(name)
    await eventually(
        "a full mesh",
        lambda: all(len(peer_names(mesh, n)) == 2 for n in ("alpha", "beta", "gamma")),
        show=mesh.all_logs,
    )
    assert all(h.firewall.tables == {} for h in mesh.hosts.values())  # no policy: no table
    async with mesh.admin_client() as c:
        r = await c.put(api.POLICY, json={"text": POLICY})
        assert r.status_code == 200, r.text
    await eventually(
        "gamma to hold only alpha", lambda: peer_names(mesh, "gamma") == {"alpha"}, show=mesh.all_logs
    )
    await eventually(
        "alpha's firewall", lambda: "input: api tcp/8000" in labels(mesh, "alpha"), show=mesh.all_logs
    )
    assert "input: work any" in labels(mesh, "alpha")
    await eventually(
        "gamma's firewall", lambda: "output: api tcp/8000" in labels(mesh, "gamma"), show=mesh.all_logs
    )
    assert "firewall_changed" in mesh.hosts["gamma"].log()
    await eventually(
        "beta's firewall", lambda: "output: work any" in labels(mesh, "beta"), show=mesh.all_logs
    )
    applied = mesh.hosts["beta"].firewall.applied

    # the agents say which version they enforce (on their next poll)
    async def all_enforce_version_1() -> bool:
        return {n["policy_version"] for n in (await mesh.admin_get(api.NODES)).json()} == {1}

    await eventually("the agents to report policy version 1", all_enforce_version_1, show=mesh.all_logs)
    # beta's rules stay as they are when a change does not touch them
    async with mesh.admin_client() as c:
        r = await c.put(api.POLICY, json={"text": POLICY.replace("tcp/8000", "tcp/8001")})
        assert r.status_code == 200
    await eventually(
        "the new port on alpha", lambda: "input: api tcp/8001" in labels(mesh, "alpha"), show=mesh.all_logs
    )
    assert mesh.hosts["beta"].firewall.applied == applied
    # stopping with --down removes the table
    h = mesh.hosts["gamma"]
    assert h.agent is not None
    h.agent.settings = dataclasses.replace(h.agent.settings, down_on_stop=True)
    await mesh.stop("gamma")
    assert h.firewall.tables == {}
