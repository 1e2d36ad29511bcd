"""WireGuard backends, chosen by name: `open_backend("auto" | "kernel" | "userspace" | "fake")`.

- `kernel`: the Linux module through netlink (pyroute2), `agent.backends.kernel`;
- `userspace`: wireguard-go over its UAPI socket, `agent.backends.userspace`;
- `fake`: in memory, for tests and dry runs, `agent.backends.fake`;
- `auto`: kernel when the module is present, else userspace; when neither can work, one
  `BackendUnavailable` that says what to install.

Backends are imported only when chosen, so the fake never pulls in pyroute2.
"""

from __future__ import annotations

import time
from collections.abc import Callable
from pathlib import Path
from typing import Literal, get_args

from agent.backends.base import Backend, BackendError, BackendUnavailable
from agent.state import BackendName  # a backend, as the state file records it (never auto)

BackendChoice = Literal["auto", "kernel", "userspace", "fake"]  # what an operator picks; auto finds one
BACKEND_CHOICES: tuple[str, ...] = get_args(BackendChoice)

INSTALL_HINT = (
    "no WireGuard implementation on this host: install the userspace one (`apt install wireguard-go`) "
    "or load the kernel module (`modprobe wireguard`)"
)

__all__ = [
    "BACKEND_CHOICES",
    "Backend",
    "BackendChoice",
    "BackendError",
    "BackendName",
    "BackendUnavailable",
    "open_backend",
]


def open_backend(
    name: str,
    *,
    netns: str | None = None,
    run_dir: Path | None = None,
    clock: Callable[[], float] = time.time,
) -> Backend:
    """The backend called `name`.

    `netns`: the named network namespace the interfaces live in (None: the caller's own).
    `run_dir`: userspace only: a private directory for the UAPI sockets and pidfiles, bind-mounted on
    `/run/wireguard` inside wireguard-go's own mount namespace so hosts sharing a machine never collide
    (None: the system's `/var/run/wireguard`). `clock`: fake only.

    Raises ValueError for an unknown name and BackendUnavailable (message says what to install) when
    the backend cannot work on this host.
    """
    if name == "fake":
        from agent.backends.fake import FakeBackend

        return FakeBackend(clock)
    if name == "kernel":
        from agent.backends.kernel import KernelBackend, kernel_module_present

        if not kernel_module_present():
            raise BackendUnavailable(
                "the kernel has no WireGuard module: load it (`modprobe wireguard`) or use the "
                "userspace backend (`apt install wireguard-go`)"
            )
        return KernelBackend(netns=netns)
    if name == "userspace":
        from agent.backends.userspace import UserspaceBackend

        return UserspaceBackend(netns=netns, run_dir=run_dir)
    if name == "auto":
        from agent.backends.kernel import kernel_module_present

        if kernel_module_present():
            from agent.backends.kernel import KernelBackend

            return KernelBackend(netns=netns)
        from agent.backends.userspace import UserspaceBackend, find_wireguard_go

        if find_wireguard_go() is None:
            raise BackendUnavailable(INSTALL_HINT)
        return UserspaceBackend(netns=netns, run_dir=run_dir)
    raise ValueError(f"unknown backend {name!r}: choose one of {', '.join(BACKEND_CHOICES)}")
