"""agent.toml and `wgmesh agent up`'s option layering: flag > WGMESH_* > file > default; bad values and
loose secret files are one line naming where they came from."""

from __future__ import annotations

from pathlib import Path

import pytest

from agent.cli import UsageError, _key_from_file, _layered_up_options, build_parser, main
from agent.config import ConfigError


def layered(tmp_path: Path, toml: str, *argv: str, env: dict[str, str] | None = None):
    path = tmp_path / "agent.toml"
    path.write_text(toml)
    args = build_parser("wgmesh agent").parse_args(["up", "--config", str(path), *argv])
    return _layered_up_options(args, env or {})


def test_the_file_gives_what_no_flag_or_variable_gives(tmp_path):
    got = layered(
        tmp_path,
        'controller = "http://198.18.0.1:8420/"\ntoken_file = "/etc/wgmesh/preauth-key"\n'
        'backend = "userspace"\nlisten_port = 51999\nendpoint = ["198.18.0.2:51999"]\n'
        'state_dir = "/srv/wgmesh"\nprobe_interval = 2\n',
    )
    assert got.controller == "http://198.18.0.1:8420"
    assert got.token_file == Path("/etc/wgmesh/preauth-key")
    assert (got.backend, got.listen_port, got.endpoint) == ("userspace", 51999, ["198.18.0.2:51999"])
    assert (got.state_dir, got.probe_interval) == (Path("/srv/wgmesh"), 2.0)
    assert got.poll_timeout == 30.0 and got.interface is None  # defaults


def test_flags_win_over_the_environment_which_wins_over_the_file(tmp_path):
    toml = 'backend = "userspace"\nlisten_port = 51999\nhostname = "from-file"\n'
    env = {"WGMESH_BACKEND": "fake", "WGMESH_LISTEN_PORT": "52000", "WGMESH_ENDPOINT": "a:1,b:2"}
    got = layered(tmp_path, toml, "--listen-port", "53000", env=env)
    assert (got.backend, got.listen_port, got.hostname) == ("fake", 53000, "from-file")
    assert got.endpoint == ["a:1", "b:2"]


@pytest.mark.parametrize(
    ("toml", "env", "message"),
    [
        ("colour = 1\n", {}, "unknown key 'colour'"),
        ("listen_port = 0\n", {}, "agent.toml: listen_port: port '0': must be 1-65535"),
        ("backend = true\n", {}, "agent.toml: backend: unexpected value True"),
        ("controller = [\n", {}, "is not valid TOML"),
        ("", {"WGMESH_CONTROLLER": "ftp://x"}, "WGMESH_CONTROLLER: controller URL 'ftp://x'"),
    ],
)
def test_a_bad_setting_names_its_source(tmp_path, toml, env, message):
    with pytest.raises((UsageError, ConfigError)) as e:
        layered(tmp_path, toml, env=env)
    assert message in str(e.value)


def test_the_token_file_must_be_private_and_one_line(tmp_path):
    key = tmp_path / "preauth-key"
    key.write_text("wgm_pak_0123456789abcdef\n")
    key.chmod(0o644)
    with pytest.raises(UsageError, match=r"has mode 0644: other users can read it; run `chmod 600"):
        _key_from_file(key)
    key.chmod(0o600)
    assert _key_from_file(key).secret == "wgm_pak_0123456789abcdef"
    with pytest.raises(UsageError, match="does not exist"):
        _key_from_file(tmp_path / "missing")


def test_up_with_a_missing_config_file_is_one_line(capsys, tmp_path):
    code = main(["up", "--config", str(tmp_path / "none.toml")], prog="wgmesh agent")
    err = capsys.readouterr().err
    assert code == 1
    assert err.strip() == f"wgmesh agent up: config file {tmp_path / 'none.toml'} does not exist"
