"""Who this host is in the mesh: node.json when it has enrolled before (updated with what the operator
changed), else a signed enrollment with the controller's pre-auth key.

Rules:
- node.json is written last: its presence means "enrolled"; the credential is saved before it.
- A host that enrolled once ignores --token (and says so); --controller and --interface update it.
- Every failure is an AgentError with one line saying what to do.
"""

from __future__ import annotations

import base64
from datetime import UTC, datetime

import httpx

from agent.client import ControllerClient, ControllerError
from agent.eventlog import EventLog
from agent.settings import DEFAULT_INTERFACE, AgentError, AgentSettings, short_error
from agent.state import AgentState, BackendName, HostKeys, StateError, StatePaths, save_credential
from wire.models import EnrollRequest, enroll_signing_bytes


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
        log.info("already_enrolled", name=state.name, node_id=state.node_id, note="--token ignored")
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
            "give --controller URL and --token PRE-AUTH-KEY"
        )
    unsigned = EnrollRequest(
        preauth_key=token,
        hostname=settings.hostname or "localhost",
        wg_public_key=keys.wireguard.public_key(),
        identity_public_key=keys.identity.public_key(),
        endpoints=list(settings.endpoints),
        listen_port=settings.listen_port,
        signature="",
    )
    signature = base64.b64encode(keys.identity.sign(enroll_signing_bytes(unsigned))).decode()
    request = unsigned.model_copy(update={"signature": signature})
    async with ControllerClient(url, transport=transport) as client:
        try:
            response = await client.enroll(request)
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
