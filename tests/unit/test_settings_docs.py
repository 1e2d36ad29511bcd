"""Every controller setting is documented once (SETTING_DOCS), shown by `serve --help`, and present in
the example file we ship, which parses to the defaults it claims."""

from __future__ import annotations

import dataclasses
import tomllib
from pathlib import Path

from controller.cli import main
from controller.settings import ENV, FILE_KEYS, SETTING_DOCS, load_settings
from controller.topology import LinkPolicy

EXAMPLE = Path(__file__).resolve().parents[2] / "docs" / "controller.example.toml"


def test_every_setting_has_its_line():
    assert set(SETTING_DOCS) == set(ENV) | FILE_KEYS


def test_serve_help_lists_every_setting_and_its_variable(capsys):
    try:
        main(["serve", "--help"])
    except SystemExit as e:
        assert e.code == 0
    out = capsys.readouterr().out
    for name in SETTING_DOCS:
        assert f"  {name}" in out
    for variable in ENV.values():
        assert variable in out


def test_the_example_file_names_every_setting_and_parses_to_the_defaults():
    text = EXAMPLE.read_text()
    data = tomllib.loads(text)
    for name in FILE_KEYS:
        assert f"{name} =" in text or f"[{name}]" in text, name
    settings = load_settings({"config": str(EXAMPLE)}, {})
    assert settings.policy == LinkPolicy()
    assert set(data["routing"]) == {f.name for f in dataclasses.fields(LinkPolicy)}
    # every value the example sets is the default it documents
    assert settings == load_settings({"state_dir": data["state_dir"]}, {})
