"""Wire models: what an agent sends, what the controller returns, and the admin views.

Split by direction (innernet's PeerContents / Peer): a `*Request` is what a client sends; the record the
server returns carries its id. Every optional field says what its absence means.

A model's `model_dump_json()` is its wire form: the controller's fast map encoder (controller.netmap)
builds the same bytes from parts the models rendered. Fields added after protocol version 1 that old
agents would refuse are left out while empty (`exclude_if=_empty`): a map without a policy says
nothing about tags or policies.
"""

from __future__ import annotations

from datetime import datetime
from ipaddress import IPv4Address, IPv4Network, IPv6Address, IPv6Network
from typing import Annotated, Literal

from pydantic import BaseModel, ConfigDict, Discriminator, Field, Tag

from wire import PROTOCOL_VERSION
from wire.fields import (
    JSON_INT,
    Endpoint,
    Hostname,
    IdPublicKey,
    Int,
    Port,
    Role,
    WgPublicKey,
)
from wire.policy import TagName

NodeId = Annotated[int, Field(ge=1, description="Controller-assigned node id, never reused."), JSON_INT]
IPAddress = IPv4Address | IPv6Address
IPNetwork = IPv4Network | IPv6Network


def _empty(value: object) -> bool:
    """Left out of the wire form: None or an empty list."""
    return value is None or value == []


class WireModel(BaseModel):
    """Strict about shape: unknown fields are refused so a typo is an error, not a silent default."""

    model_config = ConfigDict(extra="forbid", frozen=True)


REQUEST_CONFIG = ConfigDict(extra="forbid", frozen=True, strict=True)
"""What a client sends is also strict about types: `true` is no id, `"5"` no number (a JSON number
is still a float)."""


# --- enrollment -------------------------------------------------------------------------------------


class EnrollNonce(WireModel):
    """The controller's enrollment challenge: sign it within `expires_in_s`; it is accepted once."""

    nonce: str = Field(min_length=16, max_length=64)
    expires_in_s: int = Field(ge=1)


class EnrollRequest(WireModel):
    """A host asks to join. `signature` is the host's Ed25519 identity signature over
    `enroll_signing_bytes(request)`: it proves the host holds the identity key it names, so nobody can
    re-enroll someone else's identity, and it covers the controller's single-use `nonce`, so a recorded
    request cannot enroll again."""

    model_config = REQUEST_CONFIG

    preauth_key: str = Field(
        min_length=8,
        max_length=200,
        examples=["wgm_pak_3f9a..."],
        description="The secret part of the pre-auth key (before any '.'; see wire/preauth.py)",
    )
    nonce: str = Field(
        min_length=16, max_length=64, description="From POST /v1/enroll/nonce, used once, expires"
    )
    hostname: Hostname
    wg_public_key: WgPublicKey
    identity_public_key: IdPublicKey
    endpoints: list[Endpoint] = Field(
        default_factory=list, max_length=16, description="Underlay endpoints; empty: reachable only outbound."
    )
    listen_port: Port = 51820
    protocol_version: Int = PROTOCOL_VERSION
    signature: str = Field(
        max_length=200,
        description="base64 Ed25519 signature, see enroll_signing_bytes; one that is no base64 does not "
        "verify (403)",
    )


def enroll_signing_bytes(req: EnrollRequest) -> bytes:
    """The canonical bytes an enrolling host signs: every field but the signature, in a fixed order."""
    parts = [
        "wgmesh-enroll-v2",
        req.preauth_key,
        req.nonce,
        req.hostname,
        req.wg_public_key.base64(),
        req.identity_public_key.base64(),
        ",".join(req.endpoints),
        str(req.listen_port),
    ]
    return "\n".join(parts).encode()


class EnrollResponse(WireModel):
    node_id: NodeId
    name: str
    tunnel_address: IPAddress
    mesh_cidr: IPNetwork
    node_credential: str = Field(
        description="Bearer credential for every later call as this node. Shown once; store it 0600."
    )
    protocol_version: int = PROTOCOL_VERSION


# --- network map ------------------------------------------------------------------------------------


class Peer(WireModel):
    node_id: NodeId
    name: str
    role: Role
    wg_public_key: WgPublicKey
    identity_public_key: IdPublicKey
    tunnel_address: IPAddress
    endpoints: list[Endpoint] = Field(default_factory=list, description="Empty: wait for the peer to call.")
    allowed_ips: list[IPNetwork] = Field(
        description="The peer's own /32 plus destinations relayed through it."
    )
    persistent_keepalive: int | None = Field(default=None, ge=0, le=65535, description="None: off.")
    tags: list[str] = Field(
        default_factory=list,
        exclude_if=_empty,
        description="The peer's policy tags; absent: none (or no policy in force).",
    )


