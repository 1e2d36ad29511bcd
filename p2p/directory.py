"""The peer directory file (`STATE_DIR/p2p-directory.json`): its JSON format, a typed loader, an atomic
writer (the agent calls `write_directory` whenever its network map changes), `DirectoryFile`, which
notices when the file changed, and `follow_directory`, the loop a running node reloads it with.

Format (version 1; every field required unless marked):

    {
      "format": "wgmesh-p2p-directory",
      "version": 1,
      "serial": 7,                       # optional, default 0: the netmap serial it was built from
      "self":  {"node_id": 1, "name": "a", "address": "10.80.0.1", "port": 8421,
                "role": "node", "identity_public_key": "<base64 Ed25519>"},
      "peers": [ ...entries of the same shape... ],
      "messages": {"task_assignment": ["tag:supervisor"]}   # optional: the policy's p2p rights
    }

Entries may carry `"tags": [...]` (optional, absent: none): the node's policy tags. `messages` is
present only while a policy is in force: message type -> selectors of who may send it (see wire.policy);
absent: every type is open.

`port` is optional (absent: 8421, the p2p default). `address` is the node's tunnel address (IPv4 or
IPv6). Unknown fields are refused so a typo is an error, not a silent default.
"""

from __future__ import annotations

import asyncio
import json
import logging
from collections.abc import Callable
from dataclasses import dataclass
from ipaddress import ip_address
from pathlib import Path
from typing import Literal

from pydantic import BaseModel, ConfigDict, Field, ValidationError, field_validator

from keys.store import write_file_atomically
from keys.types import IdentityPublicKey
from p2p.core.directory import DEFAULT_PORT, Directory, DirectoryEntry
from wire.fields import IdPublicKey, Role
from wire.models import NetMap

FORMAT = "wgmesh-p2p-directory"
FORMAT_VERSION = 1
FILE_NAME = "p2p-directory.json"


class DirectoryError(ValueError):
    """The directory file is missing or invalid; the message is one line naming the file and field."""


class _EntryModel(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True)

    node_id: int = Field(ge=1)
    name: str = Field(max_length=253)
    address: str
    port: int = Field(default=DEFAULT_PORT, ge=1, le=65535)
    role: Role
    identity_public_key: IdPublicKey
    tags: list[Role] = Field(default_factory=list, max_length=64)

    @field_validator("address")
    @classmethod
    def _address(cls, value: str) -> str:
        try:
            ip_address(value)
        except ValueError:
            raise ValueError(f"{value!r} is not an IPv4 or IPv6 address") from None
        return value


class _FileModel(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True, populate_by_name=True)

    format: Literal["wgmesh-p2p-directory"]
    version: Literal[1]
    serial: int = Field(default=0, ge=0)
    own: _EntryModel = Field(alias="self")
    peers: list[_EntryModel] = Field(max_length=100_000)
    messages: dict[str, list[str]] | None = None


def _entry(model: _EntryModel) -> DirectoryEntry:
    return DirectoryEntry(
        node_id=model.node_id,
        name=model.name,
        address=ip_address(model.address),
        port=model.port,
        role=model.role,
        identity_public_key=model.identity_public_key,
        tags=frozenset(model.tags),
    )


def _entry_json(entry: DirectoryEntry) -> dict[str, object]:
    out: dict[str, object] = {
        "node_id": entry.node_id,
        "name": entry.name,
        "address": str(entry.address),
        "port": entry.port,
        "role": entry.role,
        "identity_public_key": entry.identity_public_key.base64(),
    }
    if entry.tags:
        out["tags"] = sorted(entry.tags)
    return out


def parse_directory(text: str | bytes, source: str = "directory") -> Directory:
    """A Directory from the file's text; DirectoryError with one line saying what is wrong."""
    try:
        model = _FileModel.model_validate_json(text)
    except ValidationError as e:
        err = e.errors()[0]
        # Pydantic adds validator names to the location of union fields; keep field names and indexes.
        where = (
            ".".join(str(p) for p in err["loc"] if isinstance(p, int) or str(p).isidentifier()) or "document"
        )
        raise DirectoryError(f"{source}: {where}: {err['msg']}") from None
    try:
        messages = None if model.messages is None else {t: tuple(v) for t, v in model.messages.items()}
        return Directory.of(
            _entry(model.own), [_entry(p) for p in model.peers], serial=model.serial, messages=messages
        )
    except ValueError as e:
        raise DirectoryError(f"{source}: {e}") from None


