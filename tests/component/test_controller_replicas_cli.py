"""`wgmesh controller serve` on PostgreSQL as an operator runs it: replicas started apart share one
database, the admin CLI takes several replicas' URLs and goes on when one is gone, and a database URL
that cannot work stops start-up with one line that names the problem and never the password."""

from __future__ import annotations

import os
import shutil
import ssl
from pathlib import Path

import httpx
import pytest
import sqlalchemy as sa

from controller.sqlstore import SqlStore, engine_url
from lab.postgres import PostgresCluster
from tests.support import Served, enroll_request, free_port, make_host, start_controller
from tests.support import run_wgmesh as run
from wire import api
from wire.preauth import parse_preauth_key


def env_with_db(url: str) -> dict[str, str]:
    return {**os.environ, "WGMESH_DB": url}


def test_two_served_replicas_share_one_database_and_the_cli_fails_over(
    tmp_path: Path, postgres: PostgresCluster
):
    env = env_with_db(postgres.create_database())
    first = start_controller(tmp_path / "a", env)
    # The replicas share the admin credential: the operator gives each the same file.
    (tmp_path / "b").mkdir(mode=0o700)
    shutil.copy2(tmp_path / "a" / "admin-credential", tmp_path / "b" / "admin-credential")
    second = start_controller(tmp_path / "b", env)
    try:
        dead = f"http://127.0.0.1:{free_port()}"
        both = f"{dead},{first.url},{second.url}"
        made = run("controller", "token", "create", "--controller", both, "--state-dir", str(first.state_dir))
        assert made.returncode == 0, made.stderr
        listed = run(
            "controller",
            "token",
            "list",
            "--json",
            "--controller",
            second.url,
            "--state-dir",
            str(second.state_dir),
        )
        assert listed.returncode == 0 and '"id":1' in listed.stdout.replace(" ", "")
        first.stop()
        again = run(
            "controller",
            "token",
            "list",
            "--controller",
            f"{first.url},{second.url}",
            "--state-dir",
            str(second.state_dir),
        )
        assert again.returncode == 0, again.stderr
        gone = run(
            "controller",
            "token",
            "list",
            "--controller",
            f"{dead},{first.url}",
            "--state-dir",
            str(second.state_dir),
        )
        assert (
            gone.returncode == 1
            and len(gone.stderr.strip().splitlines()) == 1
            and "cannot reach" in gone.stderr
        )
    finally:
        first.stop()
        second.stop()


def ca_pin(served: Served) -> str:
    pin = served.first_lines[-1].rpartition("CA pin ")[2].rstrip(")")
    assert len(pin) == 64, served.first_lines
    return pin


def test_replicas_serve_with_one_ca_so_a_key_pinned_to_one_enrolls_through_the_other(
    tmp_path: Path, postgres: PostgresCluster
):
    env = env_with_db(postgres.create_database())
    first = start_controller(tmp_path / "a", env)
    (tmp_path / "b").mkdir(mode=0o700)
    shutil.copy2(tmp_path / "a" / "admin-credential", tmp_path / "b" / "admin-credential")
    second = start_controller(tmp_path / "b", env)  # its own state directory: no CA files in it before
    try:
        assert ca_pin(first) == ca_pin(second)
        made = first.cli("controller", "token", "create")
        assert made.returncode == 0, made.stderr
        key = parse_preauth_key(made.stdout.strip())
        assert key.ca_pin == ca_pin(first)
        # An agent trusts what its key pins: the first replica's CA, which also signed the second's
        # certificate. Its nonce comes from the first replica, its enrollment goes to the second.
        ca = ssl.create_default_context(cafile=str(tmp_path / "a" / "tls" / "ca.crt"))
        with httpx.Client(verify=ca, headers={"Content-Type": "application/json"}) as c:
            nonce = c.post(first.url + api.ENROLL_NONCE).json()["nonce"]
            body = enroll_request(make_host("h1"), key.secret, nonce).model_dump_json()
            enrolled = c.post(second.url + api.ENROLL, content=body)
        assert enrolled.status_code == 200, enrolled.text
    finally:
        first.stop()
        second.stop()


def test_a_state_directory_with_another_ca_is_refused_in_one_line(tmp_path: Path, postgres: PostgresCluster):
    url = postgres.create_database()
    start_controller(tmp_path / "a", env_with_db(url)).stop()  # the database keeps a's CA
    start_controller(tmp_path / "alone").stop()  # a controller of its own, on SQLite, made another CA
    r = run(
        "controller", "serve", "--state-dir", str(tmp_path / "alone"), "--listen", f"127.0.0.1:{free_port()}",
        env=env_with_db(url),
    )  # fmt: skip
    lines = r.stderr.strip().splitlines()
    assert r.returncode == 2 and len(lines) == 1, r.stderr
    assert "is not the CA the database keeps" in lines[0] and postgres.password not in lines[0]


def one_line_refusal(tmp_path: Path, url: str) -> str:
    r = run(
        "controller",
        "serve",
        "--state-dir",
        str(tmp_path),
        "--listen",
        f"127.0.0.1:{free_port()}",
        env=env_with_db(url),
    )
    assert r.returncode == 2 and r.stdout == ""
    lines = r.stderr.strip().splitlines()
    assert len(lines) == 1, r.stderr
    return lines[0]


def test_a_wrong_password_is_named_and_not_shown(tmp_path: Path, postgres: PostgresCluster):
    line = one_line_refusal(tmp_path, postgres.url("postgres", password="Wrong-Pass-123"))
    assert "password authentication failed" in line and "Wrong-Pass-123" not in line
    assert postgres.password not in line


def test_an_unreachable_server_is_named(tmp_path: Path, postgres: PostgresCluster):
    url = postgres.url("postgres").replace(f":{postgres.port}/", f":{free_port()}/")
    line = one_line_refusal(tmp_path, url)
    assert "connection refused" in line.lower() or "failed" in line
    assert postgres.password not in line and "***" in line


def test_a_database_from_a_newer_wgmesh_stops_start_up(tmp_path: Path, postgres: PostgresCluster):
    url = postgres.create_database()
    SqlStore(url).close()
    with sa.create_engine(engine_url(url)).begin() as c:
        c.execute(sa.text("UPDATE alembic_version SET version_num = '0999_future'"))
    line = one_line_refusal(tmp_path, url)
    assert "schema revision 0999_future, newer than this wgmesh" in line and postgres.password not in line


@pytest.mark.parametrize("database", ["no_such_db"])
def test_a_missing_database_is_named(tmp_path: Path, postgres: PostgresCluster, database: str):
    line = one_line_refusal(tmp_path, postgres.url(database))
    assert f'database "{database}" does not exist' in line and postgres.password not in line
