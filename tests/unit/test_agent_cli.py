"""`wgmesh agent`: bad input is one clear line and a non-zero exit; status reads the state dir."""

from __future__ import annotations

import json
import os
import time
from datetime import UTC, datetime
from ipaddress import ip_address, ip_network

import pytest

from agent.cli import main
from agent.state import AgentState, StatePaths
from agent.status import AgentStatus, PeerView
from keys.types import WireGuardPrivateKey


def run(capsys, *argv):
    code = main(list(argv), prog="wgmesh agent")
    out, err = capsys.readouterr()
    return code, out, err


def run_exit(capsys, *argv):
    """argparse exits for usage errors; return (code, stderr) either way."""
    try:
        code = main(list(argv), prog="wgmesh agent")
    except SystemExit as e:
        code = e.code
    _, err = capsys.readouterr()
    return code, err


@pytest.mark.parametrize(
    ("args", "message"),
    [
        (["up", "--controller", "ftp://x"], "controller URL 'ftp://x': expected http(s)://HOST[:PORT]"),
        (["up", "--controller", "http://x:99999"], "bad port"),
        (["up", "--token", "wgm_pak_0123456789"], "unrecognized arguments: --token"),
        (["up", "--interface", "a-very-long-interface-name"], "interface name"),
        (["up", "--listen-port", "0"], "port '0': must be 1-65535"),
        (["up", "--endpoint", "198.18.0.2"], "expected 'host:port'"),
        (["up", "--hostname", "bad host"], "hostname 'bad host'"),
        (["up", "--probe-interval", "0"], "between 0.1 and 3600"),
        (["up", "--backend", "magic"], "invalid choice: 'magic'"),
        (["up", "--metrics-listen", "somewhere:9586"], "'somewhere' is not an IP address of this host"),
        (["up", "--metrics-listen", "127.0.0.1:99999"], "metrics address '127.0.0.1:99999': port must be"),
        (["status", "--wat"], "unrecognized arguments: --wat"),
        ([], "the following arguments are required: COMMAND"),
    ],
)
def test_bad_arguments_are_one_line_and_exit_2(capsys, args, message):
    code, err = run_exit(capsys, *args)
    assert code == 2
    assert message in err
    assert len(err.strip().splitlines()) == 1
    assert "Traceback" not in err


def test_up_without_enrollment_or_token_says_what_to_give(capsys, tmp_path):
    code, _, err = run(capsys, "up", "--backend", "fake", "--state-dir", str(tmp_path / "s"))
    assert code == 2  # a usage error, as argparse's
    assert err.strip().splitlines() == [
        f"wgmesh agent up: this host has not enrolled yet ({tmp_path / 's' / 'node.json'} is missing): "
        "give --controller URL and --token-file FILE (the pre-auth key)"
    ]


def key_file(tmp_path, text="wgm_pak_0123456789\n"):
    path = tmp_path / "preauth-key"
    path.write_text(text)
    path.chmod(0o600)
    return str(path)


@pytest.mark.parametrize(
    ("text", "message"),
    [
        ("", " must hold exactly one line"),
        ("a\nb\n", " must hold exactly one line"),
        ("short\n", ": expected wgm_pak_..."),
        ("wgm_pak_0123456789.abc\n", ": the part after '.' must be 64 hex digits"),
    ],
)
def test_a_bad_token_file_is_one_line_and_names_the_file(capsys, tmp_path, text, message):
    path = key_file(tmp_path, text)
    code, _, err = run(
        capsys, "up", "--backend", "fake", "--state-dir", str(tmp_path / "s"),
        "--controller", "https://127.0.0.1:9", "--token-file", path,
    )  # fmt: skip
    assert code == 2  # a usage error, as argparse's
    lines = err.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith(f"wgmesh agent up: pre-auth key file {path}{message}")
    assert not (tmp_path / "s" / "node.json").exists()


def test_a_missing_token_file_is_one_line(capsys, tmp_path):
    code, _, err = run(capsys, "up", "--backend", "fake", "--token-file", str(tmp_path / "nope"))
    assert code == 2  # a usage error, as argparse's
    assert err.strip() == f"wgmesh agent up: pre-auth key file {tmp_path / 'nope'} does not exist"


