"""The peer directory as the protocol sees it: node id -> tunnel address, port, role, name, policy tags
and identity public key, plus this node's own entry and the policy's message rights. Immutable; a new directory replaces the old one whole.

The JSON file format and the loader live in `p2p.directory`; this module only holds the typed values.
"""

from __future__ import annotations

from collections.abc import Iterator, Mapping
from dataclasses import dataclass, field
from ipaddress import IPv4Address, IPv6Address

from keys.types import IdentityPublicKey

DEFAULT_PORT = 8421


@dataclass(frozen=True, slots=True)
class DirectoryEntry:
    node_id: int
    name: str
    address: IPv4Address | IPv6Address
    role: str
    identity_public_key: IdentityPublicKey
    port: int = DEFAULT_PORT
    tags: frozenset[str] = frozenset()  # policy tags; empty without a policy

    def url(self) -> str:
        host = f"[{self.address}]" if isinstance(self.address, IPv6Address) else str(self.address)
        return f"ws://{host}:{self.port}/"

    def describe(self) -> str:
        return f"node {self.node_id} ({self.name}) at {self.address}:{self.port}"


@dataclass(frozen=True)
class Directory:
    """`own` is this node; `peers` every other node, by id. A node id appears once."""

    own: DirectoryEntry
    peers: Mapping[int, DirectoryEntry] = field(default_factory=dict)
    serial: int = 0  # what the writer built it from (the netmap serial); 0: unknown
    # The policy's p2p rights: message type -> selectors ("tag:T", "node:NAME", "*") of who may send it;
    # unlisted types are open. None: no policy in force, every type is open to every node.
    messages: Mapping[str, tuple[str, ...]] | None = None

    def __post_init__(self) -> None:
        if self.own.node_id in self.peers:
            raise ValueError(f"node {self.own.node_id} is both this node and a peer")
        for node_id, entry in self.peers.items():
            if node_id != entry.node_id:
                raise ValueError(f"peer keyed {node_id} has node_id {entry.node_id}")

    @classmethod
    def of(
        cls,
        own: DirectoryEntry,
        peers: list[DirectoryEntry],
        serial: int = 0,
        messages: Mapping[str, tuple[str, ...]] | None = None,
    ) -> Directory:
        by_id: dict[int, DirectoryEntry] = {}
        for entry in peers:
            if entry.node_id in by_id:
                raise ValueError(f"node {entry.node_id} appears twice")
            by_id[entry.node_id] = entry
        return cls(own=own, peers=by_id, serial=serial, messages=messages)

    def get(self, node_id: int) -> DirectoryEntry | None:
        """The entry for `node_id`, this node's own included; None when unknown."""
        if node_id == self.own.node_id:
            return self.own
        return self.peers.get(node_id)

    def __iter__(self) -> Iterator[DirectoryEntry]:
        return iter(self.peers.values())

    def __len__(self) -> int:
        return len(self.peers)