class Route(WireModel):
    """How this node reaches one destination: `via` is the peer that carries it (itself when direct)."""

    destination: NodeId
    destination_address: IPAddress
    via: NodeId
    cost: float | None = Field(default=None, description="Path weight; None when no measurements exist yet.")


class SelfNode(WireModel):
    node_id: NodeId
    name: str
    role: Role
    tunnel_address: IPAddress
    mesh_cidr: IPNetwork
    listen_port: Port
    key_rotation: int | None = Field(
        default=None,
        ge=1,
        exclude_if=_empty,
        description="A key rotation the controller asks this node to make (its id); None: none asked.",
    )
    tags: list[str] = Field(
        default_factory=list,
        exclude_if=_empty,
        description="This node's policy tags; absent: none (or no policy in force).",
    )


class FirewallRule(WireModel):
    """Connections one policy rule allows between this node and some peers (answers always return)."""

    rule: str = Field(description="The policy rule this comes from, as `wgmesh policy test` names it.")
    peers: list[IPNetwork] = Field(description="The other ends' tunnel addresses.")
    ports: list[str] = Field(
        description="Canonical port specs (`tcp/8000`, `udp/53-60`, `tcp`, `icmp`, `any`); see wire.policy."
    )


class NodePolicy(WireModel):
    """The part of the access policy one node enforces. Absent from a map: no policy, the full mesh."""

    version: int = Field(ge=1, description="Policy version this was made from; the agent reports it back.")
    inbound: list[FirewallRule] = Field(description="Connections peers may open to this node.")
    outbound: list[FirewallRule] = Field(description="Connections this node may open to peers.")
    mesh_ports: list[Port] = Field(
        default_factory=list, description="tcp ports open between this node and every peer (p2p)."
    )
    messages: dict[str, list[str]] = Field(
        default_factory=dict,
        description="p2p message type -> selectors of who may send it; unlisted types: anyone.",
    )


class NetMap(WireModel):
    """Everything one node's agent needs, and nothing about anyone else's private state.

    Canonical order: `peers` by node_id, `routes` by destination, each id at most once."""

    kind: Literal["full"] = Field(
        default="full",
        description="Tells a full map from a NetMapDelta in answers to `delta=1` polls; "
        "absent (old answers, cached maps): a full map.",
    )
    serial: int = Field(ge=1, description="Grows every time this node's map changes; same serial, same map.")
    node: SelfNode
    peers: list[Peer]
    routes: list[Route]
    forward: bool = Field(description="True when other nodes relay through this one: enable IP forwarding.")
    policy: NodePolicy | None = Field(
        default=None, exclude_if=_empty, description="None: no policy in force (full mesh)."
    )
    protocol_version: int = PROTOCOL_VERSION


class NetMapDelta(WireModel):
    """What changed in one node's map between serial `base_serial` (the map the agent holds) and
    `serial`, as Tailscale's MapResponse PeersChanged/PeersRemoved. Sent only to a poll that asked with
    `delta=1` and named, in `since`, a serial the controller can still diff from; `wire.delta.apply_delta`
    turns (held map, delta) into the full map at `serial`.

    Peers and routes not named here are unchanged; the node and the forward flag are always whole."""

    kind: Literal["delta"] = Field(description="Always 'delta': tells a delta from a full NetMap.")
    serial: int = Field(ge=1, description="Serial of the map this delta produces.")
    base_serial: int = Field(
        ge=1, description="Serial of the map this delta applies to; any other: ignore it."
    )
    node: SelfNode
    forward: bool = Field(description="As NetMap.forward at `serial`.")
    policy: NodePolicy | None = Field(
        default=None, exclude_if=_empty, description="As NetMap.policy at `serial` (always whole)."
    )
    peers_upserted: list[Peer] = Field(
        default_factory=list,
        description="Full records of peers new or changed since base_serial; absent: none.",
    )
    peers_removed: list[NodeId] = Field(
        default_factory=list, description="Node ids no longer peers; absent: none."
    )
    routes_upserted: list[Route] = Field(
        default_factory=list, description="Routes new or changed since base_serial; absent: none."
    )
    routes_removed: list[NodeId] = Field(
        default_factory=list, description="Destinations no longer routed; absent: none."
    )
    protocol_version: int = PROTOCOL_VERSION


def _update_kind(value: object) -> str:
    """`kind` of a poll answer; absent means a full map (a controller that predates deltas)."""
    kind = value.get("kind", "full") if isinstance(value, dict) else getattr(value, "kind", "full")
    return str(kind)


NetMapUpdate = Annotated[
    Annotated[NetMap, Tag("full")] | Annotated[NetMapDelta, Tag("delta")], Discriminator(_update_kind)
]
"""The answer to a `delta=1` poll: a full map or a delta, told apart by `kind` (absent: full)."""


# --- link measurements ------------------------------------------------------------------------------


