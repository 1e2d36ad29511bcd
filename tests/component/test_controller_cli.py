"""`wgmesh controller serve|token` and `wgmesh nodes` as a user runs them: a real controller process on
127.0.0.1 (uvicorn), one ready line, the admin credential shown once and stored 0600, `token create`
printing only the key, readable tables, and one clear line (exit 2) for bad settings."""

from __future__ import annotations

import json
import os
import shutil
import stat
import subprocess
from collections.abc import Iterator
from pathlib import Path

import pytest

from tests.support import Served, free_port, start_controller
from tests.support import run_wgmesh as run
from wire.preauth import parse_preauth_key


@pytest.fixture
def served(tmp_path: Path) -> Iterator[Served]:
    s = start_controller(tmp_path / "state")
    try:
        yield s
    finally:
        s.stop()


def test_first_start_off_a_terminal_names_the_credential_file_but_never_prints_it(served: Served):
    """stdout here is a pipe, as under systemd or a log file: the credential stays in its 0600 file and
    `wgmesh controller admin-credential` shows it to whoever may read that file."""
    cred_file = served.state_dir / "admin-credential"
    credential = cred_file.read_text().strip()
    assert stat.S_IMODE(cred_file.stat().st_mode) == 0o600
    assert len(served.first_lines) == 2
    assert served.first_lines[0] == (
        f"admin credential created in {cred_file}; show it with `wgmesh controller admin-credential`"
    )
    assert credential not in "\n".join(served.first_lines)
    shown = run("controller", "admin-credential", "--state-dir", str(served.state_dir))
    assert shown.returncode == 0 and shown.stdout == credential + "\n"
    assert served.first_lines[1].startswith("wgmesh controller ready on https://127.0.0.1:")
    assert "198.19.0.0/16" in served.first_lines[1]
    served.stop()
    again = start_controller(served.state_dir)
    try:
        assert len(again.first_lines) == 1 and credential not in again.first_lines[0]
    finally:
        again.stop()
    cred_file.chmod(0o644)
    refused = run("controller", "admin-credential", "--state-dir", str(served.state_dir))
    assert refused.returncode == 2 and refused.stdout == ""
    assert "other users can read it" in refused.stderr
    assert credential not in refused.stderr


def test_token_create_prints_only_the_key_and_it_enrolls_a_host(served: Served):
    created = served.cli("controller", "token", "create", "--reusable", "--expires", "30m")
    assert created.returncode == 0, created.stderr
    key = created.stdout.strip()
    assert created.stdout == key + "\n" and key.startswith("wgm_pak_")
    pin = parse_preauth_key(key).ca_pin
    assert pin is not None and served.first_lines[-1].endswith(f"CA pin {pin})")
    r = served.enroll("cli-host", key)
    assert r.status_code == 200, r.text

    listed = served.cli("controller", "token", "list")
    assert listed.returncode == 0
    header, row = listed.stdout.splitlines()
    assert header.split() == ["ID", "ROLE", "TAGS", "REUSABLE", "USED", "EXPIRES", "REVOKED", "CREATED"]
    assert row.split()[:5] == ["1", "node", "-", "yes", "1"]

    nodes = served.cli("nodes", "list")
    assert nodes.returncode == 0
    assert nodes.stdout.splitlines()[0].split()[:4] == ["ID", "NAME", "ROLE", "ADDRESS"]
    assert "cli-host" in nodes.stdout and "198.19.0.1" in nodes.stdout
    as_json = json.loads(served.cli("nodes", "list", "--json").stdout)
    assert as_json[0]["name"] == "cli-host"
    shown = served.cli("nodes", "show", "1")
    assert "tunnel address: 198.19.0.1" in shown.stdout
    by_name = served.cli("nodes", "show", "cli-host")
    assert by_name.returncode == 0 and by_name.stdout == shown.stdout
    unknown = served.cli("nodes", "remove", "no-such-host")
    assert unknown.returncode == 1
    assert unknown.stderr.strip() == (
        "wgmesh nodes remove: no node named 'no-such-host' (`wgmesh nodes list` shows the nodes)"
    )

    removed = served.cli("nodes", "remove", "cli-host")
    assert removed.returncode == 0 and "removed node 1 (cli-host" in removed.stdout
    assert json.loads(served.cli("nodes", "list", "--json").stdout) == []
    gone = served.cli("nodes", "removed")
    assert gone.returncode == 0
    assert gone.stdout.splitlines()[0].split() == ["ID", "NAME", "REMOVED", "WIREGUARD", "KEY"]
    assert gone.stdout.splitlines()[1].split()[:2] == ["1", "cli-host"]
    allowed = served.cli("nodes", "allow", "cli-host")
    assert allowed.returncode == 0 and "node 1's keys may enroll again" in allowed.stdout
    assert served.cli("nodes", "removed").stdout.startswith("no removed node")
    again = served.cli("nodes", "allow", "cli-host")
    assert again.returncode == 1
    assert again.stderr.strip() == (
        "wgmesh nodes allow: no removed node 'cli-host' (`wgmesh nodes removed` lists them)"
    )

    revoked = served.cli("controller", "token", "revoke", "1")
    assert revoked.returncode == 0
    assert "yes" in served.cli("controller", "token", "list").stdout.splitlines()[1].split()[6]


