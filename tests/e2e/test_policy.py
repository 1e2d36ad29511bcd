"""The access policy on a real 5-host lab (h1 supervisor, h2 h3 workers, h4 h5 clients), set with
`wgmesh policy` as an admin would, checked with real TCP connections, pings and p2p messages: a client
reaches the supervisor's API port but not a worker nor the supervisor's other ports; a worker may not
send `task_assignment`; a policy change opens and closes access (the time it took is printed; the
1-second goal is measured in bench.push)."""

from __future__ import annotations

import subprocess
import sys
import time
from collections.abc import Iterator
from pathlib import Path

import pytest

from lab.instance import Lab
from lab.processes import wgmesh_argv
from tests.e2e.harness import logs, reachable, running_lab
from tests.support import wait_until

pytestmark = [pytest.mark.root, pytest.mark.scenario]
NAME = "ppol"
API_PORT, OTHER_PORT = 8000, 9000

POLICY = f"""# supervisors run the API; workers report to them; clients use the API only
relays = ["tag:supervisor"]

[tags]
h1 = ["supervisor"]
h2 = ["worker"]
h3 = ["worker"]
h4 = ["client"]
h5 = ["client"]

[[rules]]
name = "api"
from = ["tag:client"]
to = ["tag:supervisor"]
ports = ["tcp/{API_PORT}", "icmp"]

[[rules]]
name = "work"
from = ["tag:worker"]
to = ["tag:supervisor"]

[messages]
task_assignment = ["tag:supervisor"]
"""
OPENED = (
    POLICY
    + f"""
[[rules]]
name = "clients-to-h2"
from = ["tag:client"]
to = ["node:h2"]
ports = ["tcp/{API_PORT}"]
"""
)

SERVER = f"""
import socket, threading
def serve(port):
    s = socket.socket(); s.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
    s.bind(("0.0.0.0", port)); s.listen(64)
    while True:
        c, _ = s.accept(); c.sendall(b"ok"); c.close()
for p in ({API_PORT}, {OTHER_PORT}):
    threading.Thread(target=serve, args=(p,), daemon=True).start()
print("serving", flush=True)
threading.Event().wait()
"""
CLIENT = """
import socket, sys
try:
    s = socket.create_connection((sys.argv[1], int(sys.argv[2])), timeout=float(sys.argv[3]))
    print("open" if s.recv(2) == b"ok" else "closed: no answer")
except OSError as e:
    print(f"closed: {e}")
"""


def connects(lab: Lab, source: str, target: str, port: int, timeout_s: float = 1.0) -> bool:
    address = lab.tunnel_addresses([target])[target]
    done = lab.exec(
        source, [sys.executable, "-c", CLIENT, str(address), str(port), str(timeout_s)], timeout=30
    )
    return done.stdout.strip() == "open"


def policy(lab: Lab, *args: str) -> subprocess.CompletedProcess[str]:
    argv = lab.admin_argv("policy", *args)
    return subprocess.run(lab.exec_argv("underlay", argv), capture_output=True, text=True, timeout=60)


def p2p_request(lab: Lab, host: str, target: str, type_: str) -> subprocess.CompletedProcess[str]:
    argv = lab.exec_argv(host, wgmesh_argv("p2p", "send", "--request", target, type_, "{}"))
    return subprocess.run(argv, capture_output=True, text=True, timeout=60)


@pytest.fixture(scope="module")
def lab(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Lab]:
    with running_lab(NAME, 5) as lab:
        servers = [
            subprocess.Popen(
                lab.exec_argv(h, [sys.executable, "-c", SERVER]), stdout=subprocess.PIPE, text=True
            )
            for h in ("h1", "h2")
        ]
        listener = subprocess.Popen(
            lab.exec_argv("h1", wgmesh_argv("p2p", "listen")), stdout=subprocess.PIPE, text=True
        )
        try:
            for s in servers:
                assert s.stdout is not None and s.stdout.readline().strip() == "serving"
            path = tmp_path_factory.mktemp("ppol") / "policy.toml"
            path.write_text(POLICY)
            # before any policy: the full mesh
            assert connects(lab, "h4", "h2", API_PORT, 3.0) and connects(lab, "h4", "h1", OTHER_PORT, 3.0)
            done = policy(lab, "set", str(path), "--author", "e2e")
            assert done.returncode == 0, done.stderr
            wait_until(
                "h4 to lose h2", lambda: not connects(lab, "h4", "h2", API_PORT), 30, show=lambda: logs(lab)
            )
            yield lab
        finally:
            for p in (*servers, listener):
                p.terminate()
                try:
                    p.wait(timeout=10)
                except subprocess.TimeoutExpired:
                    p.kill()
                    p.wait(timeout=10)