class LinkMeasurement(WireModel):
    """The state of the DIRECT link to one peer, as this node sees it.

    While the peer is reached through a relay, probes to its tunnel address measure the relayed path, so
    the agent probes its probe address instead (agent.desired: always on the direct WireGuard path) and
    reports what came back; with no reply (or no probe addresses) it reports `loss=None` and
    `rtt_ms=None` and only the handshake age: a handshake newer than the moment the link went down
    proves the direct link works again. The controller believes neither end alone for lowering a weight.
    """

    model_config = REQUEST_CONFIG

    peer_id: NodeId
    rtt_ms: float | None = Field(default=None, ge=0, le=600_000, description="None: no reply, or not probed.")
    loss: float | None = Field(
        default=None, ge=0.0, le=1.0, description="Fraction of probes lost; None: not probed (relayed)."
    )
    handshake_age_s: float | None = Field(default=None, ge=0, description="None: never handshaken.")


class LinkReport(WireModel):
    model_config = REQUEST_CONFIG
    measurements: list[LinkMeasurement] = Field(max_length=10_000)


# --- admin ------------------------------------------------------------------------------------------


MAX_PREAUTH_EXPIRY_S = 10 * 365 * 86400  # ten years; `never` is None


MAX_TAGS = 16


class PreAuthKeyRequest(WireModel):
    model_config = REQUEST_CONFIG
    role: Role = "node"
    reusable: bool = False
    expires_in_s: Annotated[int, Field(ge=1, le=MAX_PREAUTH_EXPIRY_S), JSON_INT] | None = Field(
        default=3600, description="None: never expires."
    )
    tags: list[TagName] | None = Field(
        default=None,
        max_length=MAX_TAGS,
        description="The policy tags of the nodes it enrolls; None: their role is their only tag.",
    )


class PreAuthKeyInfo(WireModel):
    id: int
    role: Role
    reusable: bool
    created_at: datetime
    expires_at: datetime | None = Field(default=None, description="None: never expires.")
    revoked: bool
    used_count: int
    tags: list[str] | None = Field(default=None, description="None: its nodes' role is their only tag.")
    key: str | None = Field(default=None, description="The secret; present only in the response to create.")


class NodeInfo(WireModel):
    node_id: NodeId
    name: str
    role: Role
    wg_public_key: WgPublicKey
    identity_public_key: IdPublicKey
    tunnel_address: IPAddress
    endpoints: list[Endpoint]
    listen_port: Port
    enrolled_at: datetime
    last_seen: datetime | None = Field(default=None, description="None: never polled since enrollment.")
    serial: int
    key_created_at: datetime | None = Field(
        default=None, description="When the node's current WireGuard key was recorded; None: not known."
    )
    rotation: Literal["idle", "queued", "requested", "prepared"] = Field(
        default="idle", description="The node's key rotation now (wire.rotation.RotationState)."
    )
    tags: list[str] = Field(
        default_factory=list,
        description="Its policy tags: the policy document's entry for its name, else those its pre-auth "
        "key or an admin gave it, else its role.",
    )
    policy_version: int | None = Field(
        default=None,
        description="The policy version the node's agent last said it enforces; None: not said since "
        "the controller started, or no policy.",
    )
    policy_version_sent: int | None = Field(
        default=None,
        description="The policy version of the rules in the node's current map (its rules last changed "
        "then); the agent enforces them once policy_version says so. None: no policy.",
    )
    implausible_link_reports: int = Field(
        default=0,
        ge=0,
        description="Link measurements from this node the controller could not believe (an rtt below "
        "any tunnel's, or far below what the other end sees) since the controller started; they cannot "
        "lower a link's weight. Absent: 0.",
    )


class RemovedNodeInfo(WireModel):
    """A node an admin removed: enrollment refuses its keys (whatever pre-auth key comes with them) and
    its old credential is answered 410 Gone, until an admin allows it again."""

    node_id: NodeId
    name: str
    wg_public_key: WgPublicKey
    identity_public_key: IdPublicKey
    removed_at: datetime


class NodeTagsRequest(WireModel):
    """An admin's tags for a node, replacing those it has (they stay across re-enrollment)."""

    tags: list[TagName] | None = Field(
        max_length=MAX_TAGS, description="None: back to its role as its only tag; []: no tag at all."
    )


class TopologyEdge(WireModel):
    a: NodeId
    b: NodeId
    weight: float
    rtt_ms: float | None = None
    loss: float | None = None


class Topology(WireModel):
    nodes: list[NodeInfo]
    edges: list[TopologyEdge] = Field(
        description="The up links that were measured (or have a remembered weight), by (a, b)."
    )
    routes: dict[NodeId, list[Route]] = Field(
        description="The chosen routes of the node asked for with ?source=; empty without it."
    )
    unmeasured_links: int = Field(
        default=0, ge=0, description="Up links nobody measured yet (the default weight): counted, not listed."
    )


class ErrorBody(WireModel):
    detail: str


Status = Literal["ok"]
