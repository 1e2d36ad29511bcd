"""Fixtures for component tests: a real controller (`create_app` on a temporary database) reached over
httpx.ASGITransport, with a hand-driven clock. Every test that takes `controller` runs twice: on
SQLite and on PostgreSQL (`store_url` in tests/conftest.py).

- `controller_clock`: a `ManualClock` (wall time for key expiry and link state; long-poll timeouts
  still run on the event loop's clock).
- `controller`: a `ControllerHarness`: `.client` (httpx.AsyncClient, base URL http://controller),
  `.transport` (for agents' own clients), `.admin` (headers), `.new_key()`, `.enroll()`, `.restart()`.
- `replicas`: (cluster, database URL, [replica a, replica b]): two `Replica`s (harnesses with their
  follower running) on one new PostgreSQL database.
- `store_replicas`: [replica a, replica b] on one database, SQLite (a file both open; no
  notifications, the followers' periodic check) or PostgreSQL: for what must hold on both stores.
- `mesh`: an `AgentMesh`, agents around an in-process controller with its managed CA.
- `mesh_factory`: makes `NodeMesh`es of p2p nodes on loopback, closed at the end.

The harnesses themselves are in tests/support.py.
"""

from __future__ import annotations

from collections.abc import AsyncIterator, Callable
from pathlib import Path

import pytest

from lab.postgres import PostgresCluster
from tests.support import AgentMesh, ControllerHarness, ManualClock, NodeMesh, Replica


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


@pytest.fixture
async def store_replicas(
    tmp_path: Path, store_url: str, controller_clock: ManualClock
) -> AsyncIterator[list[Replica]]:
    made = [Replica(name, tmp_path / "controller", controller_clock, store_url) for name in ("a", "b")]
    try:
        yield made
    finally:
        for r in made:
            await r.close()


@pytest.fixture
async def mesh(tmp_path: Path) -> AsyncIterator[AgentMesh]:
    m = AgentMesh(tmp_path)
    await m.create_preauth_key()
    try:
        yield m
    finally:
        await m.aclose()


@pytest.fixture
async def mesh_factory() -> AsyncIterator[Callable[..., NodeMesh]]:
    meshes: list[NodeMesh] = []

    def make(n: int, roles: dict[int, str] | None = None) -> NodeMesh:
        meshes.append(NodeMesh(n, roles))
        return meshes[-1]

    yield make
    for m in meshes:
        await m.close()


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
