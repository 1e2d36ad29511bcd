"""Harness of the machines tier: four Debian bookworm systems booted with systemd as PID 1
(systemd-nspawn), wgmesh installed inside each by deploy/install.sh offline from a wheel of this
checkout, the controller unit on `c`, agent units on `h1`..`h3` (h3 forced to the userspace backend,
like the Vagrantfile). One mesh for the whole tier, always removed, also after a failure.

Every test here is in the root tier; tests/conftest.py skips it with the reason where it cannot run.
Without systemd-nspawn or mmdebstrap the tier fails with the command that installs them (CI has them:
`make test` installs them), never silently passes.
"""

from __future__ import annotations

import shutil
import time
from collections.abc import Iterator
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from pathlib import Path

import pytest

from tests.machines import nspawn
from tests.machines.nspawn import DEPLOY_MOUNT, WHEEL_MOUNT, WHEELHOUSE_MOUNT, Machine, Machines

CONTROLLER = "c"
HOSTS = ["h1", "h2", "h3"]
USERSPACE_HOST = "h3"
PORT = 8420
WG_PORT = 51820
FIGURES = nspawn.RUN_BASE / "figures.txt"


def pytest_collection_modifyitems(items: list[pytest.Item]) -> None:
    here = Path(__file__).parent
    for item in items:
        if Path(str(item.fspath)).parent == here:
            item.add_marker(pytest.mark.root)


@dataclass
class Mesh:
    fleet: Machines
    wheel: Path
    controller_url: str
    started: float
    figures: dict[str, str] = field(default_factory=dict)

    @property
    def controller(self) -> Machine:
        return self.fleet[CONTROLLER]

    def hosts(self) -> list[Machine]:
        return [self.fleet[name] for name in HOSTS]

    def install(self, machine: Machine, *args: str, check: bool = True) -> str:
        result = machine.sh(
            f"{DEPLOY_MOUNT}/install.sh {' '.join(args)} --from {WHEEL_MOUNT}/{self.wheel.name} "
            f"--wheelhouse {WHEELHOUSE_MOUNT}",
            check=check,
            timeout=600,
        )
        return result.stdout + result.stderr

    def agent_args(self, machine: Machine) -> list[str]:
        args = ["agent", "--controller", self.controller_url, "--token-file", "/root/preauth-key"]
        args += ["--endpoint", f"{machine.address}:{WG_PORT}"]
        if machine.name == USERSPACE_HOST:
            args += ["--backend", "userspace"]
        return args

    def record(self, name: str, value: str) -> None:
        self.figures[name] = value
        with FIGURES.open("a") as f:
            f.write(f"{name}: {value}\n")


def tools_missing() -> str | None:
    missing = [t for t in ("systemd-nspawn", "mmdebstrap", "nsenter") if shutil.which(t) is None]
    if missing:
        return f"needs {', '.join(missing)}: `make test-machines` installs them (apt: systemd-container mmdebstrap)"
    return None


@pytest.fixture(scope="package")
def mesh() -> Iterator[Mesh]:
    problem = tools_missing()
    if problem:
        pytest.fail(problem)
    nspawn.clean_leftovers()
    started = time.monotonic()
    base, built = nspawn.cached_rootfs()
    rootfs_s = time.monotonic() - started
    work = nspawn.RUN_BASE / "wheel"
    shutil.rmtree(work, ignore_errors=True)
    wheel, house = nspawn.built_wheels(work)
    binds = (
        f"--bind-ro={wheel.parent}:{WHEEL_MOUNT}",
        f"--bind-ro={house}:{WHEELHOUSE_MOUNT}",
        f"--bind-ro={nspawn.REPO / 'deploy'}:{DEPLOY_MOUNT}",
    )
    fleet = Machines.create(base, [CONTROLLER, *HOSTS], binds)
    try:
        mesh = Mesh(fleet, wheel, f"https://{fleet[CONTROLLER].address}:{PORT}", started)
        FIGURES.unlink(missing_ok=True)
        mesh.record("rootfs", f"{rootfs_s:.1f} s ({'built now' if built else 'cached'})")
        for machine in fleet.machines.values():
            (machine.root / "etc" / "hostname").write_text(machine.name + "\n")
            machine.boot()
        mesh.install(mesh.controller, "controller", "--listen", f"0.0.0.0:{PORT}")
        key = mesh.controller.sh("wgmesh controller token create --reusable --expires 1h").stdout.strip()
        for host in mesh.hosts():
            host.sh(f"umask 077 && echo '{key}' > /root/preauth-key")
        with ThreadPoolExecutor(len(HOSTS)) as pool:  # the hosts install side by side, like `vagrant up`
            list(pool.map(lambda host: mesh.install(host, *mesh.agent_args(host)), mesh.hosts()))
        mesh.record("nothing to 4 machines installed", f"{time.monotonic() - started:.1f} s")
        yield mesh
    finally:
        fleet.close()