def test_the_token_file_may_be_standard_input(capsys, tmp_path, monkeypatch):
    import io

    monkeypatch.setattr("sys.stdin", io.StringIO("wgm_pak_0123456789\n"))
    code, _, err = run(
        capsys, "up", "--backend", "fake", "--state-dir", str(tmp_path / "s"),
        "--controller", "https://127.0.0.1:9", "--token-file", "-", "--hostname", "h1",
    )  # fmt: skip
    assert code == 1
    assert "Connection refused" in err and "wgm_pak_0123456789" not in err


def test_up_with_an_unreachable_controller_at_enrollment_is_one_line(capsys, tmp_path):
    # port 9 on loopback: nothing listens, the connection is refused at once
    code, _, err = run(
        capsys,
        "up",
        "--backend",
        "fake",
        "--state-dir",
        str(tmp_path / "s"),
        "--controller",
        "https://127.0.0.1:9",
        "--token-file",
        key_file(tmp_path),
        "--hostname",
        "h1",
    )
    assert code == 1
    lines = err.strip().splitlines()
    assert lines[-1] == (
        "wgmesh agent up: enrollment with https://127.0.0.1:9 failed: "
        "cannot reach controller https://127.0.0.1:9: Connection refused"
    )
    assert "Traceback" not in err
    assert "wgm_pak_0123456789" not in err
    # keys were made on the host and stay there for the next try; nothing claims enrollment
    paths = StatePaths(tmp_path / "s")
    assert paths.wireguard_key.exists() and paths.identity_key.exists()
    assert not paths.node.exists()
    # and `agent status` says so, instead of only "not enrolled"
    code, _, err = run(capsys, "status", "--state-dir", str(tmp_path / "s"))
    assert code == 1
    assert err.strip() == (
        f"wgmesh agent status: this host has not enrolled yet; its keys are in {tmp_path / 's'} "
        "(made by an `agent up` that did not enroll: the next `agent up` with a pre-auth key uses them)"
    )


def test_status_before_any_run_is_one_line(capsys, tmp_path):
    code, _, err = run(capsys, "status", "--state-dir", str(tmp_path))
    assert code == 1
    assert (
        err.strip()
        == f"wgmesh agent status: {tmp_path / 'node.json'} does not exist: this host has not enrolled yet"
    )


def write_state(tmp_path, pid):
    AgentState(
        node_id=1,
        name="alpha",
        tunnel_address=ip_address("10.99.0.1"),
        mesh_cidr=ip_network("10.99.0.0/16"),
        controller_url="http://198.18.0.1:8080",
        interface="wg0",
        backend="fake",
        listen_port=51820,
        enrolled_at=datetime(2026, 11, 24, tzinfo=UTC),
    ).save(tmp_path)
    now = time.time()
    AgentStatus(
        node_id=1,
        name="alpha",
        tunnel_address=ip_address("10.99.0.1"),
        mesh_cidr=ip_network("10.99.0.0/16"),
        interface="wg0",
        backend="fake",
        controller_url="http://198.18.0.1:8080",
        controller="disconnected",
        controller_since=now - 30,
        serial=3,
        netmap_source="cache",
        pid=pid,
        updated_at=now,
        peers=[
            PeerView(
                node_id=2,
                name="beta",
                tunnel_address=ip_address("10.99.0.2"),
                wg_public_key=WireGuardPrivateKey.generate().public_key().base64(),
                latest_handshake=now - 12,
                route="relay",
                via="gamma",
            )
        ],
    ).save(StatePaths(tmp_path).status)


def test_status_table_from_the_state_dir(capsys, tmp_path):
    write_state(tmp_path, os.getpid())
    code, out, _ = run(capsys, "status", "--state-dir", str(tmp_path))
    assert code == 0
    lines = out.splitlines()
    assert "controller http://198.18.0.1:8080: disconnected since 30s; map serial 3 (from cache)" in lines[0]
    row = lines[-1].split()
    assert row[0] == "beta" and row[-2:] == ["via", "gamma"]
    assert "12s ago" in lines[-1] or "13s ago" in lines[-1]


