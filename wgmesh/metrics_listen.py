"""The address a metrics listener binds (`--metrics-listen`, agent and controller): an IP literal and a
port, checked before anything starts, and bound with one clear line when it cannot be."""

from __future__ import annotations

import ipaddress
import socket

DEFAULT_AGENT_METRICS_PORT = 9586


class MetricsListenError(ValueError):
    """One line naming the address and what is wrong with it."""


def parse_metrics_listen(text: str) -> tuple[str, int]:
    """'127.0.0.1:9586', '[::1]:9586' or 'localhost:9586' -> (host, port)."""
    value = text.strip()
    if value.startswith("["):
        host, sep, port_text = value[1:].partition("]:")
    else:
        host, sep, port_text = value.rpartition(":")
        if ":" in host:
            raise MetricsListenError(f"metrics address {text!r}: write an IPv6 address as [addr]:port")
    if not sep or not host:
        raise MetricsListenError(f"metrics address {text!r}: expected HOST:PORT, e.g. 127.0.0.1:9586")
    if host == "localhost":
        host = "127.0.0.1"
    try:
        ipaddress.ip_address(host)
    except ValueError:
        raise MetricsListenError(
            f"metrics address {text!r}: {host!r} is not an IP address of this host (e.g. 127.0.0.1)"
        ) from None
    if not port_text.isdigit() or not 1 <= int(port_text) <= 65535:
        raise MetricsListenError(f"metrics address {text!r}: port must be 1-65535")
    return host, int(port_text)


def bind_metrics_socket(host: str, port: int) -> socket.socket:
    """A listening TCP socket on (host, port); MetricsListenError with the reason when it cannot be."""
    family = socket.AF_INET6 if ":" in host else socket.AF_INET
    sock = socket.socket(family, socket.SOCK_STREAM)
    try:
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        sock.bind((host, port))
        sock.listen(64)
    except OSError as e:
        sock.close()
        shown = f"[{host}]:{port}" if family == socket.AF_INET6 else f"{host}:{port}"
        raise MetricsListenError(f"cannot listen for metrics on {shown}: {e.strerror or e}") from None
    sock.set_inheritable(True)
    return sock
