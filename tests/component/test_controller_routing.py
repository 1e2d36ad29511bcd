"""Routing as agents see it in their maps: around a failed link through a relay (symmetric, allowed IPs
moved to the relay, relay told to forward), back only on a handshake newer than the failure, steady
under measurement noise; and restart keeps every node, address and serial."""

from __future__ import annotations

import asyncio
import ipaddress

from tests.support import ControllerHarness, Host
from wire import api
from wire.models import NetMap


async def current(controller: ControllerHarness, host: Host) -> NetMap:
    netmap = await controller.netmap(host)
    assert netmap is not None
    return netmap


def allowed(netmap: NetMap) -> dict[int, set[str]]:
    return {p.node_id: {str(n) for n in p.allowed_ips} for p in netmap.peers}


def via(netmap: NetMap) -> dict[int, int]:
    return {r.destination: r.via for r in netmap.routes}


def host32(host: Host) -> str:
    return f"{host.address}/32"


async def test_a_failed_link_is_routed_around_through_a_relay_on_both_ends(controller: ControllerHarness):
    a, b, c = [await controller.enroll() for _ in range(3)]
    await controller.report(a, {"peer_id": b.node_id, "loss": 1.0, "handshake_age_s": 200})
    ma, mb, mc = [await current(controller, h) for h in (a, b, c)]
    # A reaches B through C, B reaches A through C: the same path both ways.
    assert via(ma)[b.node_id] == c.node_id and via(mb)[a.node_id] == c.node_id
    assert allowed(ma)[b.node_id] == set() and allowed(ma)[c.node_id] == {host32(c), host32(b)}
    assert allowed(mb)[a.node_id] == set() and allowed(mb)[c.node_id] == {host32(c), host32(a)}
    # C carries it: it forwards, and reaches both directly.
    assert mc.forward and not ma.forward and not mb.forward
    assert via(mc) == {a.node_id: a.node_id, b.node_id: b.node_id}
    # B's peer entry stays in A's map (with its endpoint), so WireGuard can still handshake directly.
    peer_b = next(p for p in ma.peers if p.node_id == b.node_id)
    assert peer_b.endpoints == b.endpoints and peer_b.persistent_keepalive


async def test_the_link_comes_back_only_when_both_ends_see_a_handshake_newer_than_the_failure(
    controller, controller_clock
):
    a, b, _c = [await controller.enroll() for _ in range(3)]
    await controller.report(a, {"peer_id": b.node_id, "loss": 1.0, "handshake_age_s": 130})
    controller_clock.advance(60)
    # Relayed probes succeed, but the agent reports loss=None and the handshake is older than the failure.
    await controller.report(a, {"peer_id": b.node_id, "handshake_age_s": 190})
    await controller.report(b, {"peer_id": a.node_id, "handshake_age_s": 190})
    assert via(await current(controller, a))[b.node_id] != b.node_id
    # A handshake 5 s ago: after the failure, 60 s ago; one end saying so is not enough.
    await controller.report(b, {"peer_id": a.node_id, "handshake_age_s": 5})
    assert via(await current(controller, a))[b.node_id] != b.node_id
    await controller.report(a, {"peer_id": b.node_id, "handshake_age_s": 5})
    ma, mb = await current(controller, a), await current(controller, b)
    assert via(ma)[b.node_id] == b.node_id and via(mb)[a.node_id] == a.node_id
    assert allowed(ma)[b.node_id] == {host32(b)}


async def test_either_end_can_take_a_link_down(controller: ControllerHarness):
    a, b, _c = [await controller.enroll() for _ in range(3)]
    await controller.report(a, {"peer_id": b.node_id, "rtt_ms": 1.0, "loss": 0.0, "handshake_age_s": 3})
    await controller.report(b, {"peer_id": a.node_id, "rtt_ms": 1.0, "loss": 0.0, "handshake_age_s": 400})
    assert via(await current(controller, a))[b.node_id] != b.node_id


