"""Which controller replicas a client talks to, and in what order: several URLs, spread and failed over.

A controller setting is one URL or several separated by commas (`http://a:8420,http://b:8420`). A URL
whose host name resolves to several addresses stands for one replica per address: requests then go
to the address, with the name kept in the Host header and for TLS (SNI and certificate checks), so a
DNS name with one record per replica works like a list. Rules:
- Each client starts at a random replica (many clients spread over the replicas) and stays on the one
  that answers; when it does not answer (no connection, a timeout, a 5xx such as a replica that lost
  its database), the next one is tried at once, each once per call.
- Names are resolved when the list is first used and again after every replica failed once (in a
  worker thread for async callers). A client given its own transport (tests, in-process controllers)
  resolves nothing: the transport decides where requests go.
"""

from __future__ import annotations

import asyncio
import ipaddress
import random
import socket
from dataclasses import dataclass
from urllib.parse import urlsplit, urlunsplit


@dataclass(frozen=True)
class Target:
    """One replica: where to connect (`url`) and, when that is an address, the name it stands for."""

    url: str
    host_header: str | None = None  # the original host[:port], when `url` names a resolved address
    sni_hostname: str | None = None

    @property
    def label(self) -> str:
        """How messages name it: the address, and the name it came from."""
        return self.url if self.host_header is None else f"{self.url} ({self.host_header})"


def split_urls(text: str) -> list[str]:
    """'http://a, http://b/' -> ['http://a', 'http://b'] (empty parts dropped)."""
    return [part.strip().rstrip("/") for part in text.split(",") if part.strip()]


def url_problem(url: str) -> str | None:
    """Why `url` cannot be a controller URL, or None."""
    parts = urlsplit(url)
    if parts.scheme not in ("http", "https") or not parts.hostname:
        return "expected http(s)://HOST[:PORT]"
    try:
        _ = parts.port
    except ValueError:
        return "bad port"
    if parts.query or parts.fragment or parts.username:
        return "no user, query or fragment allowed"
    return None


def _is_address(host: str) -> bool:
    try:
        ipaddress.ip_address(host)
    except ValueError:
        return False
    return True


def expand(url: str) -> list[Target]:
    """The replicas one URL stands for: itself, or one per address when its name has several."""
    parts = urlsplit(url)
    host = parts.hostname or ""
    if not host or _is_address(host):
        return [Target(url)]
    port = parts.port or (443 if parts.scheme == "https" else 80)
    try:
        infos = socket.getaddrinfo(host, port, type=socket.SOCK_STREAM)
    except (OSError, UnicodeError):
        return [Target(url)]
    addresses = list(dict.fromkeys(str(info[4][0]) for info in infos))
    if len(addresses) < 2:
        return [Target(url)]
    out = []
    for address in addresses:
        shown = f"[{address}]" if ":" in address else address
        netloc = f"{shown}:{parts.port}" if parts.port else shown
        out.append(
            Target(
                urlunsplit((parts.scheme, netloc, parts.path, "", "")),
                host_header=parts.netloc,
                sni_hostname=host if parts.scheme == "https" else None,
            )
        )
    return out


class Targets:
    """The replicas of one controller setting, with the one in use first."""

    def __init__(self, setting: str, resolve: bool = True, rng: random.Random | None = None) -> None:
        self.urls = split_urls(setting)
        if not self.urls:
            raise ValueError("no controller URL given")
        self._resolve = resolve
        self._rng = rng or random.Random()
        self._targets: list[Target] = []
        self._current = 0

    def _expanded(self) -> list[Target]:
        if not self._resolve:
            return [Target(url) for url in self.urls]
        return [t for url in self.urls for t in expand(url)]

    def _use(self, targets: list[Target]) -> None:
        self._targets = targets
        self._current = self._rng.randrange(len(targets))

    async def aorder(self) -> list[Target]:
        """`order()` for async callers: a name lookup runs in a worker thread."""
        if not self._targets:
            self._use(await asyncio.to_thread(self._expanded) if self._resolve else self._expanded())
        return self.order()

    def order(self) -> list[Target]:
        """Every replica once, the one in use first."""
        if not self._targets:
            self._use(self._expanded())
        n = len(self._targets)
        return [self._targets[(self._current + i) % n] for i in range(n)]

    def failed(self, target: Target) -> None:
        """`target` did not answer: use the next one from now on."""
        if target in self._targets and self._targets[self._current] == target:
            self._current = (self._current + 1) % len(self._targets)

    def all_failed(self) -> None:
        """Every replica failed once: resolve the names again before the next round."""
        self._targets = []

    @property
    def current(self) -> Target:
        """The replica in use (before the first call: the first URL as given; resolves nothing)."""
        return self._targets[self._current] if self._targets else Target(self.urls[0])
