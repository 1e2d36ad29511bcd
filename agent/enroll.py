"""Enrollment as the agent performs it: trust the controller, take its nonce, sign, enroll.

The exchange (protocol version 2):
1. trust: the stored CA, else the pre-auth key's pin checked against GET /v1/tls/ca, else --ca-file,
   else the system CAs (agent/trust.py);
2. POST /v1/enroll/nonce on the verified connection: a single-use challenge;
3. POST /v1/enroll with the request signed by the identity key over enroll_signing_bytes, which covers
   the nonce, so a recorded request cannot enroll again. A nonce the controller no longer holds
   (expired, or dropped under load) is fetched again once.
"""

from __future__ import annotations

import base64
import ssl
from collections.abc import Sequence
from pathlib import Path

import httpx

from agent.client import ControllerClient, ControllerRejected
from agent.state import HostKeys
from agent.trust import adopt_ca_file, ca_path, pin_controller_ca, verify_for
from wire.models import EnrollRequest, EnrollResponse, enroll_signing_bytes

NONCE_REFUSED = "enrollment nonce"  # the start of the controller's 403 detail for a stale nonce


async def establish_trust(
    url: str,
    ca_pin: str | None,
    ca_file: Path | None,
    state_dir: Path,
    transport: httpx.AsyncBaseTransport | None = None,
) -> ssl.SSLContext | bool:
    """How to verify the controller from now on; pins or adopts its CA on first contact."""
    if ca_path(state_dir).exists():
        return verify_for(state_dir)
    if ca_pin is not None:
        return await pin_controller_ca(url, ca_pin, state_dir, transport)
    if ca_file is not None:
        return adopt_ca_file(ca_file, state_dir)
    return True


def signed_request(
    keys: HostKeys,
    preauth_secret: str,
    nonce: str,
    hostname: str,
    endpoints: Sequence[str],
    listen_port: int,
) -> EnrollRequest:
    unsigned = EnrollRequest(
        preauth_key=preauth_secret,
        nonce=nonce,
        hostname=hostname,
        wg_public_key=keys.wireguard.public_key(),
        identity_public_key=keys.identity.public_key(),
        endpoints=list(endpoints),
        listen_port=listen_port,
        signature="",
    )
    signature = base64.b64encode(keys.identity.sign(enroll_signing_bytes(unsigned))).decode()
    return unsigned.model_copy(update={"signature": signature})


async def enroll_host(
    client: ControllerClient,
    keys: HostKeys,
    preauth_secret: str,
    hostname: str,
    endpoints: Sequence[str],
    listen_port: int,
) -> EnrollResponse:
    """Nonce, signed request, enrollment; ControllerError when the controller refuses or is away."""
    for attempt in range(2):
        nonce = await client.enroll_nonce()
        request = signed_request(keys, preauth_secret, nonce.nonce, hostname, endpoints, listen_port)
        try:
            return await client.enroll(request)
        except ControllerRejected as e:
            if attempt or e.status != 403 or not e.detail.startswith(NONCE_REFUSED):
                raise
    raise AssertionError("unreachable")