def test_status_says_when_the_agent_is_gone(capsys, tmp_path):
    write_state(tmp_path, pid=2**22 + 12345)  # above pid_max: no such process
    code, out, _ = run(capsys, "status", "--state-dir", str(tmp_path), "--json")
    assert code == 0
    data = json.loads(out)
    assert data["running"] is False
    assert data["peers"][0]["via"] == "gamma"


def test_up_with_a_corrupt_node_state_is_one_line(capsys, tmp_path):
    (tmp_path / "node.json").write_text("{half")
    code, _, err = run(capsys, "up", "--backend", "fake", "--state-dir", str(tmp_path))
    assert code == 1
    assert (
        err.strip()
        == f"wgmesh agent up: {tmp_path / 'node.json'}: not a valid node state: not JSON (Invalid JSON: key must be a string at line 1 column 2)"
    )


def test_up_with_a_state_dir_that_is_a_file_is_one_line(capsys, tmp_path):
    not_a_dir = tmp_path / "file"
    not_a_dir.write_text("x")
    code, _, err = run(
        capsys,
        "up",
        "--backend",
        "fake",
        "--state-dir",
        str(not_a_dir),
        "--controller",
        "https://127.0.0.1:9",
        "--token-file",
        key_file(tmp_path),
    )
    assert code == 1
    assert err.strip() == f"wgmesh agent up: cannot use state directory {not_a_dir}: File exists"


def test_the_state_dir_comes_from_wgmesh_state_dir_when_not_given(capsys, tmp_path, monkeypatch):
    """`wgmesh lab exec h1 -- wgmesh agent status` works: the lab names the host's state dir this way."""
    write_state(tmp_path, os.getpid())
    monkeypatch.setenv("WGMESH_STATE_DIR", str(tmp_path))
    code, out, _ = run(capsys, "status")
    assert code == 0
    assert out.splitlines()[-1].split()[0] == "beta"
    other = tmp_path / "other"
    code, _, err = run(capsys, "status", "--state-dir", str(other))
    assert code == 1 and str(other / "node.json") in err


def test_a_plain_http_controller_is_refused_unless_insecure(capsys, tmp_path):
    args = ["up", "--backend", "fake", "--state-dir", str(tmp_path / "s"), "--hostname", "h1"]
    args += ["--controller", "http://127.0.0.1:9", "--token-file", key_file(tmp_path)]
    code, _, err = run(capsys, *args)
    assert code == 2  # a usage error, as argparse's
    assert err.strip() == (
        "wgmesh agent up: controller URL http://127.0.0.1:9 is plain http: the pre-auth key and the node "
        "credential would cross the network in clear; use https:// (or pass --insecure)"
    )
    assert not (tmp_path / "s").exists()  # refused before anything was made
    code, _, err = run(capsys, *args, "--insecure")
    assert code == 1 and "Connection refused" in err


def test_a_metrics_address_the_host_lacks_stops_up_with_one_line_and_writes_nothing(capsys, tmp_path):
    state = tmp_path / "s"
    code, _, err = run(
        capsys, "up", "--backend", "fake", "--state-dir", str(state), "--controller", "https://198.18.0.1:8420",
        "--token-file", key_file(tmp_path), "--metrics-listen", "192.0.2.1:9586",
    )  # fmt: skip
    assert code == 1
    assert err.strip().splitlines() == [
        "wgmesh agent up: cannot listen for metrics on 192.0.2.1:9586: Cannot assign requested address"
    ]
    assert not state.exists()


def test_a_bad_metrics_address_in_the_environment_names_the_variable(capsys, tmp_path, monkeypatch):
    monkeypatch.setenv("WGMESH_METRICS_LISTEN", "127.0.0.1:http")
    code, _, err = run(capsys, "up", "--backend", "fake", "--state-dir", str(tmp_path / "s"))
    assert code == 2  # a usage error, as argparse's
    assert err.strip().splitlines() == [
        "wgmesh agent up: WGMESH_METRICS_LISTEN: metrics address '127.0.0.1:http': port must be 1-65535"
    ]
