"""The userspace backend: wireguard-go processes configured over their UAPI unix sockets.

Process model:
- `create` starts `wireguard-go -f IFNAME` (foreground, so the pid we start IS wireguard-go's pid) in a
  new session (an agent's Ctrl-C or restart does not take the tunnel down), optionally inside a named
  network namespace, and waits until its socket answers (polling with a deadline, never a fixed sleep).
- With `run_dir`, wireguard-go runs in its own private mount namespace where `run_dir` is bind-mounted
  on `/run/wireguard`: its socket appears at `run_dir/IFNAME.sock` (unix sockets connect across mount
  namespaces), and two network namespaces using the same interface name never collide. Without it the
  system's `/var/run/wireguard` is used.
- The pid is kept in `IFNAME.pid` next to the socket; `delete` ends exactly that process (checked
  against /proc/PID/cmdline first) and never kills anything by name.
- `create` on an interface whose socket already answers attaches to it: an agent restart keeps every
  session.
- wireguard-go v0.0.2022 only warns on Linux kernels that have the module; older releases refuse to run
  unless WG_I_PREFER_BUGGY_USERSPACE_TO_POLISHED_KMOD=1, so it is always set. Its stderr (the banner and
  errors) goes to `IFNAME.log` next to the socket; a failed start quotes the log's last line.

All methods are synchronous and thread safe (each UAPI request uses its own connection); asyncio
callers use `asyncio.to_thread`.
"""

from __future__ import annotations

import contextlib
import os
import shutil
import signal
import socket
import subprocess
import threading
import time
from collections.abc import Callable
from pathlib import Path

from agent.backends.base import BackendError, BackendUnavailable
from agent.device import Device, DeviceUpdate, KeySwitch, PeerSwap
from agent.uapi import (
    GET_REQUEST,
    UapiError,
    check_errno,
    encode_set,
    encode_swap,
    encode_switch,
    parse_get,
)
from keys.store import write_private_file

SYSTEM_RUN_DIR = Path("/var/run/wireguard")
SOCKET_DIR_IN_NAMESPACE = "/run/wireguard"  # where wireguard-go puts its socket (/var/run -> /run)
WG_ENV = {"WG_I_PREFER_BUGGY_USERSPACE_TO_POLISHED_KMOD": "1"}
IFNAME_MAX = 15  # IFNAMSIZ - 1


def find_wireguard_go() -> str | None:
    """Path of the wireguard-go binary, or None when it is not installed."""
    return shutil.which("wireguard-go") or next(
        (p for p in ("/usr/bin/wireguard-go", "/usr/local/bin/wireguard-go") if os.access(p, os.X_OK)),
        None,
    )


def check_ifname(ifname: str) -> None:
    """Raise BackendError unless `ifname` is a valid Linux interface name."""
    if not ifname or len(ifname) > IFNAME_MAX or any(c in ifname for c in "/ \t\n:") or ifname in (".", ".."):
        raise BackendError(
            f"invalid interface name {ifname!r}: 1..{IFNAME_MAX} characters, no '/', ':' or spaces"
        )


def uapi_request(path: Path, request: str, timeout: float = 10.0) -> str:
    """Send one UAPI request on a fresh connection to the socket at `path` and return the whole reply
    (up to and including the empty line after `errno=N`). Raises OSError when the socket does not
    answer, UapiError when the reply is cut short."""
    with socket.socket(socket.AF_UNIX, socket.SOCK_STREAM) as sock:
        sock.settimeout(timeout)
        sock.connect(str(path))
        sock.sendall(request.encode())
        chunks: list[bytes] = []
        tail = b""
        while True:
            data = sock.recv(65536)
            if not data:
                break
            chunks.append(data)
            tail = (tail + data)[-256:]
            # A reply ends with "errno=N\n\n"; no other line of a reply is empty.
            if tail.endswith(b"\n\n") and tail[:-2].rsplit(b"\n", 1)[-1].startswith(b"errno="):
                break
    reply = b"".join(chunks).decode()
    if not reply.endswith("\n\n"):
        raise UapiError(f"UAPI reply from {path} was cut short: {reply[-80:]!r}")
    return reply


