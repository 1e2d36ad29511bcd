"""deploy/container/build.sh builds the one image for either role from the cached mmdebstrap root
filesystem plus this checkout's wheel, imported with podman, and the controller in it answers
/v1/health. Where podman cannot run containers on this machine, the test records podman's exact error
(tests/machines figures) and runs the image's root filesystem with systemd-nspawn instead."""

from __future__ import annotations

import json
import shutil
import subprocess

import pytest

from tests.machines.mesh import Mesh
from tests.machines.nspawn import REPO, run
from tests.support import wait_until

NETNS = "wgm-img"
TAG = "localhost/wgmesh-test:machines"
SERVE = ["controller", "serve", "--listen", "0.0.0.0:8420", "--state-dir", "/var/lib/wgmesh/controller"]


HEALTH = """
import ssl, sys, urllib.request
context = ssl._create_unverified_context()  # the controller's own CA: only whether it answers matters here
for scheme in ("https", "http"):
    try:
        print(urllib.request.urlopen(scheme + "://127.0.0.1:8420/v1/health", timeout=2, context=context).read().decode())
        sys.exit(0)
    except Exception:
        pass
sys.exit(1)
"""


def health() -> dict | None:
    """The controller's /v1/health answer over https (its own CA) or http, None while it does not answer."""
    result = run("ip", "netns", "exec", NETNS, "python3", "-c", HEALTH, check=False, timeout=20)
    return json.loads(result.stdout) if result.returncode == 0 else None


@pytest.fixture
def netns():
    run("ip", "netns", "add", NETNS)
    run("ip", "-n", NETNS, "link", "set", "lo", "up")
    try:
        yield NETNS
    finally:
        run("ip", "netns", "del", NETNS, check=False)


def test_the_image_builds_and_its_controller_answers_health(mesh: Mesh, netns: str):
    root = mesh.fleet.run_dir / "image-root"
    podman = shutil.which("podman")
    build = [str(REPO / "deploy" / "container" / "build.sh"), str(mesh.wheel), "--wheelhouse", str(mesh.wheelhouse),
             "--rootfs", str(mesh.fleet.base), "--output", str(root), "--tag", TAG]  # fmt: skip
    if podman is None:
        build.append("--no-import")
    out = run(*build, timeout=600)
    assert "image root filesystem ready" in out.stdout, out.stdout + out.stderr
    process: subprocess.Popen[bytes] | None = None
    try:
        if podman is not None:
            assert run(podman, "image", "exists", TAG, check=False).returncode == 0, out.stdout + out.stderr
            process = subprocess.Popen(
                [podman, "run", "--rm", f"--network=ns:/run/netns/{NETNS}", TAG, *SERVE],
                stdout=subprocess.PIPE, stderr=subprocess.PIPE,
            )  # fmt: skip
            answer = wait_until(
                "the controller in podman",
                lambda: ("exited" if process.poll() is not None else None) or health(),
                90,
            )
            if answer != "exited":
                mesh.record("container", "podman run: the controller in the image answers /v1/health")
                assert answer["status"] == "ok"
                return
            error = (
                process.stderr.read().decode(errors="replace").strip().splitlines() if process.stderr else []
            )
            mesh.record("container", f"podman run failed here: {error[-1] if error else process.returncode}; "
                        "ran the image root filesystem with systemd-nspawn instead")  # fmt: skip
        process = subprocess.Popen(
            ["systemd-nspawn", "--quiet", f"--directory={root}", "--register=no", "--keep-unit",
             f"--network-namespace-path=/run/netns/{NETNS}", "/opt/wgmesh/bin/wgmesh", *SERVE],
            stdin=subprocess.DEVNULL, stdout=subprocess.PIPE, stderr=subprocess.STDOUT,
        )  # fmt: skip
        nspawned = process
        answer = wait_until("the controller in the image under systemd-nspawn",
                            lambda: ("exited" if nspawned.poll() is not None else None) or health(), 90)  # fmt: skip
        assert answer != "exited", nspawned.stdout.read().decode() if nspawned.stdout else ""
        assert answer["status"] == "ok"
    finally:
        if process is not None and process.poll() is None:
            process.terminate()
            try:
                process.wait(30)
            except subprocess.TimeoutExpired:
                process.kill()
                process.wait(10)
        if podman is not None:
            run(podman, "rmi", "--force", TAG, check=False)
