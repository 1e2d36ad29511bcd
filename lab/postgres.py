"""A private PostgreSQL cluster in a directory of our own: initdb, pg_ctl start/stop, databases.

For the test tiers, the benchmarks and the lab's replicated controllers; nothing here touches a
system-wide PostgreSQL service. Rules:
- The server runs as an unprivileged user (root cannot run postgres): the caller's own user, or, as
  root, the `postgres` account Debian's package creates (else `nobody`); the directory is theirs.
- It listens on one loopback TCP port chosen at run time and on a Unix socket inside the directory;
  the lab's replicated controllers put it inside the lab's underlay namespace instead (`netns`,
  `host`, `port`), where only the lab reaches it.
- The superuser has a random password (scram-sha-256 over TCP), so URLs carry a real secret and code
  that must never show it can be checked; local socket connections are trusted.
- `stop()` ends the server by its pid file through pg_ctl (fast mode) and removes the directory.
"""

from __future__ import annotations

import contextlib
import glob
import os
import pwd
import secrets
import shutil
import socket
import subprocess
import tempfile
from pathlib import Path

SUPERUSER = "wgq"


class PostgresMissing(Exception):
    """No PostgreSQL server binaries on this machine; the message says how to get them."""


def find_bindir() -> Path | None:
    """The newest /usr/lib/postgresql/N/bin with initdb (Debian's layout), else pg_ctl on PATH."""
    found = sorted(glob.glob("/usr/lib/postgresql/*/bin/initdb"), key=lambda p: int(p.split("/")[4]))
    if found:
        return Path(found[-1]).parent
    on_path = shutil.which("initdb")
    return Path(on_path).parent if on_path else None


def _server_user() -> pwd.struct_passwd:
    if os.geteuid() != 0:
        return pwd.getpwuid(os.geteuid())
    for name in ("postgres", "nobody"):
        with contextlib.suppress(KeyError):
            return pwd.getpwnam(name)
    raise PostgresMissing("running as root and there is no 'postgres' or 'nobody' user to run the server")


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


class PostgresCluster:
    def __init__(
        self,
        prefix: str = "wgq-pg-",
        *,
        host: str = "127.0.0.1",
        port: int | None = None,
        netns: str | None = None,
        clients: str | None = None,
    ) -> None:
        """`clients`: a network (CIDR) whose addresses may log in over TCP too (default: loopback)."""
        bindir = find_bindir()
        if bindir is None:
            raise PostgresMissing(
                "PostgreSQL server binaries not found: `make test` installs them (apt: postgresql)"
            )
        self.bindir = bindir
        self.user = _server_user()
        self.dir = Path(tempfile.mkdtemp(prefix=prefix))
        self.data = self.dir / "data"
        self.host = host
        self.port = port or free_port()
        self.netns = netns
        self.clients = clients
        self.password = secrets.token_urlsafe(18)
        self._started = False
        self._databases = 0

    def _run(self, *argv: str, input_text: str | None = None, in_netns: bool = False) -> str:
        kwargs: dict[str, object] = {}
        command = [str(self.bindir / argv[0]), *argv[1:]]
        if in_netns and self.netns:
            # Entering a namespace takes root; the server then runs as its own user there.
            ids = [f"--reuid={self.user.pw_uid}", f"--regid={self.user.pw_gid}", "--clear-groups"]
            command = ["ip", "netns", "exec", self.netns, "setpriv", *ids, *command]
        elif os.geteuid() == 0:
            kwargs.update(user=self.user.pw_uid, group=self.user.pw_gid, extra_groups=[])
        env = {"PATH": "/usr/sbin:/usr/bin:/sbin:/bin", "LC_ALL": "C", "HOME": str(self.dir)}
        done = subprocess.run(
            command,
            input=input_text,
            capture_output=True,
            text=True,
            env=env,
            cwd=self.dir,
            timeout=120,
            **kwargs,  # type: ignore[call-overload]
        )
        if done.returncode != 0:
            tail = (done.stderr or done.stdout).strip().splitlines()[-3:]
            raise RuntimeError(f"{argv[0]} failed ({done.returncode}): {' | '.join(tail)}")
        return str(done.stdout)

    def start(self) -> PostgresCluster:
        os.chown(self.dir, self.user.pw_uid, self.user.pw_gid)
        self.dir.chmod(0o700)
        pwfile = self.dir / "pw"
        pwfile.write_text(self.password + "\n")
        os.chown(pwfile, self.user.pw_uid, self.user.pw_gid)
        pwfile.chmod(0o600)
        self._run(
            "initdb",
            "-D",
            str(self.data),
            "-U",
            SUPERUSER,
            f"--pwfile={pwfile}",
            "--auth-local=trust",
            "--auth-host=scram-sha-256",
            "--encoding=UTF8",
            "--no-sync",
        )
        pwfile.unlink()
        if self.clients:
            with (self.data / "pg_hba.conf").open("a") as hba:
                hba.write(f"host all all {self.clients} scram-sha-256\n")
        options = (
            f"-c listen_addresses={self.host} -c port={self.port} -c unix_socket_directories={self.dir} "
            "-c fsync=off -c synchronous_commit=off -c full_page_writes=off -c max_connections=200 "
            "-c shared_buffers=32MB"
        )
        self._run(
            "pg_ctl", "-D", str(self.data), "-l", str(self.dir / "server.log"), "-o", options, "-w", "start",
            in_netns=True,
        )  # fmt: skip
        self._started = True
        return self

    def psql(self, sql: str, database: str = "postgres") -> str:
        return self._run(
            "psql", "-h", str(self.dir), "-p", str(self.port), "-U", SUPERUSER, "-d", database,
            "-v", "ON_ERROR_STOP=1", "-qAt", "-c", sql,
        )  # fmt: skip

    def create_database(self, name: str | None = None) -> str:
        """A new empty database; its URL (with the password)."""
        self._databases += 1
        name = name or f"wgq_{self._databases}"
        self.psql(f'CREATE DATABASE "{name}" TEMPLATE template0')
        return self.url(name)

    def url(self, database: str, password: str | None = None) -> str:
        secret = self.password if password is None else password
        return f"postgresql://{SUPERUSER}:{secret}@{self.host}:{self.port}/{database}"

    def stop(self) -> None:
        if self._started:
            stop_data_dir(self.dir)
            self._started = False
        shutil.rmtree(self.dir, ignore_errors=True)

    def __enter__(self) -> PostgresCluster:
        return self.start()

    def __exit__(self, *_exc: object) -> None:
        self.stop()


def stop_data_dir(directory: Path) -> None:
    """Stop the server of a cluster made here (its pid file names it) and remove its directory: for
    whoever lost the `PostgresCluster` object, such as `lab down`."""
    bindir = find_bindir()
    data = directory / "data"
    if bindir is not None and (data / "postmaster.pid").exists():
        owner = directory.stat()
        kwargs: dict[str, object] = {}
        if os.geteuid() == 0:
            kwargs.update(user=owner.st_uid, group=owner.st_gid, extra_groups=[])
        with contextlib.suppress(subprocess.TimeoutExpired, OSError):
            subprocess.run(
                [str(bindir / "pg_ctl"), "-D", str(data), "-m", "fast", "-w", "stop"],
                capture_output=True, env={"PATH": "/usr/bin:/bin", "LC_ALL": "C"}, cwd=directory,
                timeout=60, **kwargs,  # type: ignore[call-overload]
            )  # fmt: skip
    shutil.rmtree(directory, ignore_errors=True)