async def test_routes_do_not_flap_under_measurement_noise(controller: ControllerHarness):
    a, b, c = [await controller.enroll() for _ in range(3)]
    # A-B slow, A-C and C-B fast: the relay through C is much better.
    for x, y, rtt in ((a, b, 120.0), (a, c, 10.0), (c, b, 10.0)):
        await controller.report(x, {"peer_id": y.node_id, "rtt_ms": rtt, "loss": 0.0, "handshake_age_s": 3})
    serials = {h.node_id: (await current(controller, h)).serial for h in (a, b, c)}
    assert via(await current(controller, a))[b.node_id] == c.node_id
    noise = [0.9, 1.1, 0.95, 1.05, 1.08, 0.92, 1.0]
    for factor in noise:
        for x, y, rtt in ((a, b, 120.0), (a, c, 10.0), (c, b, 10.0), (b, a, 120.0)):
            m = {"peer_id": y.node_id, "rtt_ms": rtt * factor, "loss": 0.0, "handshake_age_s": 3}
            await controller.report(x, m)
    assert {h.node_id: (await current(controller, h)).serial for h in (a, b, c)} == serials
    assert via(await current(controller, a))[b.node_id] == c.node_id


async def test_restart_keeps_every_node_address_serial_and_failed_link(controller: ControllerHarness):
    hosts = [await controller.enroll(controller.new_host("web")) for _ in range(3)]
    await controller.report(hosts[0], {"peer_id": hosts[1].node_id, "loss": 1.0})
    before = {h.node_id: await current(controller, h) for h in hosts}
    nodes_before = (await controller.client.get(api.NODES, headers=controller.admin)).json()

    await controller.restart()

    nodes_after = (await controller.client.get(api.NODES, headers=controller.admin)).json()
    key = ("node_id", "name", "tunnel_address", "wg_public_key", "serial")
    assert [[n[k] for k in key] for n in nodes_after] == [[n[k] for k in key] for n in nodes_before]
    for h in hosts:
        # Same credential, same serial, same map: a poll with the old serial has nothing new.
        assert await controller.netmap(h, since=before[h.node_id].serial, timeout=0) is None
        assert await current(controller, h) == before[h.node_id]
    new = await controller.enroll()
    assert new.node_id > max(h.node_id for h in hosts)


async def test_a_removed_nodes_address_returns_only_after_every_map_dropped_it(controller: ControllerHarness):
    a, b, c = [await controller.enroll() for _ in range(3)]
    r = await controller.client.delete(f"{api.NODES}/{b.node_id}", headers=controller.admin)
    assert r.status_code == 204
    d = await controller.enroll()
    assert d.address != b.address, "A and C may still route B's address to B"
    # A and C fetch and then acknowledge (poll with) the map without B.
    for h in (a, c):
        netmap = await current(controller, h)
        assert await controller.netmap(h, since=netmap.serial, timeout=0) is None
    e = await controller.enroll()
    assert e.address == b.address
    addresses = [ipaddress.ip_address(h.address) for h in (a, c, d, e)]
    assert len(set(addresses)) == 4


async def test_a_removed_nodes_address_holds_survive_a_restart(controller: ControllerHarness):
    _a, b = await controller.enroll(), await controller.enroll()
    await controller.client.delete(f"{api.NODES}/{b.node_id}", headers=controller.admin)
    await controller.restart()
    assert (await controller.enroll()).address != b.address


async def test_many_agents_poll_at_once_and_all_get_the_new_map(controller: ControllerHarness):
    hosts = [await controller.enroll() for _ in range(20)]
    serials = [(await current(controller, h)).serial for h in hosts]
    polls = [
        asyncio.create_task(controller.netmap(h, since=s, timeout=30))
        for h, s in zip(hosts, serials, strict=True)
    ]
    newcomer = await controller.enroll()
    for poll in polls:
        netmap = await poll
        assert netmap is not None and newcomer.node_id in {p.node_id for p in netmap.peers}


