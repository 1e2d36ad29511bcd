"""The admin route of the audit trail: `GET /v1/audit` (`wire.api.AUDIT`), filtered by time, node and
action, oldest first. The events are `controller.audited.AuditedControlPlane`'s.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Annotated, Any

from fastapi import FastAPI, Query
from fastapi.params import Depends

from controller.audited import AuditedControlPlane
from controller.control import ApiError
from controller.store import AuditQuery
from wire import api
from wire.audit import AUDIT_FILTERS, AUDIT_MAX_LIMIT, AuditEvent, action_filter_problem
from wire.fields import Rfc3339

Errors = Callable[..., dict[int | str, dict[str, Any]]]

_EVENT = {
    "id": 7,
    "at": "2026-11-24T10:00:00Z",
    "actor": "admin (alice@ops)",
    "action": "policy.set",
    "result": "ok",
    "source": "198.18.0.1",
    "node_id": None,
    "node_name": None,
    "policy_version": 3,
    "detail": "version 3 from policy.toml",
}


def add_audit_routes(app: FastAPI, plane: AuditedControlPlane, admin: Depends, errors: Errors) -> None:
    @app.get(
        api.AUDIT,
        tags=["admin"],
        dependencies=[admin],
        response_model=list[AuditEvent],
        responses={
            200: {"content": {"application/json": {"example": [_EVENT]}}},
            **errors(401, 403, 422),
        },
    )
    async def audit(
        since: Annotated[
            Rfc3339 | None, Query(description="Only events at or after this time (RFC 3339, with a zone)")
        ] = None,
        node: Annotated[
            str | None, Query(max_length=253, description="Only events about this node (id or name)")
        ] = None,
        action: Annotated[
            str | None,
            Query(
                max_length=32,
                description="Only this action, or those under it ('policy': policy.*)",
                json_schema_extra={"enum": list(AUDIT_FILTERS)},
            ),
        ] = None,
        limit: Annotated[
            int, Query(ge=1, le=AUDIT_MAX_LIMIT, description="At most this many, the newest")
        ] = 1000,
    ) -> list[AuditEvent]:
        """Admin actions and security events: who, what, when, the result and the source address."""
        if action is not None and (problem := action_filter_problem(action)):
            raise ApiError(422, f"query.action: {problem}")
        return await plane.audit_events(AuditQuery(since=since, node=node, action=action, limit=limit))
