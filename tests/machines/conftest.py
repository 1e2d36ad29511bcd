"""The fixture of the machines tier (its harness: nspawn.py, mesh.py): four Debian bookworm systems
booted with systemd as PID 1 (systemd-nspawn), wgmesh installed inside each by deploy/install.sh
offline from a wheel of this checkout, the controller unit on `c`, agent units on `h1`..`h3` (h3 forced
to the userspace backend, like the Vagrantfile). One mesh for the whole tier, always removed, also
after a failure.

Every test here is in the root tier; tests/conftest.py skips it with the reason where it cannot run.
Without systemd-nspawn or mmdebstrap the tier fails with the command that installs them (CI has them:
`make test` installs them), never silently passes.
"""

from __future__ import annotations

import shutil
import time
from collections.abc import Iterator
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import pytest

from tests.machines import nspawn
from tests.machines.mesh import CONTROLLER, FIGURES, HOSTS, PORT, Mesh, full_mesh, tools_missing
from tests.machines.nspawn import DEPLOY_MOUNT, WHEEL_MOUNT, WHEELHOUSE_MOUNT, Machines
from tests.support import wait_until

# The first test pays for the mesh fixture (booting and installing four machines): on a loaded 2-core
# machine that alone can take minutes.
TEST_TIMEOUT_S = 900


def pytest_collection_modifyitems(items: list[pytest.Item]) -> None:
    here = Path(__file__).parent
    for item in items:
        if Path(str(item.fspath)).parent == here:
            item.add_marker(pytest.mark.root)
            item.add_marker(pytest.mark.scenario)  # steps on the same four machines
            item.add_marker(pytest.mark.timeout(TEST_TIMEOUT_S))


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
        mesh = Mesh(fleet, wheel, house, f"https://{fleet[CONTROLLER].address}:{PORT}", started)
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
        wait_until("every pair of hosts to ping over the tunnel", lambda: full_mesh(mesh), timeout=120)
        mesh.record("nothing to a 4-machine mesh (every pair pings)", f"{time.monotonic() - started:.1f} s")
        yield mesh
    finally:
        fleet.close()
