"""Who this host is in the mesh: node.json when it has enrolled before (updated with what the operator
changed), else a signed enrollment with the controller's pre-auth key.

The enrollment exchange (protocol version 2):
1. trust: the stored CA, else the pre-auth key's pin checked against GET /v1/tls/ca, else --ca-file,
   else the system CAs (agent/trust.py);
2. POST /v1/enroll/nonce on the verified connection: a single-use challenge;
3. POST /v1/enroll with the request signed by the identity key over enroll_signing_bytes, which covers
   the nonce, so a recorded request cannot enroll again. A nonce the controller no longer holds
   (expired, or dropped under load) is fetched again once.

Rules:
- node.json is written last: its presence means "enrolled"; the credential is saved before it.
- A host that enrolled once ignores --token-file (and says so); --controller and --interface update it.
- Every failure is an AgentError with one line saying what to do.
"""

from __future__ import annotations

import base64
import ssl
from collections.abc import Sequence
from datetime import UTC, datetime
from pathlib import Path

import httpx

from agent.client import ControllerClient, ControllerError, ControllerRejected
from agent.eventlog import EventLog
from agent.settings import DEFAULT_INTERFACE, AgentError, AgentSettings, short_error
from agent.state import AgentState, BackendName, HostKeys, StateError, StatePaths, save_credential
from agent.trust import TrustError, adopt_ca_file, ca_path, pin_controller_ca, verify_for
from wire.models import EnrollRequest, EnrollResponse, enroll_signing_bytes


def backend_name(name: str) -> BackendName:
    if name not in ("kernel", "userspace", "fake"):
        raise AgentError(f"backend {name!r} is not one the state dir can record")
    return name  # type: ignore[return-value]  # checked just above


async def load_or_enroll(
    settings: AgentSettings,
    keys: HostKeys,
    backend: str,
    log: EventLog,
    transport: httpx.AsyncBaseTransport | None,
    now: float,
) -> AgentState:
    try:
        state = AgentState.load(settings.state_dir)
    except StateError as e:
        if StatePaths(settings.state_dir).node.exists():
            raise AgentError(short_error(e)) from None
        return await enroll(settings, keys, backend, log, transport, now)
    if settings.token:
        log.info("already_enrolled", name=state.name, node_id=state.node_id, note="--token-file ignored")
    update: dict[str, object] = {"backend": backend_name(backend)}
    if settings.controller_url and settings.controller_url != state.controller_url:
        update["controller_url"] = settings.controller_url
    if settings.interface and settings.interface != state.interface:
        update["interface"] = settings.interface
    new_state = state.model_copy(update=update)
    if new_state != state:
        new_state.save(settings.state_dir)
    return new_state


async def enroll(
    settings: AgentSettings,
    keys: HostKeys,
    backend: str,
    log: EventLog,
    transport: httpx.AsyncBaseTransport | None,
    now: float,
) -> AgentState:
    url, token = settings.controller_url, settings.token
    if not url or not token:
        raise AgentError(
            f"this host has not enrolled yet ({StatePaths(settings.state_dir).node} is missing): "
            "give --controller URL and --token-file FILE"
        )
    try:
        verify = await establish_trust(url, settings.ca_pin, settings.ca_file, settings.state_dir, transport)
    except TrustError as e:
        raise AgentError(f"enrollment with {url} failed: {short_error(e)}") from None
    async with ControllerClient(url, transport=transport, verify=verify) as client:
        try:
            response = await enroll_host(
                client,
                keys,
                token,
                settings.hostname or "localhost",
                settings.endpoints,
                settings.listen_port,
            )
        except ControllerError as e:
            raise AgentError(f"enrollment with {url} failed: {short_error(e)}") from None
    log.add_secret(response.node_credential)
    save_credential(settings.state_dir, response.node_credential)
    state = AgentState(
        node_id=response.node_id,
        name=response.name,
        tunnel_address=response.tunnel_address,
        mesh_cidr=response.mesh_cidr,
        controller_url=url,
        interface=settings.interface or DEFAULT_INTERFACE,
        backend=backend_name(backend),
        listen_port=settings.listen_port,
        enrolled_at=datetime.fromtimestamp(now, UTC),
    )
    state.save(settings.state_dir)  # written last: its presence means "enrolled"
    log.node = state.name
    log.info(
        "enrolled",
        node_id=state.node_id,
        tunnel_address=state.tunnel_address,
        mesh_cidr=state.mesh_cidr,
        controller=url,
    )
    return state


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


def trusted_verify(settings: AgentSettings) -> ssl.SSLContext | bool:
    """How an enrolled agent verifies its controller: the CA stored at enrollment; else --ca-file, kept
    from now on (a host enrolled before the controller served HTTPS); else the system CAs."""
    try:
        if settings.ca_file is not None and not ca_path(settings.state_dir).exists():
            return adopt_ca_file(settings.ca_file, settings.state_dir)
        return verify_for(settings.state_dir)
    except TrustError as e:
        raise AgentError(short_error(e)) from None


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
    signature = base64.b64encode(keys.identity.sign_with_libcrypto(enroll_signing_bytes(unsigned))).decode()
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
