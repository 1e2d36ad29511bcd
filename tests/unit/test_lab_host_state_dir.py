"""Every command the lab runs on a host names the host's state directory in WGMESH_STATE_DIR, the
variable `wgmesh agent` and `wgmesh p2p` read when no --state-dir is given, and finds the lab's own
`wgmesh` first on its PATH."""

from __future__ import annotations

import sys
from pathlib import Path

from agent import state as agent_state
from lab.layout import LabLayout
from lab.processes import in_host
from p2p import cli as p2p_cli


def test_a_host_command_runs_with_the_hosts_state_dir_in_its_environment():
    host = LabLayout("unit").host(2)
    argv = in_host(host, ["wgmesh", "p2p", "listen"])
    assert argv[:4] == ["ip", "netns", "exec", host.namespace]
    at = argv.index("env")
    # The variable is set right before the command, and the command is left as it was.
    assert argv[at : at + 2] == ["env", f"WGMESH_STATE_DIR={host.state_dir}"]
    assert argv[at + 2].startswith(f"PATH={Path(sys.executable).parent}:")
    assert argv[at + 3 :] == ["wgmesh", "p2p", "listen"]
    assert str(host.run_dir) in argv[:at]  # still in its private /run/wireguard


def test_the_agent_and_the_p2p_cli_agree_on_the_variable_name():
    assert agent_state.STATE_DIR_ENV == p2p_cli.STATE_DIR_ENV == "WGMESH_STATE_DIR"
