"""A program started on a lab host by the caller (not recorded by the lab: the caller ends it), with its
output lines collected as they come, each stamped with the monotonic time it arrived.

    with HostProgram.start(lab, "h1", wgmesh_argv("p2p", "elect", "--json")) as program:
        changes = program.json_lines()
        program.kill()   # SIGKILL, as a crashed host would

Rules:
- `lab exec` replaces itself down the chain, so the pid is the program's own: it is ended by that pid only.
- Its last lines stay readable after it exits; `stop` waits for it with a deadline, then kills it.
"""

from __future__ import annotations

import json
import subprocess
import threading
import time
from collections.abc import Sequence
from typing import Any

from lab.instance import Lab


class HostProgram:
    def __init__(self, host: str, popen: subprocess.Popen[str]) -> None:
        self.host = host
        self.popen = popen
        self._lines: list[tuple[float, str]] = []
        self._lock = threading.Lock()
        self._reader = threading.Thread(target=self._read, name=f"lab-{host}-output", daemon=True)
        self._reader.start()

    @classmethod
    def start(cls, lab: Lab, host: str, argv: Sequence[str]) -> HostProgram:
        popen = subprocess.Popen(
            lab.exec_argv(host, argv),
            stdin=subprocess.DEVNULL,
            stdout=subprocess.PIPE,
            stderr=subprocess.STDOUT,
            text=True,
            bufsize=1,
        )
        return cls(host, popen)

    def __enter__(self) -> HostProgram:
        return self

    def __exit__(self, *exc: object) -> None:
        self.stop()

    def _read(self) -> None:
        assert self.popen.stdout is not None
        for line in self.popen.stdout:
            with self._lock:
                self._lines.append((time.monotonic(), line.rstrip("\n")))

    @property
    def running(self) -> bool:
        return self.popen.poll() is None

    def lines(self) -> list[str]:
        with self._lock:
            return [line for _, line in self._lines]

    def output(self, last: int = 30) -> str:
        return "\n".join(self.lines()[-last:])

    def json_lines(self) -> list[dict[str, Any]]:
        """The lines that are JSON objects (others, such as a banner or a log line, are skipped)."""
        out = []
        for line in self.lines():
            if line.startswith("{"):
                try:
                    value = json.loads(line)
                except json.JSONDecodeError:
                    continue
                if isinstance(value, dict):
                    out.append(value)
        return out

    def kill(self) -> None:
        """SIGKILL, as a crash would: no goodbye to its peers."""
        if self.running:
            self.popen.kill()
        self.popen.wait(timeout=10)

    def stop(self) -> None:
        if self.running:
            self.popen.terminate()
            try:
                self.popen.wait(timeout=5)
            except subprocess.TimeoutExpired:
                self.popen.kill()
                self.popen.wait(timeout=5)
        self._reader.join(timeout=5)
