"""HTTP requests to the controller from inside the lab's underlay namespace.

The controller listens on the underlay bridge, which the machine's own namespace cannot reach (by
design: the lab adds no route out). A short-lived thread enters the underlay namespace (`setns` on a
network namespace changes only the calling thread), opens and connects the TCP socket there, and
exits; the connected socket stays in the underlay and the request runs over it from any thread.
"""

from __future__ import annotations

import ctypes
import ctypes.util
import http.client
import os
import socket
import ssl
import threading
from dataclasses import dataclass
from pathlib import Path
from urllib.parse import urlsplit

from lab.command import LabError
from lab.netns import NETNS_DIR

CLONE_NEWNET = 0x40000000


@dataclass(frozen=True)
class HttpReply:
    status: int
    body: bytes
    content_type: str


def _libc() -> ctypes.CDLL:
    return ctypes.CDLL(ctypes.util.find_library("c") or "libc.so.6", use_errno=True)


def connect_in_namespace(namespace: str, host: str, port: int, timeout: float) -> socket.socket:
    result: list[socket.socket | BaseException] = []

    def enter_and_connect() -> None:
        try:
            fd = os.open(NETNS_DIR / namespace, os.O_RDONLY)
            try:
                if _libc().setns(fd, CLONE_NEWNET) != 0:
                    err = ctypes.get_errno()
                    raise OSError(err, f"setns into {namespace}: {os.strerror(err)}")
            finally:
                os.close(fd)
            result.append(socket.create_connection((host, port), timeout=timeout))
        except BaseException as e:  # handed to the caller's thread
            result.append(e)

    thread = threading.Thread(target=enter_and_connect, name=f"wgl-connect-{namespace}", daemon=True)
    thread.start()
    thread.join(timeout + 1)
    if not result:
        raise LabError(f"connecting to {host}:{port} in {namespace} did not finish")
    outcome = result[0]
    if isinstance(outcome, BaseException):
        raise outcome
    return outcome


def request(
    namespace: str,
    method: str,
    url: str,
    *,
    bearer: str | None = None,
    body: bytes | None = None,
    timeout: float = 10.0,
    ca_file: Path | None = None,
) -> HttpReply:
    """One HTTP(S) request from inside `namespace`; https verifies the server against `ca_file` (the
    controller's CA) and its name. Connection and TLS errors raise OSError."""
    parts = urlsplit(url)
    if parts.scheme not in ("http", "https") or not parts.hostname:
        raise LabError(f"the lab talks http(s) to its controller, not {url!r}")
    port = parts.port or (443 if parts.scheme == "https" else 80)
    sock = connect_in_namespace(namespace, parts.hostname, port, timeout)
    conn: http.client.HTTPConnection
    if parts.scheme == "https":
        if ca_file is None:
            sock.close()
            raise LabError(f"{url}: https needs the controller's CA file")
        try:
            context = ssl.create_default_context(cafile=str(ca_file))
            tls_sock = context.wrap_socket(sock, server_hostname=parts.hostname)
        except OSError:
            sock.close()
            raise
        conn = http.client.HTTPSConnection(parts.hostname, port, timeout=timeout, context=context)
        conn.sock = tls_sock
    else:
        conn = http.client.HTTPConnection(parts.hostname, port, timeout=timeout)
        conn.sock = sock
    headers = {"Accept": "*/*"}
    if bearer:
        headers["Authorization"] = f"Bearer {bearer}"
    if body is not None:
        headers["Content-Type"] = "application/json"
    path = parts.path + (f"?{parts.query}" if parts.query else "")
    try:
        conn.request(method, path or "/", body=body, headers=headers)
        reply = conn.getresponse()
        return HttpReply(reply.status, reply.read(), reply.getheader("Content-Type") or "")
    finally:
        conn.close()
