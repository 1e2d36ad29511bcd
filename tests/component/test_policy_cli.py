"""`wgmesh policy` as an admin runs it against a real controller process: check and set name every
problem's place and change nothing when refused, get prints the document, test names the rule,
history shows who and when, rollback restores."""

from __future__ import annotations

import contextlib
import io
import json
import subprocess
from collections.abc import Iterator
from pathlib import Path

import pytest

from controller.policy_cli import main as policy_main
from tests.support import Served, start_controller
from wire import api

POLICY = """# the api is for clients
[tags]
web = ["supervisor"]
[[rules]]
name = "api"
from = ["*"]
to = ["tag:supervisor"]
ports = ["tcp/8000"]
"""


@pytest.fixture
def served(tmp_path: Path) -> Iterator[Served]:
    s = start_controller(tmp_path / "state")
    try:
        yield s
    finally:
        s.stop()


def policy(served: Served, *args: str) -> subprocess.CompletedProcess[str]:
    """`wgmesh policy ARGS` against the served controller, run in this process (a new Python per
    command would make this test mostly interpreter start-ups; one real run below covers the command)."""
    out, err = io.StringIO(), io.StringIO()
    with contextlib.redirect_stdout(out), contextlib.redirect_stderr(err):
        code = policy_main([*args, "--controller", served.url, "--state-dir", str(served.state_dir)])
    return subprocess.CompletedProcess(args, code, out.getvalue(), err.getvalue())


def enroll(served: Served, hostname: str) -> None:
    key = served.cli("controller", "token", "create").stdout.strip().splitlines()[-1]
    r = served.enroll(hostname, key)
    assert r.status_code == 200, r.text


def test_policy_commands(served: Served, tmp_path: Path):
    enroll(served, "web")
    enroll(served, "laptop")
    assert policy(served, "get").stderr.strip() == "no policy: every node may reach every other (full mesh)"
    good, bad = tmp_path / "policy.toml", tmp_path / "bad.toml"
    good.write_text(POLICY)
    bad.write_text(POLICY.replace("tcp/8000", "tcp/99999").replace('"*"', '"everyone"'))
    checked = policy(served, "check", str(bad))
    assert checked.returncode == 1
    assert checked.stderr.splitlines() == [
        f"{bad}: rules[0].from[0]: 'everyone': a selector is 'tag:NAME', 'node:NAME' or '*'",
        f"{bad}: rules[0].ports[0]: 'tcp/99999': ports are 1-65535",
    ]
    refused = policy(served, "set", str(bad))
    assert refused.returncode == 1 and "refused; the policy in force stays" in refused.stderr
    assert policy(served, "check", str(good)).stdout.strip() == f"{good}: ok"
    done = policy(served, "set", str(good), "--author", "alice")
    assert done.returncode == 0 and done.stdout.strip() == "policy version 1 in force"
    assert policy(served, "get").stdout == POLICY
    assert served.cli("policy", "get").stdout == POLICY  # the real command, through the dispatcher
    assert policy(served, "test", "laptop", "web", "8000").stdout.strip() == (
        "laptop -> web 8000: allowed by api (policy version 1)"
    )
    assert policy(served, "test", "laptop", "web", "22").stdout.strip() == (
        "laptop -> web 22: denied by default deny (no rule matches) (policy version 1)"
    )
    assert policy(served, "test", "web", "laptop").stdout.strip().startswith("web -> laptop: denied")
    missing = policy(served, "test", "nobody", "web")
    assert missing.returncode == 1 and "no node named 'nobody'" in missing.stderr
    open_all = tmp_path / "open.json"
    open_all.write_text('{"rules": [{"from": ["*"], "to": ["*"]}]}')
    assert policy(served, "set", str(open_all), "--author", "bob").returncode == 0
    rolled = policy(served, "rollback", "1", "--author", "carol")
    assert rolled.stdout.strip() == "policy version 1 restored as version 3"
    history = policy(served, "history").stdout.splitlines()
    assert history[0].split() == ["VERSION", "WHEN", "WHO", "WHAT"]
    assert [line.split()[2:] for line in history[1:]] == [
        ["alice", "set"],
        ["bob", "set"],
        ["carol", "rollback", "to", "1"],
    ]
    assert policy(served, "rollback", "7").returncode == 1
    cleared = policy(served, "clear", "--author", "dave")
    assert cleared.stdout.strip() == "no policy in force (version 4): every node may reach every other"
    got = policy(served, "get")
    assert got.stdout == "" and got.stderr.startswith(
        "no policy: every node may reach every other (full mesh) since version 4 (dave, "
    )
    assert policy(served, "test", "laptop", "web", "22").stdout.strip() == (
        "laptop -> web 22: allowed by no policy (full mesh) (no policy)"
    )
    assert policy(served, "rollback", "0").stdout.strip().startswith("no policy in force (version 5)")
    assert policy(served, "rollback", "2").stdout.strip() == "policy version 2 restored as version 6"
    history = policy(served, "history").stdout.splitlines()
    assert [line.split()[3:] for line in history[4:]] == [
        ["clear", "(no", "policy)"],
        ["clear", "(no", "policy)"],
        ["rollback", "to", "2"],
    ]
    bad = served.cli("policy", "rollback", "two")
    assert bad.returncode == 2 and bad.stderr.strip() == (
        "wgmesh policy rollback: argument version: expected a version number (0: no policy), got 'two' "
        "(see --help)"
    )