class UserspaceBackend:
    """WireGuard devices run by wireguard-go. See the module docstring for the process model."""

    name = "userspace"

    def __init__(
        self,
        netns: str | None = None,
        run_dir: Path | None = None,
        binary: str | None = None,
        start_timeout: float = 10.0,
        request_timeout: float = 10.0,
    ) -> None:
        found = binary or find_wireguard_go()
        if found is None:
            raise BackendUnavailable("wireguard-go is not installed: `apt install wireguard-go`")
        self.binary = found
        self.netns = netns
        self.run_dir = run_dir
        self.start_timeout = start_timeout
        self.request_timeout = request_timeout
        self._children: dict[str, subprocess.Popen[bytes]] = {}
        self._lock = threading.Lock()

    # --- paths --------------------------------------------------------------------------------------

    @property
    def socket_dir(self) -> Path:
        return self.run_dir if self.run_dir is not None else SYSTEM_RUN_DIR

    def socket_path(self, ifname: str) -> Path:
        """Where `ifname`'s UAPI socket is reachable from this process."""
        return self.socket_dir / f"{ifname}.sock"

    def pidfile(self, ifname: str) -> Path:
        return self.socket_dir / f"{ifname}.pid"

    def logfile(self, ifname: str) -> Path:
        return self.socket_dir / f"{ifname}.log"

    def pid(self, ifname: str) -> int | None:
        """The pid of the wireguard-go serving `ifname`, when we started it and it still runs."""
        try:
            pid = int(self.pidfile(ifname).read_text().strip())
        except (FileNotFoundError, ValueError):
            return None
        return pid if _is_wireguard_go(pid, ifname) else None

    # --- Backend protocol ---------------------------------------------------------------------------

    def exists(self, ifname: str) -> bool:
        """True when `ifname`'s socket answers a get request."""
        check_ifname(ifname)
        try:
            uapi_request(self.socket_path(ifname), GET_REQUEST, timeout=self.request_timeout)
        except (OSError, UapiError):
            return False
        return True

    def create(self, ifname: str) -> None:
        """Start wireguard-go for `ifname` and wait for its socket; attach when it already answers."""
        check_ifname(ifname)
        with self._lock:
            if self.exists(ifname):
                return
            self.socket_dir.mkdir(parents=True, exist_ok=True, mode=0o700 if self.run_dir else 0o755)
            log = self.logfile(ifname)
            with open(log, "wb") as log_file:
                os.fchmod(log_file.fileno(), 0o600)
                proc = subprocess.Popen(
                    self._command(ifname),
                    stdin=subprocess.DEVNULL,
                    stdout=log_file,
                    stderr=subprocess.STDOUT,
                    env={**os.environ, **WG_ENV},
                    start_new_session=True,
                )
            self._children[ifname] = proc
            write_private_file(self.pidfile(ifname), f"{proc.pid}\n")
            deadline = time.monotonic() + self.start_timeout
            while not self.exists(ifname):
                if proc.poll() is not None:
                    reason = _last_line(log)
                    self._forget(ifname)
                    raise BackendError(
                        f"wireguard-go for {ifname} exited with status {proc.returncode}: {reason}"
                    )
                if time.monotonic() > deadline:
                    reason = _last_line(log)
                    self._stop(ifname, proc.pid)
                    self._forget(ifname)
                    raise BackendError(
                        f"wireguard-go for {ifname} did not open {self.socket_path(ifname)} within "
                        f"{self.start_timeout:g}s: {reason}"
                    )
                time.sleep(0.01)

    def delete(self, ifname: str) -> None:
        """Stop the wireguard-go serving `ifname` and wait until its socket is gone. Missing: no-op.

        A process we did not start (no pidfile) is asked to stop by removing its socket, which
        wireguard-go watches."""
        check_ifname(ifname)
        with self._lock:
            pid = self.pid(ifname)
            if pid is not None:
                self._stop(ifname, pid)
            elif self.exists(ifname):
                with contextlib.suppress(FileNotFoundError):
                    self.socket_path(ifname).unlink()
                self._wait_gone(ifname)
            self._forget(ifname)

    def read(self, ifname: str) -> Device:
        check_ifname(ifname)
        try:
            reply = uapi_request(self.socket_path(ifname), GET_REQUEST, timeout=self.request_timeout)
            return parse_get(ifname, reply)
        except OSError as e:
            raise BackendError(f"cannot read {ifname}: its UAPI socket does not answer ({e})") from None
        except UapiError as e:
            raise BackendError(f"cannot read {ifname}: {e}") from None

    def apply(self, ifname: str, update: DeviceUpdate) -> None:
        """Send `update` as one `set=1` request. An empty update sends nothing."""
        check_ifname(ifname)
        if update.is_empty():
            return
        self._set(ifname, lambda: encode_set(update))

    def swap_peer(self, ifname: str, swap: PeerSwap) -> None:
        """One `set=1` request: the new peer with the old one's allowed IPs, then the old one removed."""
        check_ifname(ifname)
        self._set(ifname, lambda: encode_swap(swap))

    def switch_key(self, ifname: str, switch: KeySwitch) -> None:
        """One `set=1` request: the private key, then the keepalive kicks."""
        check_ifname(ifname)
        self._set(ifname, lambda: encode_switch(switch))

    # --- internals ----------------------------------------------------------------------------------

    def _set(self, ifname: str, encode: Callable[[], str]) -> None:
        try:
            request = encode()
            reply = uapi_request(self.socket_path(ifname), request, timeout=self.request_timeout)
            check_errno(reply, f"set on {ifname}")
        except OSError as e:
            raise BackendError(f"cannot configure {ifname}: its UAPI socket does not answer ({e})") from None
        except UapiError as e:
            raise BackendError(f"cannot configure {ifname}: {e}") from None

    def _command(self, ifname: str) -> list[str]:
        cmd = [self.binary, "-f", ifname]
        if self.run_dir is not None:
            script = (
                f'mkdir -p {SOCKET_DIR_IN_NAMESPACE} && mount --bind "$1" {SOCKET_DIR_IN_NAMESPACE} '
                '&& shift && exec "$@"'
            )
            cmd = [
                "unshare",
                "-m",
                "--propagation",
                "private",
                "sh",
                "-c",
                script,
                "sh",
                str(self.run_dir),
                *cmd,
            ]
        if self.netns is not None:
            cmd = ["ip", "netns", "exec", self.netns, *cmd]
        return cmd

    def _stop(self, ifname: str, pid: int) -> None:
        """SIGTERM `pid` (wireguard-go then removes its socket and interface), SIGKILL if it lingers."""
        with contextlib.suppress(ProcessLookupError):
            os.kill(pid, signal.SIGTERM)
        if not self._wait_exit(ifname, pid, 5.0):
            with contextlib.suppress(ProcessLookupError):
                os.kill(pid, signal.SIGKILL)
            self._wait_exit(ifname, pid, 5.0)
        with contextlib.suppress(FileNotFoundError):
            self.socket_path(ifname).unlink()

    def _wait_exit(self, ifname: str, pid: int, timeout: float) -> bool:
        child = self._children.get(ifname)
        if child is not None and child.pid == pid:
            try:
                child.wait(timeout)
            except subprocess.TimeoutExpired:
                return False
            return True
        deadline = time.monotonic() + timeout
        while _is_wireguard_go(pid, ifname):
            if time.monotonic() > deadline:
                return False
            time.sleep(0.01)
        return True

    def _wait_gone(self, ifname: str, timeout: float = 5.0) -> None:
        deadline = time.monotonic() + timeout
        while self.exists(ifname):
            if time.monotonic() > deadline:
                raise BackendError(f"{ifname} still answers {timeout:g}s after its socket was removed")
            time.sleep(0.01)

    def _forget(self, ifname: str) -> None:
        self._children.pop(ifname, None)
        for path in (self.pidfile(ifname), self.logfile(ifname)):
            with contextlib.suppress(FileNotFoundError):
                path.unlink()


def _is_wireguard_go(pid: int, ifname: str) -> bool:
    """True when `pid` runs `wireguard-go ... IFNAME` (not a recycled pid of another program)."""
    try:
        argv = Path(f"/proc/{pid}/cmdline").read_bytes().split(b"\0")
        state = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()[0]
    except (FileNotFoundError, ProcessLookupError, IndexError):
        return False
    if state == "Z":
        return False
    return bool(argv) and argv[0].endswith(b"wireguard-go") and ifname.encode() in argv[1:]


def _last_line(path: Path) -> str:
    """The last meaningful line of a wireguard-go log (its warning banner is boxed; skip that)."""
    try:
        lines = path.read_text(errors="replace").splitlines()
    except FileNotFoundError:
        return "(no log)"
    useful = [ln.strip() for ln in lines if ln.strip() and ln.strip()[0] not in "│┌└"]
    return useful[-1] if useful else "(empty log)"