async def test_the_topology_shows_nodes_weighted_edges_and_chosen_routes(controller: ControllerHarness):
    a, b, c = [await controller.enroll(controller.new_host(n)) for n in ("alpha", "beta", "gamma")]
    await controller.report(a, {"peer_id": c.node_id, "rtt_ms": 4.0, "loss": 0.0, "handshake_age_s": 2})
    await controller.report(c, {"peer_id": a.node_id, "rtt_ms": 4.0, "loss": 0.0, "handshake_age_s": 2})
    await controller.report(a, {"peer_id": b.node_id, "loss": 1.0})
    r = await controller.client.get(api.TOPOLOGY, headers=controller.admin)
    assert r.status_code == 200
    topology = r.json()
    assert [n["name"] for n in topology["nodes"]] == ["alpha", "beta", "gamma"]
    edges = {(e["a"], e["b"]): e for e in topology["edges"]}
    # the measured link is listed; the failed link has no edge; B-C, never measured, is only counted
    assert set(edges) == {(a.node_id, c.node_id)} and topology["unmeasured_links"] == 1
    assert edges[(a.node_id, c.node_id)]["weight"] == 4.0 and edges[(a.node_id, c.node_id)]["rtt_ms"] == 4.0
    assert topology["routes"] == {}  # routes only for a source asked for
    of_a = await controller.client.get(api.TOPOLOGY, params={"source": a.node_id}, headers=controller.admin)
    routes_a = {r["destination"]: r["via"] for r in of_a.json()["routes"][str(a.node_id)]}
    assert routes_a == {b.node_id: c.node_id, c.node_id: c.node_id}
    unknown = await controller.client.get(api.TOPOLOGY, params={"source": 999}, headers=controller.admin)
    assert unknown.status_code == 404 and unknown.json()["detail"] == "no node 999"

    dot = await controller.client.get(api.TOPOLOGY, params={"format": "dot"}, headers=controller.admin)
    assert dot.status_code == 200 and dot.headers["content-type"].startswith("text/vnd.graphviz")
    text = dot.text
    assert text.startswith("graph wgmesh {") and text.rstrip().endswith("}")
    assert f'n{c.node_id} [label="gamma\\n{c.address}", peripheries=2];' in text  # gamma relays
    assert f"n{a.node_id} -- n{c.node_id}" in text and f"n{a.node_id} -- n{b.node_id}" not in text
    assert f"n{b.node_id} -- n{c.node_id}" not in text  # never measured


async def test_a_node_that_reports_rtt_zero_does_not_draw_traffic_through_itself(
    controller: ControllerHarness,
):
    """The attack of issue 8.5: M says rtt 0 to A and B, whose direct link is down. The honest ends see
    M 40 ms away and C 30 ms away: A-B goes through C, and M's reports are counted as implausible."""
    a, b, c, m = [await controller.enroll(controller.new_host(n)) for n in ("a", "b", "c", "m")]

    async def link(x: Host, y: Host, rtt: float) -> None:
        await controller.report(x, {"peer_id": y.node_id, "rtt_ms": rtt, "loss": 0.0, "handshake_age_s": 2})

    await controller.report(a, {"peer_id": b.node_id, "loss": 1.0})
    for x, y in ((a, c), (c, a), (b, c), (c, b)):
        await link(x, y, 30.0)
    for x in (a, b):
        await link(x, m, 40.0)
    for _round in range(3):
        await controller.report(
            m,
            {"peer_id": a.node_id, "rtt_ms": 0.0, "loss": 0.0, "handshake_age_s": 2},
            {"peer_id": b.node_id, "rtt_ms": 0.0, "loss": 0.0, "handshake_age_s": 2},
        )
    assert via(await current(controller, a))[b.node_id] == c.node_id
    assert via(await current(controller, b))[a.node_id] == c.node_id
    assert not (await current(controller, m)).forward
    shown = (await controller.client.get(f"{api.NODES}/{m.node_id}", headers=controller.admin)).json()
    assert shown["implausible_link_reports"] == 6
    honest = (await controller.client.get(f"{api.NODES}/{a.node_id}", headers=controller.admin)).json()
    assert honest["implausible_link_reports"] == 0
