"""The mesh of the machines tier: the controller machine `c` and the hosts `h1`..`h3` (h3 on the
userspace backend, like the Vagrantfile), how install.sh is run in them, what the tests read from them
(agent status, pings), and the figures they record for the issue's note (RUN_BASE/figures.txt)."""

from __future__ import annotations

import json
import re
import shutil
from dataclasses import dataclass, field
from pathlib import Path

from tests.machines import nspawn
from tests.machines.nspawn import DEPLOY_MOUNT, WHEEL_MOUNT, WHEELHOUSE_MOUNT, Machine, Machines

CONTROLLER = "c"
HOSTS = ["h1", "h2", "h3"]
USERSPACE_HOST = "h3"
PORT = 8420
WG_PORT = 51820
FIGURES = nspawn.RUN_BASE / "figures.txt"


@dataclass
class Mesh:
    fleet: Machines
    wheel: Path
    wheelhouse: Path
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


def status(machine: Machine) -> dict:
    return json.loads(machine.sh("wgmesh agent status --json").stdout)


def tunnel_addresses(mesh: Mesh) -> dict[str, str]:
    return {h.name: status(h)["tunnel_address"] for h in mesh.hosts()}


def pings(source: Machine, address: str, count: int = 1, interval: float = 0.2, wait: float = 1) -> str:
    """`ping` output from inside `source`; the caller reads its loss line."""
    result = source.sh(
        f"ping -n -q -c {count} -i {interval} -W {wait:g} {address}",
        check=False,
        timeout=count * interval + 30,
    )
    return result.stdout


def loss(output: str) -> str:
    match = re.search(r"(\d+) packets transmitted, (\d+) received", output)
    assert match, output
    return f"{match.group(1)} sent, {match.group(2)} received"


def lossless(output: str) -> bool:
    match = re.search(r"(\d+) packets transmitted, (\d+) received", output)
    return bool(match) and match.group(1) == match.group(2)


def full_mesh(mesh: Mesh) -> bool:
    addresses = tunnel_addresses(mesh)
    return all(
        lossless(pings(h, addresses[o], count=1, wait=1)) for h in mesh.hosts() for o in HOSTS if o != h.name
    )


def tools_missing() -> str | None:
    missing = [t for t in ("systemd-nspawn", "mmdebstrap", "nsenter") if shutil.which(t) is None]
    if missing:
        return f"needs {', '.join(missing)}: `make test-machines` installs them (apt: systemd-container mmdebstrap)"
    return None
