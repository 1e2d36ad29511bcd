"""The lab's persistent description: `lab.json` in the lab directory (see `LabLayout.record_path`).

It records what a later `wgmesh lab ...` command cannot derive from the lab's name: which hosts exist,
the pids of the processes the lab started (with their kernel start time, so a recycled pid is never
mistaken for ours), and the pre-auth key agents enroll with. It is written atomically (temp file +
rename) with mode 0600 because it holds that key, and it is written BEFORE each step that creates
something, so `lab down` can undo a half-finished `lab up`.
"""

from __future__ import annotations

import time
from pathlib import Path
from typing import Literal

from pydantic import BaseModel, ConfigDict, Field, ValidationError

from keys.store import write_file_atomically
from lab.layout import LabLayout
from wgmesh.invocation import program

RECORD_VERSION = 1
LabBackend = Literal["userspace", "kernel"]  # `auto` is resolved when the lab is created
LabStore = Literal["sqlite", "postgres"]


class RecordError(RuntimeError):
    """The lab's record is missing or unreadable; the message says which lab and what to do."""


class _Model(BaseModel):
    model_config = ConfigDict(extra="forbid")


class ProcessRecord(_Model):
    pid: int = Field(ge=1)
    start_ticks: int = Field(ge=0, description="Field 22 of /proc/PID/stat when started.")
    argv: list[str]
    log: str


class HostRecord(_Model):
    index: int = Field(ge=1)
    agent: ProcessRecord | None = Field(default=None, description="None: the agent was never started.")


class ImpairmentRecord(_Model):
    """`lab delay A B`: the relay that holds the pair's packets, and the ports standing for each end."""

    a: int = Field(ge=1, description="Index of the first host (the lower one).")
    b: int = Field(ge=1)
    delay_ms: float = Field(ge=0, description="Added round-trip time.")
    loss: float = Field(ge=0, le=1, description="Share of packets dropped in each direction.")
    relay: ProcessRecord
    port_a: int = Field(ge=1, le=65535, description="Relay port host a talks to instead of host b.")
    port_b: int = Field(ge=1, le=65535, description="Relay port host b talks to instead of host a.")


class LabRecord(_Model):
    version: int = RECORD_VERSION
    name: str
    created_at: float = Field(default_factory=time.time)
    hosts: list[HostRecord] = Field(default_factory=list)
    controller: ProcessRecord | None = Field(default=None, description="None: not started yet.")
    preauth_key: str | None = Field(default=None, description="None: not created yet.")
    backend: LabBackend = Field(
        default="userspace", description="The agents' WireGuard backend; absent: userspace (older labs)."
    )
    impairments: list[ImpairmentRecord] = Field(default_factory=list)
    store: LabStore = Field(default="sqlite", description="The controllers' database; absent: sqlite.")
    replicas: int = Field(default=1, ge=1, description="Controller replicas (more than one: postgres).")
    replica_processes: dict[int, ProcessRecord] = Field(
        default_factory=dict, description="Replicas 2..N by index (replica 1 is `controller`)."
    )
    postgres_dir: str | None = Field(default=None, description="The private PostgreSQL cluster's directory.")

    def host(self, index: int) -> HostRecord:
        for h in self.hosts:
            if h.index == index:
                return h
        raise RecordError(f"lab {self.name!r} has no host h{index}")

    def has_host(self, index: int) -> bool:
        return any(h.index == index for h in self.hosts)

    def next_index(self) -> int:
        return max((h.index for h in self.hosts), default=0) + 1


def save(layout: LabLayout, record: LabRecord) -> None:
    layout.dir.mkdir(parents=True, exist_ok=True, mode=0o700)
    write_file_atomically(layout.record_path, record.model_dump_json(indent=2), 0o600)


def load(layout: LabLayout) -> LabRecord:
    path: Path = layout.record_path
    try:
        text = path.read_text()
    except FileNotFoundError:
        raise RecordError(
            f"no lab named {layout.name!r} is up (no {path}); start one with `{program()} lab up`"
        ) from None
    try:
        return LabRecord.model_validate_json(text)
    except ValidationError as e:
        first = e.errors()[0]
        raise RecordError(
            f"{path} is not a lab record ({first['msg']}); `{program()} lab down --name {layout.name}` "
            "removes the lab anyway"
        ) from None


def load_if_present(layout: LabLayout) -> LabRecord | None:
    try:
        return load(layout)
    except RecordError:
        return None