def test_tags_from_the_key_and_from_the_admin(served: Served):
    created = served.cli("controller", "token", "create", "--tag", "gpu", "--tag", "worker")
    assert created.returncode == 0, created.stderr
    assert served.enroll("box", created.stdout.strip()).status_code == 200
    listed = served.cli("controller", "token", "list").stdout.splitlines()
    assert listed[1].split()[:3] == ["1", "node", "gpu,worker"]
    assert "tags:           gpu, worker" in served.cli("nodes", "show", "box").stdout
    tagged = served.cli("nodes", "tag", "box", "scheduler", "gpu")
    assert (tagged.returncode, tagged.stdout.strip()) == (0, "node 1 (box): tags gpu, scheduler")
    assert served.cli("nodes", "tag", "box", "--role").stdout.strip() == "node 1 (box): tags node"
    override = Path(served.state_dir) / "override.toml"
    override.write_text('[tags]\nbox = ["client"]\n')
    assert policy(served, "set", str(override)).returncode == 0
    noted = served.cli("nodes", "tag", "box", "gpu")
    assert noted.stdout.strip() == "node 1 (box): tags client"
    assert noted.stderr.strip() == (
        "wgmesh nodes tag: note: the policy's [tags] entry for box (client) decides its tags while it is there"
    )
    bad = served.cli("nodes", "tag", "box", "Not A Tag")
    assert bad.returncode == 2
    assert bad.stderr.strip() == (
        "wgmesh nodes: tag: 'Not A Tag': a tag is 1-32 of a-z, 0-9, '_' or '-', starting with a letter "
        "(see --help)"
    )
    bad_key = served.cli("controller", "token", "create", "--tag", "UPPER")
    assert bad_key.returncode == 2
    assert bad_key.stderr.strip() == (
        "wgmesh controller token create: --tag: 'UPPER': a tag is 1-32 of a-z, 0-9, '_' or '-', "
        "starting with a letter"
    )


def test_status_says_which_agents_enforce_their_rules(served: Served, tmp_path: Path):
    keys = [served.cli("controller", "token", "create").stdout.strip() for _ in range(2)]
    web = served.enroll("web", keys[0]).json()
    served.enroll("laptop", keys[1])
    doc = tmp_path / "p.toml"
    doc.write_text(POLICY)
    assert policy(served, "set", str(doc)).returncode == 0
    with served.http() as c:  # web's agent polls, saying it enforces version 1
        r = c.get(
            api.NETMAP, params={"policy": 1}, headers={"Authorization": f"Bearer {web['node_credential']}"}
        )
        assert r.status_code == 200
    shown = policy(served, "status")
    lines = shown.stdout.splitlines()
    assert lines[0].split() == ["ID", "NAME", "TAGS", "IN", "MAP", "ENFORCED", "STATE"]
    assert [line.split() for line in lines[1:]] == [
        ["1", "web", "supervisor", "1", "1", "current"],
        ["2", "laptop", "node", "1", "-", "not", "reported"],
    ]
    assert shown.stderr.strip() == "1 of 2 nodes enforce the rules in their map"
    assert policy(served, "clear").returncode == 0
    assert [row["state"] for row in json.loads(policy(served, "status", "--json").stdout)] == [
        "full mesh",
        "full mesh",
    ]
