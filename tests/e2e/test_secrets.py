"""No secret in any log or process list: a lab of two hosts (lab `stls`) enrolls over the pinned
controller CA, and then neither the lab's log files (all 0600) nor /proc/*/cmdline of any process hold
the pre-auth key, the node credentials, the admin credential, the WireGuard or identity private keys, or
the controller's TLS keys. (Before: the key was on every agent's command line and in every agent.log
through its start line, and the admin credential in controller.log, mode 0644.)"""

from __future__ import annotations

import base64
import stat
from pathlib import Path

import pytest

from agent.state import StatePaths
from lab.instance import Lab
from tests.e2e.harness import running_lab, wait_until
from wire.preauth import parse_preauth_key

pytestmark = [pytest.mark.root, pytest.mark.scenario]


@pytest.fixture(scope="module")
def lab():
    with running_lab("stls", 2) as lab:
        yield lab


def secrets_of(lab: Lab) -> dict[str, str]:
    key = lab.ensure_preauth_key()
    found = {"pre-auth key": key, "pre-auth secret": parse_preauth_key(key).secret}
    found["admin credential"] = lab.layout.admin_credential_path.read_text().strip()
    for h in lab.hosts:
        paths = StatePaths(h.state_dir)
        found[f"{h.name} node credential"] = paths.credential.read_text().strip()
        for name, path in (("wireguard", paths.wireguard_key), ("identity", paths.identity_key)):
            b64 = path.read_text().strip()
            found[f"{h.name} {name} key"] = b64
            found[f"{h.name} {name} key (hex)"] = base64.b64decode(b64).hex()
    for name in ("ca.key", "server.key"):
        pem = (lab.layout.controller_dir / "tls" / name).read_text().splitlines()
        found[f"controller {name}"] = max(pem, key=len)  # a line of the key's base64 body
    return found


def test_every_agent_pinned_the_controller_ca(lab: Lab):
    ca = lab.layout.controller_ca_path.read_bytes()
    for h in lab.hosts:
        assert (h.state_dir / "controller-ca.pem").read_bytes() == ca
    assert (
        "CA pin " + parse_preauth_key(lab.ensure_preauth_key()).ca_pin
        in lab.layout.controller_log.read_text()
    )


def test_no_log_and_no_command_line_holds_a_secret_and_logs_are_0600(lab: Lab):
    # some admin traffic first, so its commands are in the process table and its answers in no log
    assert "h1" in lab.run_in_underlay(lab.admin_argv("nodes", "list"))
    lab.stop_agent("h2")
    assert lab.start_agent("h2")  # a restart: its start line is logged again
    secrets = secrets_of(lab)
    logs = sorted(lab.layout.dir.rglob("*.log"))
    assert lab.layout.controller_log in logs and all(h.agent_log in logs for h in lab.hosts)
    for log in logs:
        assert stat.S_IMODE(log.stat().st_mode) == 0o600, log
        text = log.read_text(errors="replace")
        leaked = [what for what, secret in secrets.items() if secret in text]
        assert not leaked, f"{log} holds {leaked}"
    # every process on the machine, and by name the lab's own: its controller and both agents, each read
    # once it runs its final program (a just-restarted agent may still be in its `env` wrapper's exec)
    own = [lab.record.controller] + [lab.record.host(h.index).agent for h in lab.hosts]
    for process in own:
        assert process is not None
        argv = wait_until(
            f"pid {process.pid} to run wgmesh",
            lambda pid=process.pid: (a := cmdline_of(pid)) is not None and "wgmesh" in a and a,
            10,
        )
        leaked = [what for what, secret in secrets.items() if secret in argv]
        assert not leaked, f"pid {process.pid}: {argv[:200]} holds {leaked}"
    for path in Path("/proc").glob("[0-9]*/cmdline"):
        argv = cmdline_of(int(path.parent.name)) or ""
        leaked = [what for what, secret in secrets.items() if secret in argv]
        assert not leaked, f"{path}: {argv[:200]} holds {leaked}"


def cmdline_of(pid: int) -> str | None:
    """The command line of `pid`, or None when it ended."""
    try:
        return Path(f"/proc/{pid}/cmdline").read_bytes().replace(b"\0", b" ").decode(errors="replace")
    except OSError:
        return None
