"""The systemd service protocol, without libsystemd: `sd_notify` is one datagram to `$NOTIFY_SOCKET`
(`READY=1`, `STATUS=...`, `STOPPING=1`), and `INVOCATION_ID` says a unit runs us.

Rules:
- Outside a `Type=notify` unit (no `NOTIFY_SOCKET`) every call does nothing, so callers never check.
- READY=1 is sent once per process, however often `ready()` is called.
- A notification that cannot be sent is dropped: the service works the same, systemd times out its start.
"""

from __future__ import annotations

import socket
from collections.abc import Mapping


def under_systemd(env: Mapping[str, str]) -> bool:
    """True when a systemd unit started this process (its output goes to the journal)."""
    return bool(env.get("INVOCATION_ID"))


class Notifier:
    """Sends service state to systemd over `$NOTIFY_SOCKET` (a path, or `@name` for an abstract one)."""

    def __init__(self, env: Mapping[str, str]) -> None:
        address = env.get("NOTIFY_SOCKET", "")
        self._address: str | None = None
        if address.startswith("@"):
            self._address = "\0" + address[1:]
        elif address.startswith("/"):
            self._address = address
        self._ready = False

    def send(self, *fields: str) -> bool:
        """Send `KEY=value` lines; True when systemd got them."""
        if self._address is None:
            return False
        try:
            with socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM | socket.SOCK_CLOEXEC) as sock:
                sock.sendto("\n".join(fields).encode(), self._address)
        except OSError:
            return False
        return True

    def ready(self, status: str | None = None) -> None:
        if self._ready:
            return
        self._ready = True
        self.send("READY=1", *([f"STATUS={status}"] if status else []))

    def stopping(self) -> None:
        self.send("STOPPING=1")
