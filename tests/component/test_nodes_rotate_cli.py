"""`wgmesh nodes rotate` as an operator runs it against a real controller process: one-line refusals
that change nothing, `--no-wait` showing the rotation asked, key age and rotation in `nodes list` and
`nodes show`. (Rotations that finish, and `--all`'s table, run against real agents in tests/e2e.)"""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

import pytest

from tests.support import Served, start_controller


@pytest.fixture
def served_two(tmp_path: Path) -> Iterator[Served]:
    s = start_controller(tmp_path / "state")
    try:
        key = s.cli("controller", "token", "create", "--reusable").stdout.strip()
        for name in ("rot-a", "rot-b"):
            r = s.enroll(name, key)
            assert r.status_code == 200, r.text
        yield s
    finally:
        s.stop()


def test_rotate_refusals_and_progress_columns(served_two: Served) -> None:
    s = served_two
    listed = s.cli("nodes", "list")
    assert (
        listed.stdout.splitlines()[0].split()[-3:] == ["SERIAL", "KEY", "AGE"] or "KEY AGE" in listed.stdout
    )
    assert "ROTATION" in listed.stdout.splitlines()[0] and " idle" in listed.stdout

    unknown = s.cli("nodes", "rotate", "99")
    assert unknown.returncode == 1
    assert unknown.stderr == "wgmesh nodes rotate: controller refused (404): no node 99\n"

    usage = s.cli("nodes", "rotate")
    assert usage.returncode == 2 and "give a node id or --all" in usage.stderr

    asked = s.cli("nodes", "rotate", "1", "--no-wait")
    assert asked.returncode == 0, asked.stderr
    assert asked.stdout.splitlines()[0].split() == ["ID", "NAME", "ROTATION", "QUEUE", "KEY", "AGE"]
    assert "requested" in asked.stdout

    again = s.cli("nodes", "rotate", "1", "--no-wait")
    assert again.returncode == 1 and again.stderr.count("\n") == 1 and "already rotating" in again.stderr
    everything = s.cli("nodes", "rotate", "--all", "--no-wait")
    assert everything.returncode == 1 and "rotating" in everything.stderr

    shown = s.cli("nodes", "show", "1")
    assert "key rotation:" in shown.stdout and "requested" in shown.stdout and "key created:" in shown.stdout
