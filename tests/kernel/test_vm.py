"""The kernel tier: ONE boot of Debian's kernel (module `wireguard`) in qemu, running inside it every
test marked `kernel_tier` with `--wg-backend kernel` (the namespace tier and the lab on the kernel
backend) and the kernel figures of `bench.backend`. A failure inside the VM fails this test and shows
the VM's output. See tests/kernel/README.md for how to add a test.
"""

from __future__ import annotations

import os
import re
import shlex
import shutil
import signal
import subprocess
import sys
import tempfile
import time
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import pytest

from tests.kernel import vm

pytestmark = [pytest.mark.root, pytest.mark.timeout(1500)]
# The selection run inside the VM: every test marked kernel_tier, on the kernel backend. A developer may
# narrow it with WGMESH_KERNEL_TESTS (paths or node ids, space separated), e.g. while adding a test.
GUEST_PYTEST = [
    "-m",
    "kernel_tier",
    "--wg-backend",
    "kernel",
    *(os.environ.get("WGMESH_KERNEL_TESTS", "").split() or ["tests/netns", "tests/e2e"]),
]
VM_TIMEOUT_S = 1400
SHOWN_LINES = 200


@dataclass(frozen=True)
class Boot:
    code: int  # vng's exit status: the guest command's
    output: str  # everything the VM printed
    results: Path  # the guest's writable results directory (status, junit.xml, bench.txt)


@pytest.fixture(scope="module")
def booted() -> Iterator[Boot]:
    reason = vm.missing()
    if reason is not None:
        pytest.skip(reason)
    # Not under pytest's basetemp: another pytest run on the machine may prune it while the VM writes.
    work = Path(tempfile.mkdtemp(prefix="wgmesh-kernel-tier-"))
    results = work / "results"
    results.mkdir()
    started = time.monotonic()
    kernel = vm.kernel()
    trees = vm.python_trees()
    vm.build_image(work / "python.img", trees)
    python = str(Path(sys.executable))
    pytest_argv = [
        python,
        "-m",
        "pytest",
        "-p",
        "no:cacheprovider",
        "-p",
        "tests.kernel.instafail",
        "-q",
        "-ra",
        "-o",
        "timeout=900",  # per test, fixtures included: the lab starts slowly under emulation
        f"--junitxml={results}/junit.xml",
    ]
    bench_argv = [python, "-m", "bench.backend", "--backend", "kernel", "--rounds", "1"]
    # The commands go in a file: vng passes --exec through a shell of its own, quoted in single quotes.
    inside = results / "inside.sh"
    # pytest.log grows as the tests run (a person can follow it); it is shown once they end.
    inside.write_text(
        f"{shlex.join(pytest_argv + GUEST_PYTEST)} > {results}/pytest.log 2>&1\n"
        f"status=$?; cat {results}/pytest.log; [ $status = 0 ] || exit $status\n"
        f"{shlex.join(bench_argv)} > {results}/bench.txt\n"
    )
    command = [
        "sh",
        str(vm.GUEST_SCRIPT),
        str(results),
        ":".join(map(str, trees)),
        str(vm.ROOT),
        "sh",
        str(inside),
    ]
    env = {**os.environ, "PATH": f"{Path(python).parent}:{os.environ.get('PATH', '')}"}
    prepared = time.monotonic()
    # vng runs qemu through a shell and virtme-run: in a session of its own, so that a timeout ends them
    # all (killing vng alone leaves qemu running on, eating a core).
    vng = subprocess.Popen(
        vm.vng_argv(kernel, work / "python.img", results, command),
        stdin=subprocess.DEVNULL,
        stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT,
        text=True,
        env=env,
        start_new_session=True,
    )
    try:
        output, _ = vng.communicate(timeout=VM_TIMEOUT_S)
        code = vng.returncode
    except subprocess.TimeoutExpired:  # what the guest's tests printed so far is kept
        os.killpg(vng.pid, signal.SIGKILL)
        vng.communicate(timeout=30)
        log = results / "pytest.log"
        shown = log.read_text(errors="replace") if log.exists() else "(the guest wrote no pytest.log)"
        code, output = -9, f"the VM ran out of its {VM_TIMEOUT_S} s and was killed; its pytest.log:\n{shown}"
    finally:
        if vng.poll() is None:  # interrupted (^C, pytest's timeout): never leave a VM behind
            os.killpg(vng.pid, signal.SIGKILL)
    (work / "python.img").unlink()
    print(f"kernel tier: prepared in {prepared - started:.0f} s, VM ran {time.monotonic() - prepared:.0f} s")
    yield Boot(code, output, results)
    shutil.rmtree(work, ignore_errors=True)


def test_the_kernel_tier_passes_inside_the_vm(booted: Boot) -> None:
    code, output, results = booted.code, booted.output, booted.results
    shown = "\n".join(output.splitlines()[-SHOWN_LINES:])
    status = results / "status"
    assert status.exists(), f"the VM never finished its tests (vng exit {code}); its output:\n{shown}"
    assert code == 0 and status.read_text().strip() == "0", f"tests failed inside the VM:\n{shown}"
    assert (results / "junit.xml").exists(), shown
    junit = (results / "junit.xml").read_text()
    counts = {k: int(v) for k, v in re.findall(r'(tests|skipped)="(\d+)"', junit)[:2]}
    assert counts.get("tests", 0) > 0, f"the VM ran no test:\n{shown}"
    assert counts.get("skipped", 0) == 0, f"tests skipped inside the VM (none may):\n{shown}"
    print(shown)


def test_the_kernel_backend_figures_beside_wg_setconf(booted: Boot) -> None:
    """bench.backend on the kernel module, measured in the same VM (figures, not a timing goal)."""
    bench = booted.results / "bench.txt"
    assert bench.exists(), "the VM did not run bench.backend (its tests failed first?)"
    text = bench.read_text()
    result = [line for line in text.splitlines() if line.startswith("RESULT name=backend_kernel ")]
    assert result and "skipped" not in result[0], text
    print(text)
