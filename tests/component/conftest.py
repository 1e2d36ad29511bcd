"""Fixtures for component tests: a real controller (`create_app` on a temporary database) reached over
httpx.ASGITransport, with a hand-driven clock. Every test that takes `controller` runs twice: on
SQLite and on PostgreSQL (`store_url` in tests/conftest.py).

- `controller_clock`: a `ManualClock` (wall time for key expiry and link state; long-poll timeouts
  still run on the event loop's clock).
- `controller`: a `ControllerHarness`: `.client` (httpx.AsyncClient, base URL http://controller),
  `.transport` (for agents' own clients), `.admin` (headers), `.new_key()`, `.enroll()`, `.restart()`.
- `mesh`: an `AgentMesh`, agents around an in-process controller with its managed CA.
- `mesh_factory`: makes `NodeMesh`es of p2p nodes on loopback, closed at the end.

The harnesses themselves are in tests/support.py.
"""

from __future__ import annotations

from collections.abc import AsyncIterator, Callable
from pathlib import Path

import pytest

from tests.support import AgentMesh, ControllerHarness, ManualClock, NodeMesh


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
