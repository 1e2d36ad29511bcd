"""Test tiers: tests marked `root` need root, network namespaces and wireguard-go; where those are
missing they are skipped with the reason, never silently passed.

Stores: `store_url` runs a test once on SQLite and once on PostgreSQL (a private cluster, `postgres`,
started once per run in a temporary directory and stopped at the end).

Data-plane tests that take the `wg_backend` fixture are parametrized by WireGuard backend: `userspace`
(wireguard-go) on this machine, `kernel` inside the VM of tests/kernel, which runs every test marked
`kernel_tier` with `--wg-backend kernel` (see tests/kernel/README.md).

Order: pytest-randomly runs the modules, and the tests in each, in a random order; the run's first line
names the seed (`-p randomly --randomly-seed=N` replays it, `-p no:randomly` keeps file order). A module
marked `scenario` is a sequence of steps on one shared lab or set of machines: it moves as a whole, its
steps keep their file order. What tests share is in tests/support.py.
"""

from __future__ import annotations

import os
import shutil
from collections.abc import Iterator
from pathlib import Path

import pytest
from hypothesis import settings

from lab.postgres import PostgresCluster, PostgresMissing

# Property tests judge correctness, not speed: a slow example on a loaded 2-core machine is not a bug.
settings.register_profile("wgmesh", deadline=None)
settings.load_profile("wgmesh")

WG_BACKENDS = ("userspace", "kernel")
ROOT_TOOLS = ("ip", "wireguard-go", "wg", "nft", "ping", "nsenter", "unshare")


def root_tier_missing() -> str | None:
    """Why the root tier cannot run here, or None when it can."""
    if os.geteuid() != 0:
        return "needs root (network namespaces and TUN devices); run `make test` as root"
    missing = [
        tool
        for tool in ROOT_TOOLS
        if shutil.which(tool, path=os.environ.get("PATH", "") + ":/usr/sbin:/sbin") is None
    ]
    if missing:
        return f"needs {', '.join(missing)}: `make test` installs them (apt: wireguard-go wireguard-tools iproute2 iputils-ping nftables)"
    if not os.path.exists("/dev/net/tun"):
        return "needs /dev/net/tun for wireguard-go"
    return None


def pytest_addoption(parser: pytest.Parser) -> None:
    parser.addoption(
        "--wg-backend",
        choices=WG_BACKENDS,
        default="userspace",
        help="WireGuard backend of the data-plane tests (kernel: the tests/kernel VM passes it)",
    )


def pytest_generate_tests(metafunc: pytest.Metafunc) -> None:
    """`wg_backend` is a parameter, so a test's id says which backend it ran on."""
    if "wg_backend" in metafunc.fixturenames:
        metafunc.parametrize("wg_backend", [metafunc.config.getoption("wg_backend")], scope="module")


@pytest.hookimpl(wrapper=True, tryfirst=True)  # outside pytest-randomly's own (tryfirst) wrapper
def pytest_collection_modifyitems(config: pytest.Config, items: list[pytest.Item]) -> Iterator[None]:
    """Around every other reordering and marking (pytest-randomly's shuffle, the tiers' `root` marks):
    the steps of each `scenario` module back in file order, in the places the shuffle gave that module;
    then the root tier skipped, with the reason, where it cannot run."""
    collected = {id(item): i for i, item in enumerate(items)}
    yield
    places: dict[Path, list[int]] = {}
    for i, item in enumerate(items):
        if item.get_closest_marker("scenario"):
            places.setdefault(item.path, []).append(i)
    for indices in places.values():
        steps = sorted((items[i] for i in indices), key=lambda item: collected[id(item)])
        for i, step in zip(indices, steps, strict=True):
            items[i] = step
    reason = root_tier_missing()
    if reason is not None:
        skip = pytest.mark.skip(reason=reason)
        for item in items:
            if item.get_closest_marker("root"):
                item.add_marker(skip)


def pytest_terminal_summary(terminalreporter: pytest.TerminalReporter, config: pytest.Config) -> None:
    """The seed of a shuffled run, at the end where a failure is read, also under -q."""
    seed = getattr(config.option, "randomly_seed", None)
    if config.pluginmanager.hasplugin("randomly") and isinstance(seed, int):
        terminalreporter.write_line(
            f"tests ran in random order: -p randomly --randomly-seed={seed} replays it"
        )


@pytest.fixture(scope="session")
def postgres() -> Iterator[PostgresCluster]:
    """A private PostgreSQL cluster for the whole run (started on first use, removed at the end)."""
    try:
        cluster = PostgresCluster(prefix="wgq-pg-test-")
    except PostgresMissing as e:
        pytest.skip(str(e))
    with cluster:
        yield cluster


@pytest.fixture(params=["sqlite", "postgresql"])
def store_url(request: pytest.FixtureRequest, tmp_path: Path) -> str:
    """A fresh, empty database for one test: SQLite in tmp_path, or a new PostgreSQL database."""
    if request.param == "sqlite":
        return f"sqlite:///{tmp_path / 'controller.db'}"
    cluster: PostgresCluster = request.getfixturevalue("postgres")
    return cluster.create_database()
