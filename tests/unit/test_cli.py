"""The root `wgmesh` command: every group it lists exists and answers --help; unknown groups are one line."""

from __future__ import annotations

import subprocess
import sys

import pytest

from wgmesh.cli import GROUPS


def wgmesh(*args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run([sys.executable, "-m", "wgmesh", *args], capture_output=True, text=True, timeout=60)


@pytest.mark.parametrize("group", sorted(GROUPS))
def test_every_group_answers_help(group):
    result = wgmesh(group, "--help")
    assert result.returncode == 0, result.stderr
    assert f"wgmesh {group}" in result.stdout
    assert "Traceback" not in result.stderr


def test_usage_lists_every_group():
    result = wgmesh()
    assert result.returncode == 2
    for group in GROUPS:
        assert group in result.stdout


def test_unknown_group_is_one_clear_line():
    result = wgmesh("frobnicate")
    assert result.returncode == 2
    assert "unknown group 'frobnicate'" in result.stderr
    assert "Traceback" not in result.stderr


def test_version():
    assert wgmesh("--version").stdout.startswith("wgmesh ")


def test_the_agent_group_does_not_import_fastapi():
    code = "import sys; from agent import cli; assert 'fastapi' not in sys.modules, 'agent imported fastapi'"
    subprocess.run([sys.executable, "-c", code], check=True, timeout=60)
