"""Booted Debian machines for the machines tier: a cached mmdebstrap root filesystem, one overlay per
machine, systemd as PID 1 under systemd-nspawn in a network namespace of its own, and commands run
inside with nsenter (the host's PID 1 is not systemd, so there is no machined: `--register=no`).

Everything is named with the `wgm` prefix (namespaces `wgm-*`, bridge `wgm-br`, run directories
under /tmp/wgm-machines) and removed by `Machines.close()`, also after a failure; a run that crashed is
cleaned up by the next one (`clean_leftovers`), which ends only the nspawn processes whose pids it
recorded and whose command line is still systemd-nspawn's.
"""

from __future__ import annotations

import hashlib
import os
import shutil
import signal
import subprocess
import sys
import time
import tomllib
from dataclasses import dataclass, field
from pathlib import Path

from tests.support import wait_until

REPO = Path(__file__).resolve().parents[2]
ROOTFS_SCRIPT = REPO / "deploy" / "container" / "rootfs.sh"
CACHE = Path("/var/cache/wgmesh-test")
RUN_BASE = Path("/tmp/wgm-machines")
PREFIX = "wgm-"
UNDERLAY_NS = "wgm-ul"
BRIDGE = "wgm-br"
UNDERLAY_NET = "198.18.200"  # /24: .1 the controller machine, .11.. the hosts
WHEEL_MOUNT = "/mnt/wgmesh-wheel"
WHEELHOUSE_MOUNT = "/mnt/wgmesh-wheelhouse"
DEPLOY_MOUNT = "/mnt/wgmesh-deploy"
PATH = "/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin"


def run(
    *argv: str, check: bool = True, timeout: float = 60, **kw: object
) -> subprocess.CompletedProcess[str]:
    result = subprocess.run(argv, capture_output=True, text=True, timeout=timeout, **kw)  # type: ignore[call-overload]
    if check and result.returncode != 0:
        raise AssertionError(f"{' '.join(argv)} exited {result.returncode}: {result.stderr.strip()[-2000:]}")
    return result  # type: ignore[no-any-return]


def _digest(*parts: bytes) -> str:
    return hashlib.sha256(b"\0".join(parts)).hexdigest()[:16]


def cached_rootfs() -> tuple[Path, bool]:
    """The base root filesystem (built once by deploy/container/rootfs.sh, keyed by that script).
    Returns (directory, built_now)."""
    root = CACHE / "rootfs" / f"bookworm-{_digest(ROOTFS_SCRIPT.read_bytes())}"
    if root.is_dir():
        return root, False
    root.parent.mkdir(parents=True, exist_ok=True)
    run(str(ROOTFS_SCRIPT), str(root), timeout=900)
    return root, True


def built_wheels(out: Path) -> tuple[Path, Path]:
    """(wgmesh wheel built from this checkout into `out`, the cached wheelhouse of its dependencies)."""
    out.mkdir(parents=True, exist_ok=True)
    python = Path(sys.executable)  # the interpreter running the tests, with pip and the build backend
    run(str(python), "-m", "pip", "wheel", "-q", "--no-deps", "-w", str(out), str(REPO), timeout=300)
    wheel = next(out.glob("wgmesh-*.whl"))
    dependencies = tomllib.loads((REPO / "pyproject.toml").read_text())["project"]["dependencies"]
    house = CACHE / "wheels" / f"deps-{_digest(*(d.encode() for d in dependencies))}"  # runtime ones only
    if not house.is_dir():
        work = house.with_name(house.name + f".building.{os.getpid()}")
        shutil.rmtree(work, ignore_errors=True)
        run(str(python), "-m", "pip", "download", "-q", "-d", str(work), str(wheel), timeout=600)
        (work / wheel.name).unlink()  # the wheelhouse holds the dependencies only
        work.rename(house)
    return wheel, house


