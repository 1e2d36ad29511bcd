"""The audit trail's wire models: one `AuditEvent` per admin action or security event, as
`GET /v1/audit` (admin) returns them, oldest first.

What an event says: who (`actor`), what (`action`, `detail`, the node and policy version it concerns),
when (`at`), the `result`, and the `source` address of the request. Rules:
- No secret is ever part of an event: not a credential, not a pre-auth key, not a private key. A
  pre-auth key is named by its id.
- `actor` is "admin" for a call with the admin credential, followed by the name the admin's client
  gave in parentheses ("admin (alice@ops)"; a claim, not a proof: there is one admin credential),
  "node NAME" for a node's own call, "host HOSTNAME" for an enrollment, "anonymous" for a request
  without a valid credential, and "controller" for what the controller does on its own (a scheduled
  rotation, a rotation given up).
"""

from __future__ import annotations

import re
from datetime import datetime
from typing import Literal

from pydantic import BaseModel, ConfigDict, Field

AuditAction = Literal[
    "enroll",  # a host enrolled (ok) or was refused (refused)
    "node.remove",
    "node.allow",  # an admin let a removed node's keys enroll again
    "node.tag",  # an admin set a node's tags
    "preauth.create",
    "preauth.revoke",
    "policy.set",
    "policy.rollback",
    "policy.clear",  # back to no policy: the full mesh
    "key.rotate",  # a rotation asked of one node (by an admin, or by the schedule)
    "key.rotate_all",
    "key.commit",  # a node recorded its new WireGuard key
    "key.timeout",  # a node asked to rotate never answered: given up
    "admin.auth",  # a call to an admin route without the admin credential
    "ui.login",  # a browser session of the topology page started (controller.ui)
]
AUDIT_ACTIONS: tuple[str, ...] = AuditAction.__args__  # type: ignore[attr-defined]

AuditResult = Literal["ok", "refused", "failed"]

ACTOR_HEADER = "X-Wgmesh-Actor"
"""The header an admin's client names its user with (`user@host`); shown in `actor`, never trusted."""
MAX_ACTOR = 100
_ACTOR = re.compile(r"^[\x21-\x7e][\x20-\x7e]{0,99}$")


def clean_actor(value: str | None) -> str | None:
    """The claimed name if it is 1-100 printable ASCII characters, else None (it is then left out)."""
    if value is None:
        return None
    value = value.strip()
    return value if _ACTOR.match(value) else None


class AuditEvent(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True)

    id: int = Field(ge=1, description="Grows with every event; never reused.")
    at: datetime
    actor: str = Field(max_length=300)
    action: AuditAction
    result: AuditResult
    source: str | None = Field(
        default=None, max_length=64, description="The request's source address; None: not a request."
    )
    node_id: int | None = Field(default=None, description="The node it concerns; None: none.")
    node_name: str | None = Field(default=None, description="That node's name at the time.")
    policy_version: int | None = Field(default=None, description="The policy version it made; None: none.")
    detail: str = Field(default="", max_length=1000, description="One line: what, or why it was refused.")


def action_filter_problem(value: str) -> str | None:
    """None when `value` names an action or a prefix of some ('policy'); else what is wrong."""
    if value in AUDIT_ACTIONS or any(a.startswith(value + ".") for a in AUDIT_ACTIONS):
        return None
    return f"{value!r} is not an action: one of {', '.join(AUDIT_ACTIONS)}, or a prefix ('policy', 'key')"


AUDIT_FILTERS: tuple[str, ...] = tuple(
    sorted({a.rsplit(".", i)[0] for a in AUDIT_ACTIONS for i in range(a.count(".") + 1)})
)
"""What GET /v1/audit's `action` takes: an action, or a prefix of some ('policy' for policy.*)."""

AUDIT_MAX_LIMIT = 10_000
