"""docs/agent.example.toml, the agent's settings file as we document it, names every setting and is read
by `wgmesh agent up --config` as the values it shows."""

from __future__ import annotations

from pathlib import Path

from agent.cli import _layered_up_options, build_parser
from agent.config import FILE_KEYS, read_config

EXAMPLE = Path(__file__).resolve().parents[2] / "docs" / "agent.example.toml"


def test_the_example_names_every_setting():
    text = EXAMPLE.read_text()
    for key in FILE_KEYS:
        assert f"\n{key} =" in text or f"\n# {key} =" in text, key


def test_agent_up_reads_the_example_as_it_shows():
    assert set(read_config(EXAMPLE)) <= FILE_KEYS
    args = build_parser("wgmesh agent").parse_args(["up", "--config", str(EXAMPLE)])
    options = _layered_up_options(args, {})
    assert options.controller == "https://controller.example:8420"
    assert options.token_file == Path("/etc/wgmesh/preauth-key")
    assert options.backend == "auto" and options.interface == "wg0"
    assert options.endpoint == ["203.0.113.7:51820"] and options.listen_port == 51820
    assert options.probe_interval == 10 and options.poll_timeout == 30
