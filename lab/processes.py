"""Starting, identifying and ending the lab's processes.

Rules:
- Every host process (agent, the wireguard-go it starts, whatever `lab exec` runs) runs in the host's
  network namespace AND a private mount namespace where the host's own directory is bind-mounted on
  /run/wireguard, so each host's `wg0.sock` is its own and `wg show` inside the host just works.
- Every host process also gets WGMESH_STATE_DIR=the host's state directory, so a `wgmesh p2p` command
  run on the host (`lab exec`) finds the host's identity key and p2p directory without `--state-dir`,
  and a PATH that starts with the directory of the interpreter running the lab, so a plain `wgmesh`
  in `lab exec` is the lab's own, also when its virtualenv is not activated.
- The exec chain (`ip netns exec` -> `unshare` -> `sh -c 'exec ...'`) replaces itself at every step,
  so the pid we get from Popen is the pid of the final program; we record it with its kernel start
  time.
- A process is ended only by its recorded pid, and only after checking that the pid still names the
  same process (same start time) and that its command line mentions the lab directory. The only other
  processes the lab ends are those still inside the lab's own network namespaces (the wireguard-go an
  agent started), found through the namespace, never by name.
- Output goes to a log file in the lab directory, never to the terminal of `lab up`.
"""

from __future__ import annotations

import contextlib
import os
import signal
import subprocess
import sys
import time
from collections.abc import Mapping, Sequence
from pathlib import Path

from agent.state import STATE_DIR_ENV
from lab.layout import HostLayout
from lab.record import ProcessRecord

_MOUNT_WIREGUARD = 'mkdir -p /run/wireguard && mount --bind "$0" /run/wireguard && exec "$@"'


def python_argv(module: str, *args: str) -> list[str]:
    """`python -m MODULE ARGS` under the interpreter running the lab, so the lab works from a venv."""
    return [sys.executable, "-m", module, *args]


def wgmesh_argv(*args: str) -> list[str]:
    """Our own CLI under the interpreter running the lab."""
    return python_argv("wgmesh", *args)


def in_namespace(namespace: str, argv: Sequence[str]) -> list[str]:
    return ["ip", "netns", "exec", namespace, *argv]


def program_path() -> str:
    """PATH for lab processes: the lab's own interpreter directory first, so a plain `wgmesh` there is
    the lab's own program, venv active or not."""
    return f"{Path(sys.executable).parent}:{os.environ.get('PATH') or os.defpath}"


def with_env(env: Mapping[str, str], argv: Sequence[str]) -> list[str]:
    """`argv` run through `env NAME=VALUE ...` (which execs, so the pid is still the final program's)."""
    return ["env", *(f"{k}={v}" for k, v in env.items()), *argv]


def in_host(host: HostLayout, argv: Sequence[str]) -> list[str]:
    """`argv` as it must run on `host`: its network namespace, its private /run/wireguard and its state
    directory in the environment (`env` execs too, so the pid is still the final program's)."""
    private_mounts = ["unshare", "-m", "--propagation", "private", "sh", "-c", _MOUNT_WIREGUARD]
    state = {STATE_DIR_ENV: str(host.state_dir), "PATH": program_path()}
    return in_namespace(host.namespace, [*private_mounts, str(host.run_dir), *with_env(state, argv)])


def _stat_fields(pid: int) -> list[str] | None:
    try:
        text = Path(f"/proc/{pid}/stat").read_text()
    except (FileNotFoundError, ProcessLookupError, PermissionError):
        return None
    # The command name may contain spaces and parentheses; the fields after the last ')' do not.
    return text[text.rfind(")") + 2 :].split()


def start_ticks(pid: int) -> int | None:
    """The kernel start time of a live process; None when it is gone or a zombie."""
    fields = _stat_fields(pid)
    if fields is None or fields[0] in ("Z", "X"):
        return None
    return int(fields[19])


def _entry_ticks(pid: int) -> int | None:
    """The start time of whatever holds `pid` in the process table, zombies included."""
    fields = _stat_fields(pid)
    return None if fields is None else int(fields[19])


def wait_reaped(ended: Sequence[tuple[int, int]], timeout_s: float = 10.0) -> list[int]:
    """Wait until each ended (pid, start ticks) has left the process table: an exited process stays a
    zombie until its parent (often PID 1, for a daemon whose agent is gone) reaps it. Returns the pids
    still there at the deadline."""
    deadline = time.monotonic() + timeout_s
    left = list(ended)
    while True:
        for pid, _ in left:
            _reap(pid)
        left = [(pid, ticks) for pid, ticks in left if _entry_ticks(pid) == ticks]
        if not left or time.monotonic() >= deadline:
            return [pid for pid, _ in left]
        time.sleep(0.05)