@dataclass
class Machine:
    """One booted system: its name, underlay address, overlay root and the nspawn running it."""

    name: str
    address: str
    root: Path
    upper: Path
    log: Path
    binds: tuple[str, ...]
    nspawn: subprocess.Popen[bytes] | None = None
    leader: int | None = None
    boots: int = 0

    @property
    def netns(self) -> str:
        return PREFIX + self.name

    def boot(self, timeout: float = 120) -> float:
        """Start systemd in the machine and wait until it reports running; returns the seconds it took."""
        started = time.monotonic()
        self.boots += 1
        log = self.log.open("ab")
        self.nspawn = subprocess.Popen(
            [
                "systemd-nspawn",
                "--quiet",
                "--boot",
                f"--directory={self.root}",
                f"--machine={self.netns}",
                f"--hostname={self.name}",
                "--register=no",
                "--keep-unit",
                f"--network-namespace-path=/run/netns/{self.netns}",
                "--bind=/dev/net/tun",
                "--capability=CAP_NET_ADMIN",  # not in nspawn's default set with --network-namespace-path
                "--console=read-only",
                *self.binds,
            ],
            stdin=subprocess.DEVNULL,
            stdout=log,
            stderr=subprocess.STDOUT,
        )
        log.close()
        (self.upper.parent / "nspawn.pid").write_text(f"{self.nspawn.pid}\n")
        self.leader = wait_until(f"{self.name}'s PID 1", self._find_leader, timeout, show=self.log_tail)
        state = wait_until(
            f"{self.name} to finish booting",
            lambda: self._system_state() in ("running", "degraded") and self._system_state(),
            timeout,
            show=self.log_tail,
        )
        if state == "degraded":
            failed = self.sh("systemctl --failed --no-legend --plain", check=False).stdout
            raise AssertionError(f"{self.name} booted degraded; failed units:\n{failed}")
        return time.monotonic() - started

    def _find_leader(self) -> int | None:
        assert self.nspawn is not None
        if self.nspawn.poll() is not None:
            raise AssertionError(
                f"systemd-nspawn for {self.name} exited {self.nspawn.returncode}:\n{self.log_tail()}"
            )
        try:
            children = Path(f"/proc/{self.nspawn.pid}/task/{self.nspawn.pid}/children").read_text().split()
        except OSError:
            return None
        for pid in children:
            try:
                if Path(f"/proc/{pid}/comm").read_text().strip() == "systemd":
                    return int(pid)
            except OSError:
                continue
        return None

    def _system_state(self) -> str:
        return self.sh("systemctl is-system-running", check=False, timeout=20).stdout.strip()

    def sh(self, script: str, check: bool = True, timeout: float = 60) -> subprocess.CompletedProcess[str]:
        """Run a shell script inside the machine, as its root, with a clean environment."""
        assert self.leader is not None, f"{self.name} is not running"
        return run(
            "nsenter", f"--target={self.leader}", "--mount", "--uts", "--ipc", "--net", "--pid",
            "--root", "--wd",
            "/usr/bin/env", "-i", f"PATH={PATH}", "HOME=/root", "LANG=C.UTF-8",
            "/bin/sh", "-c", script,
            check=check, timeout=timeout,
        )  # fmt: skip

    def power_off(self, timeout: float = 60) -> None:
        """`systemctl poweroff` inside, and wait until systemd-nspawn has exited."""
        assert self.nspawn is not None
        self.sh("systemctl poweroff --no-block", check=False)
        try:
            self.nspawn.wait(timeout)
        except subprocess.TimeoutExpired:
            raise AssertionError(
                f"{self.name} did not power off in {timeout:g} s:\n{self.log_tail()}"
            ) from None
        self.leader = None

    def stop(self) -> None:
        """End the machine whatever its state: SIGTERM (orderly halt), then SIGKILL to nspawn and PID 1."""
        if self.nspawn is None or self.nspawn.poll() is not None:
            return
        self.nspawn.send_signal(signal.SIGTERM)
        try:
            self.nspawn.wait(30)
        except subprocess.TimeoutExpired:
            if self.leader is not None:
                _kill_if(self.leader, "systemd")
            self.nspawn.kill()
            self.nspawn.wait(10)
        self.leader = None

    def log_tail(self, lines: int = 30) -> str:
        try:
            text = self.log.read_text(errors="replace").splitlines()
        except OSError:
            return ""
        return f"--- {self.log}\n" + "\n".join(text[-lines:])


