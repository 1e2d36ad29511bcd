"""Agents following the controller by deltas: after their first full map they ask with delta=1, get
deltas, and hold (and cache in netmap.json) exactly the controller's full map; a delta that does not
apply to the map an agent holds is dropped and the full map fetched instead."""

from __future__ import annotations

import json
from collections.abc import AsyncIterator
from pathlib import Path

import httpx
import pytest

from agent.state import load_credential, load_netmap
from tests.support import AgentHost, AgentMesh, eventually
from wire import api
from wire.models import NetMap


class PollRecorder(httpx.AsyncBaseTransport):
    """Between agents and controller: records every netmap poll (its query and the answer's kind) and,
    while `corrupt_next_delta` is set, moves the base_serial of one delta answer out of reach."""

    def __init__(self, inner: httpx.AsyncBaseTransport) -> None:
        self.inner = inner
        self.polls: list[tuple[dict[str, str], str | None]] = []
        self.kinds_by_credential: dict[str, list[str | None]] = {}
        self.corrupt_next_delta = False

    async def handle_async_request(self, request: httpx.Request) -> httpx.Response:
        response = await self.inner.handle_async_request(request)
        if request.url.path != api.NETMAP:
            return response
        body = await response.aread()
        kind = None
        if response.status_code == 200:
            answer = json.loads(body)
            kind = answer.get("kind")
            if kind == "delta" and self.corrupt_next_delta:
                self.corrupt_next_delta = False
                answer["base_serial"] += 1000
                body = json.dumps(answer).encode()
        self.polls.append((dict(request.url.params), kind))
        credential = request.headers.get("authorization", "").removeprefix("Bearer ")
        self.kinds_by_credential.setdefault(credential, []).append(kind)
        headers = [(k, v) for k, v in response.headers.items() if k.lower() != "content-length"]
        return httpx.Response(response.status_code, headers=headers, content=body, request=request)


@pytest.fixture
async def mesh(tmp_path: Path) -> AsyncIterator[tuple[AgentMesh, PollRecorder]]:
    m = AgentMesh(tmp_path)
    recorder = PollRecorder(m.transport.inner)
    m.transport.inner = recorder
    await m.create_preauth_key()
    try:
        yield m, recorder
    finally:
        await m.aclose()


async def controller_map(recorder: PollRecorder, h: AgentHost) -> NetMap:
    """The host's full map, fetched past the recorder."""
    credential = load_credential(h.state_dir)
    async with httpx.AsyncClient(transport=recorder.inner, base_url="http://controller") as c:
        r = await c.get(api.NETMAP, headers={"Authorization": f"Bearer {credential}"})
        assert r.status_code == 200, r.text
        return NetMap.model_validate_json(r.content)


async def wait_for_peers(m: AgentMesh, hosts: list[AgentHost], count: int) -> None:
    await eventually(
        f"every agent holding {count} peers",
        lambda: all(h.agent and h.agent.netmap and len(h.agent.netmap.peers) == count for h in hosts),
        show=m.all_logs,
    )


# No link rounds in these tests: measured links move route costs, every move is a new map, and an agent
# more than MAP_HISTORY maps behind is rightly sent a full map, which is not what these tests look at.
NO_PROBES = 3600.0


async def test_agents_follow_by_deltas_and_hold_the_full_map(mesh):
    m, recorder = mesh
    hosts = [await m.start(name, probe_interval_s=NO_PROBES) for name in ("a", "b", "c")]
    await wait_for_peers(m, hosts, 2)
    recorder.polls.clear()
    recorder.kinds_by_credential.clear()
    hosts.append(await m.start("d", probe_interval_s=NO_PROBES))
    await wait_for_peers(m, hosts, 3)
    old_hosts = hosts[:3]
    for h in hosts:
        assert h.agent is not None
        expected = await controller_map(recorder, h)
        await eventually(
            f"{h.name} at serial {expected.serial}",
            lambda h=h, e=expected: h.agent.netmap == e,
            show=m.all_logs,
        )
        assert load_netmap(h.state_dir) == expected, "netmap.json holds the full map"
    # the three agents already in the mesh got the new peer as a delta, never a full map
    for h in old_hosts:
        kinds = [k for k in recorder.kinds_by_credential[load_credential(h.state_dir)] if k is not None]
        assert kinds and set(kinds) == {"delta"}, (h.name, kinds)
    assert all(q.get("delta") == "1" for q, _kind in recorder.polls)
    assert "netmap_delta_dropped" not in m.all_logs()


async def test_a_delta_for_another_map_is_dropped_and_the_full_map_fetched(mesh):
    m, recorder = mesh
    hosts = [await m.start(name, probe_interval_s=NO_PROBES) for name in ("a", "b")]
    await wait_for_peers(m, hosts, 1)
    recorder.corrupt_next_delta = True
    recorder.polls.clear()
    hosts.append(await m.start("c", probe_interval_s=NO_PROBES))
    await wait_for_peers(m, hosts, 2)
    assert "netmap_delta_dropped" in m.all_logs()
    dropped_at = next(i for i, (_q, kind) in enumerate(recorder.polls) if kind == "delta")
    assert any(q["since"] == "0" for q, _kind in recorder.polls[dropped_at + 1 :]), "asks for the full map"
    for h in hosts:
        expected = await controller_map(recorder, h)
        await eventually(
            f"{h.name} at serial {expected.serial}",
            lambda h=h, e=expected: h.agent.netmap == e,
            show=m.all_logs,
        )