def test_admin_credential_from_the_environment(served: Served):
    credential = (served.state_dir / "admin-credential").read_text().strip()
    env = {
        **os.environ,
        "WGMESH_ADMIN_CREDENTIAL": credential,
        "WGMESH_CONTROLLER": served.url,
        "WGMESH_CA_FILE": str(served.state_dir / "tls" / "ca.crt"),
    }
    r = run("controller", "token", "create", env=env)
    assert r.returncode == 0 and r.stdout.startswith("wgm_pak_")
    env["WGMESH_ADMIN_CREDENTIAL"] = "wrong"
    r = run("nodes", "list", env=env)
    assert (
        r.returncode == 1
        and r.stderr.strip() == "wgmesh nodes list: controller refused (401): wrong admin credential"
    )


def test_refusals_and_unreachable_controllers_are_one_line(served: Served):
    r = served.cli("nodes", "show", "42")
    assert r.returncode == 1 and r.stderr.strip() == "wgmesh nodes show: controller refused (404): no node 42"
    r = run(
        "nodes",
        "list",
        "--controller",
        f"https://127.0.0.1:{free_port()}",
        "--state-dir",
        str(served.state_dir),
    )
    assert r.returncode == 1 and len(r.stderr.strip().splitlines()) == 1 and "cannot reach" in r.stderr
    r = run("nodes", "list", "--state-dir", str(served.state_dir / "nope"))
    assert r.returncode == 2 and "does not exist" in r.stderr


@pytest.mark.parametrize(
    ("args", "message"),
    [
        (["--mesh-cidr", "198.19.0.1/16"], "--mesh-cidr: '198.19.0.1/16' is not a network"),
        (["--mesh-cidr", "10.0.0.0/32"], "too small"),
        (["--listen", "nowhere"], "--listen: endpoint 'nowhere'"),
        (["--db", "mysql://x"], "--db: database URL must start with"),
        (["--config", "/nonexistent.toml"], "config file /nonexistent.toml does not exist"),
    ],
)
def test_invalid_settings_stop_start_up_with_one_line(tmp_path: Path, args: list[str], message: str):
    r = run("controller", "serve", "--state-dir", str(tmp_path), *args)
    assert r.returncode == 2
    assert r.stdout == ""
    lines = r.stderr.strip().splitlines()
    assert len(lines) == 1 and message in lines[0], r.stderr


