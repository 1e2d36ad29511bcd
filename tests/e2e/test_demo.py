"""`wgmesh lab demo` (what `make demo` runs), as a user sees it: progress, a full ping matrix, the
controller's topology, and nothing left behind."""

from __future__ import annotations

import subprocess
import sys

import pytest

from lab import netns
from lab.layout import LabLayout
from lab.teardown import tear_down

pytestmark = pytest.mark.root
NAME = "e2edemo"


def test_demo_shows_the_mesh_and_removes_it():
    layout = LabLayout(NAME)
    tear_down(layout)
    try:
        done = subprocess.run(
            [sys.executable, "-m", "wgmesh", "lab", "demo", "-n", "3", "--name", NAME],
            capture_output=True,
            text=True,
            timeout=240,
        )
        assert done.returncode == 0, done.stdout + done.stderr
        out = done.stdout
        assert "mesh of 3 hosts complete" in out
        assert "all 6 pairs answer" in out and "FAIL" not in out
        assert "handshakes 3/3 pairs" in done.stderr  # the progress line (one line per change off a terminal)
        routes = [line for line in out.splitlines() if " -> " in line]
        assert len(routes) == 6, out
        assert f"lab {NAME!r} removed" in out
        assert not [ns for ns in netns.list_namespaces() if layout.owns_namespace(ns)]
        assert not layout.dir.exists()
    finally:
        tear_down(layout)
