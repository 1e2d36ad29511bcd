"""The agent client's delta poll: it asks with delta=1 and reads a delta, a full map with its kind, and
the full map of a controller that predates deltas (no kind); anything else is a clear error."""

from __future__ import annotations

import httpx
import pytest

from agent.client import ControllerClient, ControllerUnreachable
from tests.support import SAMPLE_NETMAP
from wire.delta import netmap_delta
from wire.models import NetMap


def client_answering(response: httpx.Response) -> tuple[ControllerClient, list[httpx.Request]]:
    seen: list[httpx.Request] = []

    def handler(request: httpx.Request) -> httpx.Response:
        seen.append(request)
        return response

    return ControllerClient("http://ctl", credential="cred", transport=httpx.MockTransport(handler)), seen


NEWER = SAMPLE_NETMAP.model_copy(update={"serial": SAMPLE_NETMAP.serial + 1, "forward": True})


async def test_a_delta_poll_asks_with_delta_1_and_reads_the_delta():
    delta = netmap_delta(SAMPLE_NETMAP, NEWER)
    client, seen = client_answering(httpx.Response(200, content=delta.model_dump_json()))
    assert await client.netmap_update(since=SAMPLE_NETMAP.serial, timeout_s=25) == delta
    assert dict(seen[0].url.params) == {"since": str(SAMPLE_NETMAP.serial), "timeout": "25", "delta": "1"}


@pytest.mark.parametrize("with_kind", [True, False], ids=["kind full", "controller before deltas"])
async def test_a_delta_poll_reads_a_full_map(with_kind: bool):
    body = NEWER.model_dump_json() if with_kind else NEWER.model_dump_json(exclude={"kind"})
    client, _ = client_answering(httpx.Response(200, content=body))
    answer = await client.netmap_update(since=SAMPLE_NETMAP.serial, timeout_s=25)
    assert isinstance(answer, NetMap) and answer == NEWER


async def test_a_delta_poll_204_means_nothing_newer():
    client, _ = client_answering(httpx.Response(204))
    assert await client.netmap_update(since=5, timeout_s=1) is None


async def test_an_unknown_kind_is_a_clear_error():
    body = NEWER.model_dump_json().replace('"kind":"full"', '"kind":"patch"')
    client, _ = client_answering(httpx.Response(200, content=body))
    with pytest.raises(ControllerUnreachable, match="sent a network map this agent cannot read"):
        await client.netmap_update(since=5, timeout_s=1)


async def test_the_plain_poll_does_not_ask_for_deltas():
    client, seen = client_answering(httpx.Response(200, content=NEWER.model_dump_json()))
    assert await client.netmap(since=5, timeout_s=1) == NEWER
    assert "delta" not in seen[0].url.params