def _cmdline(pid: int) -> str:
    # A process in the middle of execve() briefly shows an empty command line; read again then.
    for _ in range(20):
        try:
            raw = Path(f"/proc/{pid}/cmdline").read_bytes()
        except (FileNotFoundError, ProcessLookupError, PermissionError):
            return ""
        if raw or start_ticks(pid) is None:
            return raw.replace(b"\0", b" ").decode(errors="replace")
        time.sleep(0.01)
    return ""


def is_ours(proc: ProcessRecord, lab_dir: Path) -> bool:
    """True while the recorded process runs: same pid, same start time, and it names the lab dir."""
    return start_ticks(proc.pid) == proc.start_ticks and str(lab_dir) in _cmdline(proc.pid)


def start(argv: Sequence[str], log: Path) -> ProcessRecord:
    log.parent.mkdir(parents=True, exist_ok=True)
    env = dict(os.environ, PYTHONUNBUFFERED="1")
    # Logs may name hosts, addresses and errors: only the lab's owner (root) reads them.
    fd = os.open(log, os.O_WRONLY | os.O_CREAT | os.O_APPEND, 0o600)
    os.fchmod(fd, 0o600)
    with open(fd, "ab") as out:
        out.write(f"--- {time.strftime('%Y-%m-%d %H:%M:%S')} start: {' '.join(argv)}\n".encode())
        out.flush()
        popen = subprocess.Popen(
            list(argv), stdin=subprocess.DEVNULL, stdout=out, stderr=subprocess.STDOUT, env=env,
            start_new_session=True,  # survives the `lab up` that started it and its Ctrl-C
        )  # fmt: skip
    ticks = start_ticks(popen.pid)
    # Popen keeps no reference we need: the process outlives this command; zombies are reaped in `end`.
    return ProcessRecord(pid=popen.pid, start_ticks=ticks or 0, argv=list(argv), log=str(log))


def _reap(pid: int) -> None:
    with contextlib.suppress(ChildProcessError, OSError):
        os.waitpid(pid, os.WNOHANG)


def _wait_gone(pid: int, ticks: int, deadline: float) -> bool:
    while time.monotonic() < deadline:
        _reap(pid)
        if start_ticks(pid) != ticks:
            return True
        time.sleep(0.05)
    return False


def end(pid: int, *, ticks: int, grace_s: float = 5.0, sig: signal.Signals = signal.SIGTERM) -> None:
    """Send `sig` to the process started at `ticks`; SIGKILL it if it is still there after `grace_s`."""
    if start_ticks(pid) != ticks:
        _reap(pid)
        return
    with contextlib.suppress(ProcessLookupError):
        os.kill(pid, sig)
    if _wait_gone(pid, ticks, time.monotonic() + grace_s):
        return
    with contextlib.suppress(ProcessLookupError):
        os.kill(pid, signal.SIGKILL)
    _wait_gone(pid, ticks, time.monotonic() + 5.0)


def end_recorded(
    proc: ProcessRecord, lab_dir: Path, *, grace_s: float = 5.0, sig: signal.Signals = signal.SIGTERM
) -> bool:
    """End a recorded lab process. False when it was not running (or the pid is someone else's now)."""
    if not is_ours(proc, lab_dir):
        _reap(proc.pid)
        return False
    end(proc.pid, ticks=proc.start_ticks, grace_s=grace_s, sig=sig)
    return True


def end_in_namespace(pids: Sequence[int], grace_s: float = 3.0) -> list[tuple[int, int]]:
    """End processes found inside one of the lab's namespaces (see module rules). Returns the
    (pid, start ticks) of those it ended, for `wait_reaped`."""
    ended = []
    for pid in pids:
        ticks = start_ticks(pid)
        if ticks is not None and pid != os.getpid():
            end(pid, ticks=ticks, grace_s=grace_s)
            ended.append((pid, ticks))
    return ended


def peak_memory_kib(pid: int) -> int | None:
    """VmHWM (peak resident set) of a live process, in KiB."""
    try:
        for line in Path(f"/proc/{pid}/status").read_text().splitlines():
            if line.startswith("VmHWM:"):
                return int(line.split()[1])
    except (FileNotFoundError, ProcessLookupError):
        return None
    return None


def log_tail(path: Path, lines: int = 5) -> str:
    try:
        return "\n".join(path.read_text(errors="replace").splitlines()[-lines:])
    except FileNotFoundError:
        return "(no log)"
