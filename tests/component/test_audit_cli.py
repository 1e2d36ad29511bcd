"""`wgmesh audit` as an admin runs it against a real controller process: an aligned table of who did
what, when, with which result and from where; filters by action, node and time; --json for scripts;
bad arguments are one line and exit 2."""

from __future__ import annotations

import contextlib
import io
import json
import subprocess
from collections.abc import Iterator
from pathlib import Path

import pytest

from controller.audit_cli import main as audit_main
from tests.support import Served, start_controller
from wire import api


@pytest.fixture
def served(tmp_path: Path) -> Iterator[Served]:
    s = start_controller(tmp_path / "state")
    try:
        yield s
    finally:
        s.stop()


def audit(served: Served, *args: str) -> subprocess.CompletedProcess[str]:
    """`wgmesh audit ARGS` in this process (one real run through the dispatcher below)."""
    out, err = io.StringIO(), io.StringIO()
    with contextlib.redirect_stdout(out), contextlib.redirect_stderr(err):
        try:
            code = audit_main([*args, "--controller", served.url, "--state-dir", str(served.state_dir)])
        except SystemExit as e:
            code = int(e.code or 0)
    return subprocess.CompletedProcess(args, code, out.getvalue(), err.getvalue())


def test_audit_shows_who_did_what_as_a_table(served: Served, tmp_path: Path):
    key = served.cli("controller", "token", "create", "--role", "worker").stdout.strip().splitlines()[-1]
    assert served.enroll("web", key).status_code == 200
    policy = tmp_path / "policy.toml"
    policy.write_text('[[rules]]\nfrom = ["*"]\nto = ["*"]\n')
    assert served.cli("policy", "set", str(policy), "--author", "alice").returncode == 0
    with served.http() as c:
        assert c.get(api.NODES, headers={"Authorization": "Bearer not-it"}).status_code == 401

    shown = served.cli("audit")  # the real command, through the dispatcher
    assert shown.returncode == 0, shown.stderr
    lines = shown.stdout.splitlines()
    assert lines[0].split() == ["WHEN", "WHO", "ACTION", "RESULT", "NODE", "SOURCE", "WHAT"]
    for column in ("WHO", "ACTION", "RESULT", "NODE", "SOURCE", "WHAT"):
        at = lines[0].index(column)  # every row's cell of this column starts where its header does
        assert all(line[at - 2 : at] == "  " and line[at] != " " for line in lines), column
    action_at = lines[0].index("ACTION")
    assert [line[action_at:].split()[0] for line in lines[1:]] == [
        "preauth.create",
        "enroll",
        "policy.set",
        "admin.auth",
    ]
    assert "web (1)" in lines[2] and "127.0.0.1" in lines[2]
    assert "admin (alice)" in lines[3] and "version 1 from" in lines[3]
    assert key not in shown.stdout

    only = audit(served, "--action", "policy", "--json")
    assert [(e["action"], e["policy_version"]) for e in json.loads(only.stdout)] == [("policy.set", 1)]
    assert [e["action"] for e in json.loads(audit(served, "--node", "web", "--json").stdout)] == ["enroll"]
    assert len(json.loads(audit(served, "--since", "1h", "--json").stdout)) == 4
    assert audit(served, "--since", "2999-01-01").stderr.strip() == "no audit events match"


@pytest.mark.parametrize(
    ("args", "message"),
    [
        (["--since", "yesterday"], "--since: expected a duration ago (30m, 1h, 7d) or a time"),
        (["--action", "nonsense"], "--action: 'nonsense' is not an action"),
        (["--limit", "0"], "--limit: expected a number from 1 to 10000"),
    ],
)
def test_bad_arguments_are_one_line(args: list[str], message: str, tmp_path: Path):
    err = io.StringIO()
    with contextlib.redirect_stderr(err), pytest.raises(SystemExit) as exit_:
        audit_main([*args, "--controller", "http://127.0.0.1:9", "--admin-credential", "x"])
    assert exit_.value.code == 2
    assert len(err.getvalue().strip().splitlines()) == 1
    assert f"wgmesh audit: argument {message}" in err.getvalue()


def test_an_unreachable_controller_is_one_line():
    err = io.StringIO()
    with contextlib.redirect_stderr(err):
        code = audit_main(["--controller", "http://127.0.0.1:9", "--admin-credential", "x"])
    assert code == 1 and len(err.getvalue().strip().splitlines()) == 1
    assert "cannot reach the controller at http://127.0.0.1:9" in err.getvalue()
