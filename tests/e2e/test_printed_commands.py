"""Every command the README and `make demo KEEP=1` tell a person to type works as printed, from the
repository root, with the program the quick start installs (`.venv/bin/wgmesh`, or whatever runs these
tests: the `wgmesh` next to this interpreter).

The lab has the default name, as in the README; the test removes it whatever happens.
"""

from __future__ import annotations

import os
import re
import shlex
import subprocess
import threading
from pathlib import Path

import pytest

from lab.layout import LabLayout
from lab.teardown import tear_down
from tests.support import WGMESH_PROGRAM, wait_until

pytestmark = [pytest.mark.root, pytest.mark.scenario]

REPO = Path(__file__).resolve().parents[2]
README_BLOCK = re.compile(r"<!-- commands-after-demo:.*?-->\n```sh\n(.*?)```", re.S)


def spelled(program: Path) -> str:
    """How the README spells the program: `.venv/bin/wgmesh` is this checkout's; another environment
    running the tests (its own venv) stands in for it."""
    try:
        return str(program.relative_to(REPO))
    except ValueError:
        return str(program)


def readme_commands() -> list[str]:
    block = README_BLOCK.search((REPO / "README.md").read_text())
    assert block, "README.md lost its commands-after-demo block"
    lines = [line.split("  #", 1)[0].strip() for line in block.group(1).splitlines()]
    return [line for line in lines if line]


def as_run_here(command: str) -> str:
    """The README's `.venv/bin/wgmesh` replaced by the program of this environment (the same thing in a
    checkout whose tests run from its own .venv)."""
    assert command.startswith(".venv/bin/wgmesh "), command
    return shlex.quote(spelled(WGMESH_PROGRAM)) + command[len(".venv/bin/wgmesh") :]


def shell(command: str, timeout: float = 60) -> subprocess.CompletedProcess[str]:
    env = {k: v for k, v in os.environ.items() if k != "VIRTUAL_ENV"}
    # A normal shell: no venv on PATH, so a bare `wgmesh` outside the lab is not found.
    env["PATH"] = "/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin"
    return subprocess.run(
        ["bash", "-c", command], cwd=REPO, env=env, capture_output=True, text=True, timeout=timeout
    )


def collect_lines(process: subprocess.Popen[str], lines: list[str]) -> None:
    """Append the process's stdout lines to `lines` from a thread as they come (reads never block)."""

    def read() -> None:
        assert process.stdout is not None
        for line in process.stdout:
            lines.append(line)

    threading.Thread(target=read, daemon=True).start()


@pytest.fixture(scope="module")
def demo_kept():
    layout = LabLayout("lab")
    tear_down(layout)
    try:
        done = shell(f"{shlex.quote(spelled(WGMESH_PROGRAM))} lab demo -n 3 --keep", timeout=300)
        assert done.returncode == 0, done.stdout + done.stderr
        yield done.stdout
    finally:
        tear_down(layout)


def test_the_demo_hints_run_as_printed(demo_kept: str):
    hints = demo_kept.split("Look around:\n", 1)[1].splitlines()
    hints = [h.strip() for h in hints if h.startswith("  ")]
    assert hints and hints[-1].endswith("lab down")
    for hint in hints[:-1]:  # down last, in the README test
        assert hint.startswith(spelled(WGMESH_PROGRAM) + " lab "), hint
        done = shell(hint)
        assert done.returncode == 0, f"{hint!r} failed:\n{done.stdout}{done.stderr}"
        assert "command not found" not in done.stderr


def test_the_readme_commands_run_as_printed(demo_kept: str):
    commands = readme_commands()
    listener: subprocess.Popen[str] | None = None
    lines: list[str] = []
    try:
        for command in commands:
            here = as_run_here(command)
            if command.endswith("p2p listen"):
                listener = subprocess.Popen(
                    ["bash", "-c", f"exec {here}"], cwd=REPO, stdout=subprocess.PIPE, text=True
                )
                collect_lines(listener, lines)
                # the listener announces itself before the sender runs, as a person would wait for it
                wait_until("the listener to start", lambda: any("listening on port" in x for x in lines), 30)
                continue
            done = shell(here, timeout=120)
            assert done.returncode == 0, f"{command!r} failed:\n{done.stdout}{done.stderr}"
            if " p2p send " in command:
                assert listener is not None
                wait_until(
                    "the message at h1's listener",
                    lambda: any("greeting" in x and '"hello":"h1"' in x for x in lines),
                    30,
                    show=lambda: "".join(lines),
                )
            if command.endswith("lab admin -- nodes list"):
                assert {"h1", "h2", "h3"} <= set(done.stdout.split())
            if command.endswith("lab down"):
                assert "lab 'lab' removed" in done.stdout
    finally:
        if listener is not None:
            listener.terminate()
            listener.wait(10)