def test_settings_come_from_flags_then_environment_then_file(tmp_path: Path):
    from controller.settings import load_settings

    config = tmp_path / "c.toml"
    config.write_text(
        'mesh_cidr = "10.1.0.0/16"\nlisten = "127.0.0.1:9000"\n[routing]\nhop_penalty_ms = 30\n'
    )
    env = {"WGMESH_CONFIG": str(config), "WGMESH_LISTEN": "127.0.0.1:9100"}
    s = load_settings({"mesh_cidr": "10.2.0.0/16"}, env)
    assert str(s.mesh_cidr) == "10.2.0.0/16"  # flag
    assert s.listen == "127.0.0.1:9100"  # environment
    assert s.policy.hop_penalty_ms == 30  # file
    assert s.database_url.startswith("sqlite:///")


def test_a_served_controller_keeps_its_nodes_across_restarts(tmp_path: Path):
    state = tmp_path / "state"
    first = start_controller(state)
    try:
        key = first.cli("controller", "token", "create").stdout.strip()
        assert first.enroll("keeper", key).status_code == 200
    finally:
        first.stop()
    second = start_controller(state)
    try:
        assert "1 nodes" in second.first_lines[-1]
        assert json.loads(second.cli("nodes", "list", "--json").stdout)[0]["tunnel_address"] == "198.19.0.1"
    finally:
        second.stop()


@pytest.mark.parametrize(
    ("args", "message"),
    [
        (
            ["--expires", "99999999d"],
            "wgmesh controller token create: argument --expires: '99999999d' is too far away: "
            "at most 3650d (10 years), or 'never' (see --help)",
        ),
        (
            ["--expires", "soon"],
            "wgmesh controller token create: argument --expires: expected a duration like 30m, 1h, "
            "7d or 'never', got 'soon' (see --help)",
        ),
    ],
)
def test_a_bad_token_flag_is_one_line_naming_the_flag(tmp_path: Path, args: list[str], message: str):
    r = run("controller", "token", "create", *args, "--state-dir", str(tmp_path))
    assert r.returncode == 2 and r.stdout == ""
    assert r.stderr.strip() == message


def _doc_block(name: str) -> list[str]:
    """The shell lines of the `<!-- tested: NAME -->` block of docs/operations.md."""
    text = (Path(__file__).resolve().parents[2] / "docs" / "operations.md").read_text()
    block = text.split(f"<!-- tested: {name} -->\n```sh\n", 1)[1].split("```", 1)[0]
    return [line for line in block.splitlines() if line.strip()]


def _as_here(line: str, state: Path, backups: Path) -> str:
    return line.replace("/var/lib/wgmesh/controller", str(state)).replace("/root/", f"{backups}/")


def test_the_documented_backup_and_restore_bring_back_every_node(tmp_path: Path):
    """docs/operations.md's commands, run as written (paths moved under tmp): a backup taken while the
    controller serves, a lost state directory, the restore, and the nodes are all back."""
    state, backups = tmp_path / "state", tmp_path / "backups"
    backups.mkdir()
    first = start_controller(state)
    try:
        key = first.cli("controller", "token", "create", "--reusable").stdout.strip()
        for name in ("alpha", "beta"):
            reply = first.enroll(name, key)
            assert reply.status_code == 200, reply.text
        for line in _doc_block("backup"):
            done = subprocess.run(
                ["bash", "-c", _as_here(line, state, backups)], capture_output=True, text=True, timeout=60
            )
            assert done.returncode == 0, f"{line}\n{done.stderr}"
    finally:
        first.stop()
    shutil.rmtree(state)  # the disk is lost
    state.mkdir(mode=0o700)
    for line in _doc_block("restore"):
        done = subprocess.run(
            ["bash", "-c", _as_here(line, state, backups)], capture_output=True, text=True, timeout=60
        )
        assert done.returncode == 0, f"{line}\n{done.stderr}"
    assert stat.S_IMODE((state / "controller.db").stat().st_mode) == 0o600
    second = start_controller(state)
    try:
        assert len(second.first_lines) == 1, "a restored controller must not make a new admin credential"
        assert second.first_lines[-1].endswith(f"CA pin {parse_preauth_key(key).ca_pin})"), "agents pinned it"
        names = {n["name"] for n in json.loads(second.cli("nodes", "list", "--json").stdout)}
        assert names == {"alpha", "beta"}
    finally:
        second.stop()
