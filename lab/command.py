"""Running the external tools the lab drives (ip, nft, unshare, wg, ping) and checking they exist.

A failed command becomes a `LabError` whose message names the command and its stderr, so the CLI can
print one line instead of a traceback.
"""

from __future__ import annotations

import os
import shutil
import subprocess
from collections.abc import Sequence

# Tools the lab itself runs, and the one the agents need (the kernel here has no WireGuard module).
REQUIRED_TOOLS = ("ip", "nft", "unshare", "mount", "ping", "wg", "wireguard-go")
_SBIN_PATH = os.pathsep.join(("/usr/local/sbin", "/usr/sbin", "/sbin"))


class LabError(RuntimeError):
    """Something the lab could not do; the message is one line saying what and what to do."""


class LabExists(LabError):
    """A lab of that name is already on this machine; nothing was touched."""


def which(tool: str) -> str | None:
    return shutil.which(tool) or shutil.which(tool, path=_SBIN_PATH)


def missing_tools(tools: Sequence[str] = REQUIRED_TOOLS) -> list[str]:
    return [t for t in tools if which(t) is None]


def check_can_run_lab() -> None:
    """Raise LabError unless we are root and every tool is installed."""
    if os.geteuid() != 0:
        raise LabError("the lab creates network namespaces: run it as root")
    missing = missing_tools()
    if missing:
        raise LabError(
            f"missing tools: {' '.join(missing)} (Debian: apt-get install iproute2 nftables "
            "util-linux iputils-ping wireguard-tools wireguard-go; or `make sysdeps`)"
        )


def run(
    argv: Sequence[str], *, input: str | None = None, timeout: float = 30.0, check: bool = True
) -> subprocess.CompletedProcess[str]:
    try:
        done = subprocess.run(
            list(argv), input=input, capture_output=True, text=True, timeout=timeout, check=False
        )
    except FileNotFoundError:
        raise LabError(f"{argv[0]} is not installed") from None
    except subprocess.TimeoutExpired:
        raise LabError(f"`{' '.join(argv)}` did not finish within {timeout:.0f} s") from None
    if check and done.returncode != 0:
        detail = (done.stderr or done.stdout).strip().splitlines()
        raise LabError(f"`{' '.join(argv)}` failed: {detail[-1] if detail else f'exit {done.returncode}'}")
    return done
