"""Fixtures of the namespace tier (`namespaces`, `two_hosts`; the harness is tests/netns/harness.py).
Every test here is in the root tier: without root or its tools, tests/conftest.py skips it with the
reason.
"""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

import pytest

from tests.netns.harness import Host, Namespaces


def pytest_collection_modifyitems(items: list[pytest.Item]) -> None:
    """Every test here is in the root tier; tests/conftest.py skips that tier with its reason."""
    here = Path(__file__).parent
    for item in items:
        if Path(str(item.fspath)).parent == here:
            item.add_marker(pytest.mark.root)


@pytest.fixture
def namespaces(tmp_path: Path, request: pytest.FixtureRequest) -> Iterator[Namespaces]:
    backend_name = (
        request.getfixturevalue("wg_backend") if "wg_backend" in request.fixturenames else "userspace"
    )
    made = Namespaces(tmp_path, backend_name)
    try:
        yield made
    finally:
        made.close()


@pytest.fixture
def two_hosts(namespaces: Namespaces, wg_backend: str) -> tuple[Host, Host]:
    """Namespaces wgt2a and wgt2b joined by a veth underlay 198.18.250.1/24 <-> .2, each with a
    backend of the `wg_backend` kind (nothing created on the WireGuard side yet)."""
    a, b = namespaces.add("wgt2a"), namespaces.add("wgt2b")
    namespaces.veth(a, "wgt2va", "198.18.250.1/24", b, "wgt2vb", "198.18.250.2/24")
    return (
        Host(a, namespaces.wg_backend(a), "198.18.250.1"),
        Host(b, namespaces.wg_backend(b), "198.18.250.2"),
    )
