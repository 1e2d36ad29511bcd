"""GET /metrics: the admin's Prometheus view of a controller (enrollments, refusals by reason, nodes,
map version, relayed routes, agents holding a map request, push durations), in a registry per app."""

from __future__ import annotations

import asyncio

from prometheus_client.parser import text_string_to_metric_families

from tests.support import ControllerHarness
from wire import api


async def scrape(controller: ControllerHarness) -> dict[tuple[str, tuple[tuple[str, str], ...]], float]:
    r = await controller.client.get("/metrics", headers=controller.admin)
    assert r.status_code == 200, r.text
    assert r.headers["content-type"].startswith("text/plain")
    samples = {}
    for family in text_string_to_metric_families(r.text):
        for s in family.samples:
            samples[s.name, tuple(sorted(s.labels.items()))] = s.value
    return samples


def value(samples: dict, name: str, **labels: str) -> float:
    return samples.get((name, tuple(sorted(labels.items()))), 0.0)


async def test_metrics_need_the_admin_credential(controller: ControllerHarness):
    host = await controller.enroll()
    r = await controller.client.get("/metrics")
    assert r.status_code == 401 and "admin credential" in r.json()["detail"]
    r = await controller.client.get("/metrics", headers=host.auth)
    assert r.status_code == 403 and "not a node credential" in r.json()["detail"]
    r = await controller.client.get("/metrics", headers={"Authorization": "Bearer wrong"})
    assert r.status_code == 401


async def test_enrollments_nodes_version_and_refusals_are_counted(controller: ControllerHarness):
    before = await scrape(controller)
    assert value(before, "wgmesh_enrollments_total") == 0 and value(before, "wgmesh_nodes") == 0
    hosts = [await controller.enroll() for _ in range(3)]
    # refused: a wrong pre-auth key and no credential (401), a node on an admin route (403), a body
    # that is no JSON (400)
    r = await controller.enroll_raw(controller.new_host(), "wgpk_not-a-key")
    assert r.status_code == 401
    assert (await controller.client.get(api.NETMAP)).status_code == 401
    assert (await controller.client.get(api.NODES, headers=hosts[0].auth)).status_code == 403
    r = await controller.client.post(
        api.LINKS, content=b"{", headers={**hosts[0].auth, "Content-Type": "application/json"}
    )
    assert r.status_code == 400
    after = await scrape(controller)
    assert value(after, "wgmesh_enrollments_total") == 3
    assert value(after, "wgmesh_nodes") == 3
    assert value(after, "wgmesh_map_version") == controller.app.state.plane.version >= 3
    assert value(after, "wgmesh_refused_requests_total", reason="forbidden") == 1
    assert value(after, "wgmesh_refused_requests_total", reason="malformed") == 1
    # the scrape before enrolling had no credential problem: the wrong key and the bare GET are the 401s
    assert value(after, "wgmesh_refused_requests_total", reason="unauthenticated") == 2


async def test_relayed_routes_follow_a_failed_link(controller: ControllerHarness):
    a, b, _c = [await controller.enroll() for _ in range(3)]
    assert value(await scrape(controller), "wgmesh_relayed_routes") == 0
    await controller.report(a, {"peer_id": b.node_id, "loss": 1.0, "handshake_age_s": 200})
    # a -> b and b -> a now go through c
    assert value(await scrape(controller), "wgmesh_relayed_routes") == 2


async def test_a_held_map_request_is_a_connected_agent_and_its_push_is_timed(controller: ControllerHarness):
    a = await controller.enroll()
    serial = (await controller.netmap(a)).serial
    # its first map was timed too: from its enrollment to that fetch
    timed = value(await scrape(controller), "wgmesh_map_push_duration_seconds_count")
    assert timed == 1
    poll = asyncio.create_task(controller.netmap(a, since=serial, timeout=30))
    async with asyncio.timeout(10):
        while value(await scrape(controller), "wgmesh_connected_agents") != 1:
            await asyncio.sleep(0.01)
    await controller.enroll()  # a's map gains a peer: its held request answers
    async with asyncio.timeout(10):
        pushed = await poll
    assert pushed is not None and len(pushed.peers) == 1
    samples = await scrape(controller)
    assert value(samples, "wgmesh_connected_agents") == 0
    assert value(samples, "wgmesh_map_push_duration_seconds_count") == timed + 1
    assert 0 <= value(samples, "wgmesh_map_push_duration_seconds_sum") < 5


async def test_every_app_counts_for_itself(controller: ControllerHarness, tmp_path, controller_clock):
    await controller.enroll()
    other = ControllerHarness(tmp_path / "other", controller_clock)
    try:
        assert value(await scrape(other), "wgmesh_enrollments_total") == 0
        assert value(await scrape(controller), "wgmesh_enrollments_total") == 1
    finally:
        await other.close()
