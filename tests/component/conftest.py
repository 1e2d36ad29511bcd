"""Fixtures for component tests: a real controller (`create_app` on a temporary database) reached over
httpx.ASGITransport, with a hand-driven clock. Every test that takes `controller` runs twice: on
SQLite and on PostgreSQL (`store_url` in tests/conftest.py).

- `controller_clock`: a `ManualClock` (wall time for key expiry and link state; long-poll timeouts
  still run on the event loop's clock).
- `controller`: a `ControllerHarness`: `.client` (httpx.AsyncClient, base URL http://controller),
  `.transport` (for agents' own clients), `.admin` (headers), `.new_key()`, `.enroll()`, `.restart()`.
- `replicas`: (cluster, database URL, [replica a, replica b]): two `Replica`s (harnesses with their
  follower running) on one new PostgreSQL database.
"""

from __future__ import annotations

import asyncio
import base64
import ipaddress
from collections.abc import AsyncIterator, Callable
from dataclasses import dataclass, field
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import httpx
import pytest
from fastapi import FastAPI

from controller.app import create_app
from controller.credentials import admin_credential_path
from controller.settings import Settings
from controller.sqlstore import SqlStore
from keys import IdentityPrivateKey, WireGuardPrivateKey
from lab.postgres import PostgresCluster
from wire import api
from wire.models import EnrollRequest, NetMap, enroll_signing_bytes

CONTROLLER_URL = "http://controller"
DEADLINE_S = 20.0
MESH_CIDR = ipaddress.ip_network("198.19.0.0/16")


class ManualClock:
    """A clock that moves only when told to."""

    def __init__(self, start: datetime | None = None) -> None:
        self.t = start or datetime(2026, 1, 1, 12, 0, tzinfo=UTC)

    def now(self) -> datetime:
        return self.t

    def advance(self, seconds: float) -> None:
        self.t += timedelta(seconds=seconds)


@dataclass
class Host:
    """An enrolled host as a test sees it: its keys, node id, address and credential."""

    hostname: str
    identity: IdentityPrivateKey
    wg: WireGuardPrivateKey
    node_id: int = 0
    name: str = ""
    address: str = ""
    credential: str = ""
    endpoints: list[str] = field(default_factory=list)

    @property
    def auth(self) -> dict[str, str]:
        return {"Authorization": f"Bearer {self.credential}"}


def make_host(hostname: str, number: int = 1, endpoints: list[str] | None = None) -> Host:
    """A host with fresh keys that has not enrolled yet; `number` picks its underlay endpoint."""
    return Host(
        hostname=hostname,
        identity=IdentityPrivateKey.generate(),
        wg=WireGuardPrivateKey.generate(),
        endpoints=endpoints if endpoints is not None else [f"198.18.0.{number}:51820"],
    )


UNISSUED_NONCE = "n0t-a-nonce-the-controller-issued"


def enroll_request(
    host: Host, key: str, nonce: str = UNISSUED_NONCE, listen_port: int = 51820
) -> EnrollRequest:
    """`host`'s signed request; `nonce` from POST /v1/enroll/nonce (the default is refused)."""
    unsigned = EnrollRequest(
        preauth_key=key,
        nonce=nonce,
        hostname=host.hostname,
        wg_public_key=host.wg.public_key(),
        identity_public_key=host.identity.public_key(),
        endpoints=host.endpoints,
        listen_port=listen_port,
        signature="-",
    )
    signature = base64.b64encode(host.identity.sign(enroll_signing_bytes(unsigned))).decode()
    return unsigned.model_copy(update={"signature": signature})


