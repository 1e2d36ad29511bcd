"""`controller serve --metrics-listen HOST:PORT`: a second, plain-HTTP listener serving GET /metrics
without a credential for a Prometheus server, next to the API; and one clear line for an address the
controller cannot use."""

from __future__ import annotations

import os
from pathlib import Path

import httpx
import pytest

from tests.support import free_port, start_controller
from tests.support import run_wgmesh as run


def test_the_metrics_listener_answers_without_a_credential(tmp_path: Path):
    port = free_port()
    served = start_controller(
        tmp_path / "state", env={**os.environ, "WGMESH_METRICS_LISTEN": f"127.0.0.1:{port}"}
    )
    try:
        assert f"metrics without credential on http://127.0.0.1:{port}/metrics" in served.first_lines
        key = served.cli("controller", "token", "create").stdout.strip()
        assert served.enroll("metered", key).status_code == 200
        r = httpx.get(f"http://127.0.0.1:{port}/metrics", timeout=10)
        assert r.status_code == 200 and r.headers["content-type"].startswith("text/plain")
        lines = r.text.splitlines()
        assert "wgmesh_nodes 1.0" in lines and "wgmesh_enrollments_total 1.0" in lines
        assert httpx.get(f"http://127.0.0.1:{port}/v1/nodes", timeout=10).status_code == 404
        # the API listener's /metrics still needs the admin credential
        with served.http() as c:
            assert c.get("/metrics").status_code == 401
    finally:
        served.stop()


@pytest.mark.parametrize(
    ("address", "message"),
    [
        ("nowhere:9585", "'nowhere' is not an IP address of this host"),
        ("127.0.0.1:0", "port must be 1-65535"),
        ("127.0.0.1", "expected HOST:PORT"),
        ("192.0.2.1:9585", "cannot listen for metrics on 192.0.2.1:9585: Cannot assign requested address"),
    ],
)
def test_an_unusable_metrics_address_is_one_line(tmp_path: Path, address: str, message: str):
    done = run(
        "controller", "serve", "--state-dir", str(tmp_path / "s"), "--listen", f"127.0.0.1:{free_port()}",
        "--metrics-listen", address,
    )  # fmt: skip
    assert done.returncode == 2 and done.stdout == ""
    lines = done.stderr.strip().splitlines()
    assert len(lines) == 1 and message in lines[0], done.stderr
    assert lines[0].startswith("wgmesh controller serve: ")


def test_a_port_already_taken_is_one_line(tmp_path: Path):
    port = free_port()
    served = start_controller(
        tmp_path / "first", env={**os.environ, "WGMESH_METRICS_LISTEN": f"127.0.0.1:{port}"}
    )
    try:
        second = run(
            "controller", "serve", "--state-dir", str(tmp_path / "second"),
            "--listen", f"127.0.0.1:{free_port()}", "--metrics-listen", f"127.0.0.1:{port}",
        )  # fmt: skip
        assert second.returncode == 2
        assert f"cannot listen for metrics on 127.0.0.1:{port}: Address already in use" in second.stderr
    finally:
        served.stop()