def test_a_client_reaches_the_supervisors_api_and_nothing_else(lab: Lab):
    assert connects(lab, "h4", "h1", API_PORT)
    assert connects(lab, "h5", "h1", API_PORT)
    assert reachable(lab, "h4", "h1")
    assert not connects(lab, "h4", "h1", OTHER_PORT)
    assert not connects(lab, "h4", "h2", API_PORT)
    assert not connects(lab, "h4", "h2", OTHER_PORT)
    assert not reachable(lab, "h4", "h2")
    assert not reachable(lab, "h4", "h5")
    # a worker reaches all of the supervisor; the supervisor opens nothing towards a client
    assert connects(lab, "h2", "h1", OTHER_PORT)
    assert not connects(lab, "h1", "h4", API_PORT)
    status = lab.agent_status("h4")
    assert status is not None and {p.name for p in status.peers} == {"h1"}


def test_test_names_the_rule_that_decides(lab: Lab):
    assert policy(lab, "test", "h4", "h1", str(API_PORT)).stdout.startswith("h4 -> h1 8000: allowed by api")
    assert "denied by default deny" in policy(lab, "test", "h4", "h1", str(OTHER_PORT)).stdout


def test_a_worker_cannot_send_task_assignment(lab: Lab):
    refused = p2p_request(lab, "h2", "h1", "task_assignment")
    assert refused.returncode == 1, f"{refused.stdout}\n{refused.stderr}"
    assert "may not send" in refused.stderr or "does not let" in refused.stderr, refused.stderr
    allowed = p2p_request(lab, "h2", "h1", "result")
    assert allowed.returncode == 0, f"{allowed.stdout}\n{allowed.stderr}"


def test_a_policy_change_opens_and_closes_access(lab: Lab, tmp_path: Path):
    opened = tmp_path / "opened.toml"
    opened.write_text(OPENED)
    assert policy(lab, "set", str(opened)).returncode == 0
    started = time.monotonic()  # from the controller's answer: the CLI's own start-up is not the mesh's
    wait_until("h4 to reach h2's port", lambda: connects(lab, "h4", "h2", API_PORT), 30, interval=0.05)
    took_open = time.monotonic() - started
    assert not connects(lab, "h4", "h2", OTHER_PORT)
    history = policy(lab, "history").stdout.splitlines()
    assert policy(lab, "rollback", history[1].split()[0]).returncode == 0
    started = time.monotonic()
    wait_until(
        "h4 to lose h2's port", lambda: not connects(lab, "h4", "h2", API_PORT, 0.3), 30, interval=0.05
    )
    took_close = time.monotonic() - started
    print(f"RESULT name=policy_e2e open_s={took_open:.2f} close_s={took_close:.2f}")


def test_the_firewall_is_on_the_interface_and_agent_down_removes_it(lab: Lab):
    listed = lab.exec("h1", ["nft", "list", "table", "inet", "wgmesh_wg0"])
    assert listed.returncode == 0, listed.stderr
    assert 'iifname "wg0"' in listed.stdout and "tcp dport 8000 accept" in listed.stdout
    assert lab.stop_agent("h5")
    wait_until("h5's agent to stop", lambda: not (s := lab.agent_status("h5")) or not s.running, 30)
    down = lab.exec("h5", wgmesh_argv("agent", "down"))
    assert down.returncode == 0, down.stderr
    assert "removed the policy firewall" in down.stdout
    assert lab.exec("h5", ["nft", "list", "table", "inet", "wgmesh_wg0"]).returncode != 0