def _kill_if(pid: int, comm: str) -> None:
    """SIGKILL `pid` only when it still is the process we started (its comm is `comm`)."""
    try:
        if Path(f"/proc/{pid}/comm").read_text().strip() == comm:
            os.kill(pid, signal.SIGKILL)
    except (OSError, ProcessLookupError):
        pass


@dataclass
class Machines:
    """The underlay (a bridge in namespace wgm-ul) and the machines on it, in one run directory."""

    base: Path
    run_dir: Path
    machines: dict[str, Machine] = field(default_factory=dict)

    @classmethod
    def create(cls, base: Path, names: list[str], binds: tuple[str, ...]) -> Machines:
        run_dir = RUN_BASE / f"run-{os.getpid()}"
        fleet = cls(base, run_dir)
        run_dir.mkdir(parents=True)
        run("ip", "netns", "add", UNDERLAY_NS)
        run("ip", "-n", UNDERLAY_NS, "link", "add", BRIDGE, "type", "bridge")
        run("ip", "-n", UNDERLAY_NS, "link", "set", BRIDGE, "up")
        for i, name in enumerate(names):
            fleet.machines[name] = fleet._add(name, f"{UNDERLAY_NET}.{1 if i == 0 else 10 + i}", binds)
        return fleet

    def _add(self, name: str, address: str, binds: tuple[str, ...]) -> Machine:
        home = self.run_dir / name
        upper, work, root = home / "upper", home / "work", home / "root"
        for d in (upper, work, root):
            d.mkdir(parents=True)
        run("mount", "-t", "overlay", "overlay", "-o",
            f"lowerdir={self.base},upperdir={upper},workdir={work}", str(root))  # fmt: skip
        machine = Machine(name, address, root, upper, home / "console.log", binds)
        ns, veth = machine.netns, f"wgm-{name}"
        run("ip", "netns", "add", ns)
        run("ip", "link", "add", veth, "netns", UNDERLAY_NS, "type", "veth", "peer", "eth0", "netns", ns)
        run("ip", "-n", UNDERLAY_NS, "link", "set", veth, "master", BRIDGE, "up")
        run("ip", "-n", ns, "addr", "add", f"{address}/24", "dev", "eth0")
        run("ip", "-n", ns, "link", "set", "eth0", "up")
        run("ip", "-n", ns, "link", "set", "lo", "up")
        return machine

    def __getitem__(self, name: str) -> Machine:
        return self.machines[name]

    def close(self) -> None:
        for machine in self.machines.values():
            machine.stop()
        clean_leftovers()


def clean_leftovers() -> None:
    """Remove every machine, overlay, namespace and run directory of this tier, ours or a crashed run's."""
    if RUN_BASE.is_dir():
        for run_dir in RUN_BASE.iterdir():
            for home in run_dir.iterdir() if run_dir.is_dir() else ():
                pidfile = home / "nspawn.pid"
                if pidfile.exists():
                    try:
                        pid = int(pidfile.read_text())
                        cmdline = Path(f"/proc/{pid}/cmdline").read_bytes()
                    except (OSError, ValueError):
                        cmdline = b""
                    if cmdline.startswith(b"systemd-nspawn\0") and str(home).encode() in cmdline:
                        os.kill(pid, signal.SIGKILL)
                        _wait_gone(pid)
                root = home / "root"
                if os.path.ismount(root):
                    run("umount", "-l", str(root), check=False)
            shutil.rmtree(run_dir, ignore_errors=True)
    names = run("ip", "netns", "list", check=False).stdout.split()
    for ns in names:
        if ns.startswith(PREFIX):
            run("ip", "netns", "del", ns, check=False)


def _wait_gone(pid: int, timeout: float = 10) -> None:
    deadline = time.monotonic() + timeout
    while Path(f"/proc/{pid}").exists() and time.monotonic() < deadline:
        time.sleep(0.05)
