"""What a running agent holds in memory: `wgmesh agent up` (fake backend, no root) enrolls with a real
controller process over TLS with the CA pinned by its pre-auth key, applies its map and writes its
status; every module it imported along the way (`python -X importtime`) is checked. The controller's
libraries, p2p messaging and cryptography's bindings (8 MiB resident) have no business in it, and the
metrics library is loaded only when metrics are served (bench.lab reports the RSS this keeps down)."""

from __future__ import annotations

import signal
import subprocess
import sys
from pathlib import Path

import pytest

from agent.status import AgentStatus, StatusError
from tests.support import Served, free_port, start_controller, wait_until

# Top-level packages (a package covers its submodules) a running agent never imports.
NEVER = {
    "controller", "lab", "fastapi", "starlette", "uvicorn", "sqlalchemy", "psycopg", "networkx", "numpy",
    "scipy", "websockets", "msgpack", "p2p.node", "p2p.transport", "cryptography", "pyroute2", "click",
    "pygments", "rich",
}  # fmt: skip


@pytest.fixture
def served(tmp_path: Path):
    s = start_controller(tmp_path / "controller")
    try:
        yield s
    finally:
        s.stop()


def imported_by_agent(served: Served, tmp_path: Path, *extra: str) -> set[str]:
    """Run `wgmesh agent up` until its status says it follows the controller; the modules it imported."""
    key = served.cli("controller", "token", "create").stdout.strip()
    assert "." in key, f"expected a pre-auth key with the CA pin, got {key!r}"
    key_file = tmp_path / "key"
    key_file.write_text(key + "\n")
    key_file.chmod(0o600)
    state_dir, log = tmp_path / "agent", tmp_path / "agent.log"
    argv = [
        sys.executable, "-X", "importtime", "-m", "wgmesh", "agent", "up", "--controller", served.url,
        "--token-file", str(key_file), "--backend", "fake", "--state-dir", str(state_dir),
        "--hostname", "imports1", "--probe-interval", "0.2", *extra,
    ]  # fmt: skip
    with log.open("wb") as out:
        agent = subprocess.Popen(argv, stdout=out, stderr=out)
    try:

        def following() -> bool:
            try:
                status = AgentStatus.load(state_dir / "status.json")
            except StatusError:
                return False
            return status.controller == "connected" and status.netmap_source == "controller"

        wait_until("the agent to follow the controller's map", following, 30, show=log.read_text)
    finally:
        agent.send_signal(signal.SIGTERM)
        code = agent.wait(timeout=20)
    text = log.read_text()
    assert code == 0, text
    return {
        line.rsplit("|", 1)[1].strip() for line in text.splitlines() if line.startswith("import time:")
    } - {"imported package"}


def never_wanted(modules: set[str]) -> list[str]:
    return sorted(m for m in modules if any(m == n or m.startswith(n + ".") for n in NEVER))


def test_a_running_agent_imports_nothing_it_does_not_use(served: Served, tmp_path: Path) -> None:
    modules = imported_by_agent(served, tmp_path)
    assert {"agent.daemon", "agent.client", "httpx", "pydantic"} <= modules  # the parse sees the agent
    assert never_wanted(modules) == []
    assert "prometheus_client" not in modules


def test_the_metrics_library_is_loaded_when_metrics_are_served(served: Served, tmp_path: Path) -> None:
    modules = imported_by_agent(served, tmp_path, "--metrics-listen", f"127.0.0.1:{free_port()}")
    assert "prometheus_client" in modules
    assert never_wanted(modules) == []
