"""Wire models of WireGuard key rotation: the agent-to-agent notice and ack, the agent's key report to
the controller, and the admin views of rotations.

The protocol (DESIGN.md "Key rotation"; issue 11):
1. The controller asks node N to rotate by putting a rotation id in N's own map (`SelfNode.key_rotation`).
2. N makes a new key on the host, persists it as pending, and reports it to the controller
   (`KeyReport` phase "prepare"). A controller that cannot be reached delays the rotation here.
3. N sends every peer's agent a `RotationNotice` (one UDP datagram to the peer's tunnel address,
   signed with N's identity key) and switches its private key at once. Each peer swaps N's old key for
   the new one in one configuration call and answers with a `RotationAck`.
4. N reports the switch (`KeyReport` phase "commit"): the controller records the new key and pushes
   every peer's map, the fallback for a peer that missed the notice.

Signatures are Ed25519 over `signing_bytes(...)`: every field but the signature, in a fixed order.
"""

from __future__ import annotations

from datetime import datetime
from typing import Annotated, Literal

from pydantic import Field

from wire.fields import JSON_INT, WgPublicKey
from wire.models import REQUEST_CONFIG, NodeId, WireModel

ROTATION_PORT = 51822
"""UDP port of the agent's rotation listener, bound to its tunnel address."""

RotationId = int
KeyReportPhase = Literal["prepare", "commit"]
RotationState = Literal["idle", "queued", "requested", "prepared"]
"""idle: nothing asked; queued: waits its turn in a `rotate --all`; requested: in the node's map, the
node has not answered yet; prepared: the node made its new key and is switching to it."""
RotationOutcome = Literal["done", "timed_out", "cancelled"]


class RotationNotice(WireModel):
    """N to each peer's agent, sent right before N switches: swap `old` for `new` now."""

    kind: Literal["rotation_notice"] = "rotation_notice"
    node_id: NodeId = Field(description="The rotating node.")
    rotation_id: RotationId = Field(ge=1)
    old_wg_public_key: WgPublicKey
    new_wg_public_key: WgPublicKey
    signature: str = Field(default="", description="base64 Ed25519 by N's identity key; see signing_bytes")


class RotationAck(WireModel):
    """A peer to N: it now holds N's new key (from the notice, or already from its map)."""

    kind: Literal["rotation_ack"] = "rotation_ack"
    node_id: NodeId = Field(description="The peer that swapped.")
    rotation_id: RotationId = Field(ge=1)
    new_wg_public_key: WgPublicKey = Field(description="The rotating node's new key, as the peer holds it.")
    signature: str = Field(default="", description="base64 Ed25519 by the peer's identity key")


def signing_bytes(message: RotationNotice | RotationAck) -> bytes:
    """The canonical bytes a notice or ack is signed over."""
    if isinstance(message, RotationNotice):
        parts = [
            "wgmesh-rotation-notice-v1",
            str(message.node_id),
            str(message.rotation_id),
            message.old_wg_public_key.base64(),
            message.new_wg_public_key.base64(),
        ]
    else:
        parts = [
            "wgmesh-rotation-ack-v1",
            str(message.node_id),
            str(message.rotation_id),
            message.new_wg_public_key.base64(),
        ]
    return "\n".join(parts).encode()


class KeyReport(WireModel):
    """POST /v1/key (node): this node's new WireGuard public key for rotation `rotation_id`.

    "prepare": the key is made and about to be switched to (the controller keeps it as pending);
    "commit": the node switched; the controller records the key and pushes every peer's map."""

    model_config = REQUEST_CONFIG

    rotation_id: Annotated[RotationId, Field(ge=1), JSON_INT]
    phase: KeyReportPhase
    wg_public_key: WgPublicKey


class KeyReportAnswer(WireModel):
    rotation_id: RotationId
    phase: KeyReportPhase
    serial: int = Field(description="The node's map serial after the report.")


class RotationInfo(WireModel):
    """One node's key and rotation, as `nodes rotate` and the progress table show them."""

    node_id: NodeId
    name: str
    state: RotationState
    rotation_id: RotationId | None = Field(default=None, description="None: never rotated or asked.")
    key_created_at: datetime | None = Field(default=None, description="None: not known.")
    requested_at: datetime | None = Field(default=None, description="None: nothing asked now.")
    finished_at: datetime | None = Field(default=None, description="None: no rotation finished yet.")
    outcome: RotationOutcome | None = Field(default=None, description="Of the last finished rotation.")
    queue_position: int | None = Field(
        default=None, description="Place in a running --all; None: not queued."
    )


class RotationProgress(WireModel):
    """GET /v1/rotations (admin): every node's rotation, and whether a `rotate --all` runs."""

    campaign_running: bool
    nodes: list[RotationInfo]