def directory_json(directory: Directory) -> str:
    doc: dict[str, object] = {
        "format": FORMAT,
        "version": FORMAT_VERSION,
        "serial": directory.serial,
        "self": _entry_json(directory.own),
        "peers": [_entry_json(e) for e in sorted(directory, key=lambda e: e.node_id)],
    }
    if directory.messages is not None:
        doc["messages"] = {t: list(v) for t, v in sorted(directory.messages.items())}
    return json.dumps(doc, indent=2) + "\n"


def load_directory(path: Path) -> Directory:
    try:
        text = path.read_bytes()
    except FileNotFoundError:
        raise DirectoryError(f"{path}: no such file (is the agent running and enrolled?)") from None
    except OSError as e:
        raise DirectoryError(f"{path}: {e.strerror}") from None
    return parse_directory(text, str(path))


def write_directory(path: Path, directory: Directory) -> None:
    """Write atomically (temp file, fsync, rename): a reader sees the old file or the new one, never a
    torn one. Mode 0644: the directory holds only public keys and addresses."""
    path.parent.mkdir(parents=True, exist_ok=True)
    write_file_atomically(path, directory_json(directory), 0o644)


def directory_from_netmap(
    netmap: NetMap, identity_public_key: IdentityPublicKey, *, port: int = DEFAULT_PORT
) -> Directory:
    """The directory an agent writes from its network map. The netmap's own node carries no identity
    key, so the agent passes its own public key. Every node gets the same p2p `port`."""
    own = DirectoryEntry(
        node_id=netmap.node.node_id,
        name=netmap.node.name,
        address=netmap.node.tunnel_address,
        port=port,
        role=netmap.node.role,
        identity_public_key=identity_public_key,
        tags=frozenset(netmap.node.tags),
    )
    peers = [
        DirectoryEntry(
            node_id=p.node_id,
            name=p.name,
            address=p.tunnel_address,
            port=port,
            role=p.role,
            identity_public_key=p.identity_public_key,
            tags=frozenset(p.tags),
        )
        for p in netmap.peers
    ]
    policy = netmap.policy
    messages = None if policy is None else {t: tuple(v) for t, v in policy.messages.items()}
    return Directory.of(own, peers, serial=netmap.serial, messages=messages)


@dataclass
class DirectoryFile:
    """A directory file followed by polling: `changed()` returns the new Directory when the file was
    replaced or modified since the last look, None otherwise. An invalid new file is reported through
    `last_error` and the previous directory stays in force."""

    path: Path
    _stamp: tuple[int, int, int] | None = None
    last_error: str | None = None

    def _current_stamp(self) -> tuple[int, int, int] | None:
        try:
            st = self.path.stat()
        except OSError:
            return None
        return (st.st_ino, st.st_mtime_ns, st.st_size)

    def load(self) -> Directory:
        stamp = self._current_stamp()
        directory = load_directory(self.path)
        self._stamp = stamp
        self.last_error = None
        return directory

    def changed(self) -> Directory | None:
        stamp = self._current_stamp()
        if stamp is None or stamp == self._stamp:
            return None
        try:
            directory = load_directory(self.path)
        except DirectoryError as e:
            self._stamp = stamp  # report a broken file once, not on every poll
            self.last_error = str(e)
            return None
        self._stamp = stamp
        self.last_error = None
        return directory


async def follow_directory(
    file: DirectoryFile, apply: Callable[[Directory], None], interval: float, log: logging.Logger
) -> None:
    """Every `interval` seconds, hand a changed directory file to `apply`. A broken file is logged once
    and the previous directory stays in force; so does one `apply` refuses (ValueError)."""
    reported: str | None = None
    while True:
        await asyncio.sleep(interval)
        new = file.changed()
        if file.last_error and file.last_error != reported:
            reported = file.last_error
            log.error("keeping the previous directory: %s", reported)
        if new is not None:
            try:
                apply(new)
            except ValueError as e:
                log.error("keeping the previous directory: %s", e)
