"""The agent's structured log: one event per line, `key=value` pairs, and no secret ever.

A line looks like

    ts=2026-11-24T10:00:00.123Z level=info node=alpha event=peer_added peer=beta detail="allowed_ips ..."

Rules:
- Values are rendered with `str()`: private key types already print `<redacted>`.
- On top of that every secret registered with `add_secret` (the base64 and hex forms of the private
  keys, the node credential, the pre-auth key) is replaced by `<redacted>` in the finished line, so a
  secret that slipped into an error message from some library still never reaches the log.
- Values with spaces, quotes or `=` are double-quoted with backslash escapes; newlines are escaped, so
  one event is always one line.
"""

from __future__ import annotations

import sys
import threading
import time
from collections.abc import Callable
from datetime import UTC, datetime
from typing import TextIO

from keys.types import _Key

REDACTED = "<redacted>"


def _quote(value: str) -> str:
    if value and not any(c in value for c in ' "=\\\n\r\t'):
        return value
    escaped = value.replace("\\", "\\\\").replace('"', '\\"').replace("\n", "\\n").replace("\r", "\\r")
    return '"' + escaped.replace("\t", "\\t") + '"'


def _text(value: object) -> str:
    if value is None:
        return "-"
    if isinstance(value, bool):
        return "true" if value else "false"
    if isinstance(value, float):
        return f"{value:.3f}".rstrip("0").rstrip(".")
    return str(value)


class EventLog:
    """Writes events to `stream`. Thread safe: backends log from worker threads."""

    def __init__(
        self,
        stream: TextIO | None = None,
        *,
        node: str | None = None,
        clock: Callable[[], float] = time.time,
    ) -> None:
        self._stream = stream if stream is not None else sys.stderr
        self.node = node
        self._clock = clock
        self._secrets: set[str] = set()
        self._lock = threading.Lock()

    def add_secret(self, secret: str | _Key) -> None:
        """Never let this string (or, for a key, its base64 and hex forms) appear in a line."""
        if isinstance(secret, _Key):
            self._secrets.update({secret.base64(), secret.hex()})
        elif len(secret) >= 4:
            self._secrets.add(secret)

    def format(self, level: str, event: str, fields: dict[str, object]) -> str:
        ts = datetime.fromtimestamp(self._clock(), UTC).isoformat(timespec="milliseconds")
        pairs: list[tuple[str, object]] = [("ts", ts.replace("+00:00", "Z")), ("level", level)]
        if self.node is not None:
            pairs.append(("node", self.node))
        pairs.append(("event", event))
        pairs += [(k, v) for k, v in fields.items()]
        line = " ".join(f"{k}={_quote(_text(v))}" for k, v in pairs)
        # longest first, so a secret containing another one is replaced whole
        for secret in sorted(self._secrets, key=len, reverse=True):
            line = line.replace(secret, REDACTED)
        return line

    def _write(self, level: str, event: str, fields: dict[str, object]) -> None:
        line = self.format(level, event, fields)
        with self._lock:
            self._stream.write(line + "\n")
            self._stream.flush()

    def info(self, event: str, **fields: object) -> None:
        self._write("info", event, fields)

    def warning(self, event: str, **fields: object) -> None:
        self._write("warning", event, fields)

    def error(self, event: str, **fields: object) -> None:
        self._write("error", event, fields)