class ControllerHarness:
    def __init__(self, state_dir: Path, clock: ManualClock, **settings: Any) -> None:
        self.settings = Settings(**{"state_dir": state_dir, "mesh_cidr": MESH_CIDR, **settings})
        self.clock = clock
        self._hosts = 0
        self._start()

    def _start(self) -> None:
        self.store = SqlStore(self.settings.database_url)
        self.app: FastAPI = create_app(self.settings, self.store, self.clock)
        self.transport = httpx.ASGITransport(app=self.app)
        self.client = httpx.AsyncClient(transport=self.transport, base_url=CONTROLLER_URL)
        credential = admin_credential_path(self.settings.state_dir).read_text().strip()
        self.admin = {"Authorization": f"Bearer {credential}"}

    async def close(self) -> None:
        await self.client.aclose()
        self.app.state.plane.close()

    async def restart(self) -> None:
        """Stop this controller and start a new one on the same state directory and database."""
        await self.close()
        self._start()

    async def new_key(self, **request: Any) -> str:
        r = await self.client.post(api.PREAUTH_KEYS, json=request, headers=self.admin)
        assert r.status_code == 201, r.text
        return str(r.json()["key"])

    def new_host(self, hostname: str | None = None, endpoints: list[str] | None = None) -> Host:
        self._hosts += 1
        return make_host(hostname or f"host-{self._hosts}", self._hosts, endpoints)

    async def nonce(self) -> str:
        r = await self.client.post(api.ENROLL_NONCE)
        assert r.status_code == 200, r.text
        return str(r.json()["nonce"])

    async def enroll_raw(self, host: Host, key: str) -> httpx.Response:
        body = enroll_request(host, key, await self.nonce()).model_dump_json()
        return await self.client.post(api.ENROLL, content=body, headers={"Content-Type": "application/json"})

    async def enroll(self, host: Host | None = None, key: str | None = None) -> Host:
        """Enroll `host` (a new one by default) with `key` (a new single-use key by default)."""
        host = host or self.new_host()
        r = await self.enroll_raw(host, key or await self.new_key())
        assert r.status_code == 200, r.text
        body = r.json()
        host.node_id, host.name = body["node_id"], body["name"]
        host.address, host.credential = body["tunnel_address"], body["node_credential"]
        return host

    async def netmap(self, host: Host, since: int = 0, timeout: float = 0) -> NetMap | None:
        """The host's map, or None on 204."""
        r = await self.client.get(api.NETMAP, params={"since": since, "timeout": timeout}, headers=host.auth)
        if r.status_code == 204:
            return None
        assert r.status_code == 200, r.text
        return NetMap.model_validate_json(r.content)

    async def report(self, host: Host, *measurements: dict[str, Any]) -> None:
        r = await self.client.post(api.LINKS, json={"measurements": list(measurements)}, headers=host.auth)
        assert r.status_code == 204, r.text


@pytest.fixture
def controller_clock() -> ManualClock:
    return ManualClock()


@pytest.fixture
async def controller(
    tmp_path: Path, controller_clock: ManualClock, store_url: str
) -> AsyncIterator[ControllerHarness]:
    harness = ControllerHarness(tmp_path / "controller", controller_clock, db_url=store_url)
    try:
        yield harness
    finally:
        await harness.close()


# --- replicas: several controllers on one PostgreSQL, in this process ----------------------------


class Replica(ControllerHarness):
    """A controller replica with its follower running, as `controller serve` runs it."""

    def __init__(self, name: str, state_dir: Path, clock: ManualClock, db_url: str) -> None:
        super().__init__(state_dir, clock, db_url=db_url)
        self.name = name
        self.task = asyncio.create_task(self.app.state.follower.run())

    async def close(self) -> None:
        self.app.state.follower.stop()
        await asyncio.wait_for(self.task, DEADLINE_S)
        await super().close()


async def until(condition: Callable[[], object], what: str) -> None:
    loop = asyncio.get_running_loop()
    deadline = loop.time() + DEADLINE_S
    while not condition():
        assert loop.time() < deadline, f"timed out waiting for {what}"
        await asyncio.sleep(0.02)


@pytest.fixture
async def replicas(
    tmp_path: Path, postgres: PostgresCluster, controller_clock: ManualClock
) -> AsyncIterator[tuple[PostgresCluster, str, list[Replica]]]:
    url = postgres.create_database()
    # Replicas share the admin credential: here one state directory; in production the same file.
    made = [Replica(name, tmp_path / "controller", controller_clock, url) for name in ("a", "b")]
    try:
        yield postgres, url, made
    finally:
        for r in made:
            await r.close()


async def netmap(replica: Replica, host: Host, since: int, timeout: float = 0) -> httpx.Response:
    return await replica.client.get(
        api.NETMAP, params={"since": since, "timeout": timeout}, headers=host.auth
    )
