"""The controller client: requests on the wire, answers parsed, failures sorted into retry / give up."""

from __future__ import annotations

import json

import httpx
import pytest

from agent.client import ControllerClient, ControllerError, ControllerRejected, ControllerUnreachable
from keys.types import IdentityPrivateKey, WireGuardPrivateKey
from tests.support import SAMPLE_NETMAP
from wire import api
from wire.models import EnrollRequest, LinkMeasurement, LinkReport


def client_with(handler, credential="cred-123"):
    seen = []

    def record(request):
        seen.append(request)
        return handler(request)

    return ControllerClient(
        "http://ctl:8080/", credential=credential, transport=httpx.MockTransport(record)
    ), seen


async def test_netmap_long_poll_sends_serial_timeout_and_bearer():
    client, seen = client_with(lambda r: httpx.Response(200, content=SAMPLE_NETMAP.model_dump_json()))
    assert await client.netmap(since=4, timeout_s=25) == SAMPLE_NETMAP
    req = seen[0]
    assert req.url.path == api.NETMAP
    assert dict(req.url.params) == {"since": "4", "timeout": "25"}
    assert req.headers["authorization"] == "Bearer cred-123"
    assert "cred-123" not in str(req.url)


async def test_netmap_204_means_nothing_newer():
    client, _ = client_with(lambda r: httpx.Response(204))
    assert await client.netmap(since=5, timeout_s=1) is None


async def test_long_poll_timeout_is_capped_to_the_protocol_maximum():
    client, seen = client_with(lambda r: httpx.Response(204))
    await client.netmap(since=1, timeout_s=10_000)
    assert seen[0].url.params["timeout"] == str(api.NETMAP_MAX_TIMEOUT_S)


async def test_enroll_posts_the_signed_request_without_auth():
    wg, ident = WireGuardPrivateKey.generate(), IdentityPrivateKey.generate()
    req = EnrollRequest(
        preauth_key="wgm_pak_0123456789",
        nonce="q8V4m2Lr0cTz6YxN1bWs3A",
        hostname="h1",
        wg_public_key=wg.public_key(),
        identity_public_key=ident.public_key(),
        signature="c2ln",
    )
    answer = {
        "node_id": 1,
        "name": "h1",
        "tunnel_address": "10.99.0.1",
        "mesh_cidr": "10.99.0.0/16",
        "node_credential": "cred-xyz",
    }
    client, seen = client_with(lambda r: httpx.Response(200, json=answer), credential=None)
    resp = await client.enroll(req)
    assert resp.node_credential == "cred-xyz"
    assert "authorization" not in seen[0].headers
    assert EnrollRequest.model_validate(json.loads(seen[0].content)) == req


async def test_link_report_is_posted():
    client, seen = client_with(lambda r: httpx.Response(204))
    report = LinkReport(measurements=[LinkMeasurement(peer_id=2, rtt_ms=1.5, loss=0.0, handshake_age_s=3)])
    await client.report_links(report)
    assert seen[0].method == "POST" and seen[0].url.path == api.LINKS
    assert LinkReport.model_validate_json(seen[0].content) == report


@pytest.mark.parametrize(
    ("response", "kind", "message"),
    [
        (
            httpx.Response(401, json={"detail": "unknown node credential"}),
            ControllerRejected,
            "(401): unknown node credential",
        ),
        (
            httpx.Response(422, json={"detail": [{"loc": ["body", "hostname"], "msg": "bad"}]}),
            ControllerRejected,
            "hostname: bad",
        ),
        (httpx.Response(503, text="down"), ControllerUnreachable, "failed (503)"),
        (httpx.Response(200, json={"serial": "x"}), ControllerUnreachable, "cannot read"),
    ],
)
async def test_failures_are_sorted_into_retry_or_give_up(response, kind, message):
    client, _ = client_with(lambda r: response)
    with pytest.raises(kind, match=message.replace("(", r"\(").replace(")", r"\)")):
        await client.netmap(since=0, timeout_s=0)


async def test_connection_refused_is_unreachable_with_the_reason():
    def refuse(request):
        raise httpx.ConnectError("boom", request=request) from ConnectionRefusedError(
            111, "Connection refused"
        )

    client, _ = client_with(refuse)
    with pytest.raises(
        ControllerUnreachable, match="cannot reach controller http://ctl:8080: Connection refused"
    ):
        await client.netmap(since=0, timeout_s=0)


async def test_no_credential_no_call():
    client, seen = client_with(lambda r: httpx.Response(204), credential=None)
    with pytest.raises(ControllerError, match="enroll first"):
        await client.netmap(since=0, timeout_s=0)
    assert seen == []
