"""The admin routes of the access policy: get, set, check, test, history, rollback (`wire.api.POLICY`),
and a node's tags (`PUT /v1/nodes/{id}/tags`).

Every route needs the admin credential; the work is `controller.control.ControlPlane`'s.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Annotated, Any

from fastapi import Body, FastAPI, Path
from fastapi.params import Depends

from controller.api_examples import NODE_INFO
from controller.control import ControlPlane
from wire import api
from wire.models import NodeInfo, NodeTagsRequest
from wire.policy import (
    PolicyCheckResult,
    PolicyInfo,
    PolicyRollbackRequest,
    PolicySetRequest,
    PolicyState,
    PolicyTestRequest,
    PolicyTestResult,
)

Errors = Callable[..., dict[int | str, dict[str, Any]]]

_TEXT = '[[rules]]\nname = "api"\nfrom = ["tag:client"]\nto = ["tag:supervisor"]\nports = ["tcp/8000"]\n'
_INFO = {
    "version": 3,
    "created_at": "2026-11-24T10:00:00Z",
    "author": "alice@ops",
    "action": "set",
    "restored": None,
    "text": None,
}
_SET = {
    "set": {
        "summary": "A TOML document",
        "value": {"text": _TEXT, "source": "policy.toml", "author": "alice"},
    }
}
_TEST = {"test": {"summary": "Client to API", "value": {"source": "h4", "destination": "h1", "port": "8000"}}}
_TAGS = {"tags": {"summary": "A worker with a GPU", "value": {"tags": ["worker", "gpu"]}}}
_ROLLBACK = {"rollback": {"summary": "Back to version 1", "value": {"version": 1, "author": "alice"}}}


def _ok(example: object) -> dict[int | str, dict[str, Any]]:
    return {200: {"content": {"application/json": {"example": example}}}}


def add_policy_routes(app: FastAPI, plane: ControlPlane, admin: Depends, errors: Errors) -> None:
    @app.put(
        api.NODES + "/{node_id}/tags",
        tags=["admin"],
        dependencies=[admin],
        response_model=NodeInfo,
        responses={
            **_ok({**NODE_INFO, "tags": ["gpu", "worker"]}),
            **errors(401, 403, 404, 413, 422),
        },
    )
    async def set_node_tags(
        node_id: Annotated[int, Path(ge=1, le=2**62, description="Node id")],
        req: Annotated[NodeTagsRequest, Body(openapi_examples=_TAGS)],
    ) -> NodeInfo:
        """Replace a node's tags (the policy document's `tags` entry for its name still wins); maps
        change at once where the policy in force says otherwise."""
        return await plane.set_node_tags(node_id, req)

    @app.get(
        api.POLICY,
        tags=["admin"],
        dependencies=[admin],
        response_model=PolicyState,
        responses={**_ok({"policy": {**_INFO, "text": _TEXT}}), **errors(401, 403)},
    )
    async def get_policy() -> PolicyState:
        """The policy in force, with its text; `policy` null: none (the full mesh)."""
        return plane.policy_state()

    @app.put(
        api.POLICY,
        tags=["admin"],
        dependencies=[admin],
        response_model=PolicyInfo,
        responses={**_ok(_INFO), **errors(401, 403, 413, 422)},
    )
    async def set_policy(req: Annotated[PolicySetRequest, Body(openapi_examples=_SET)]) -> PolicyInfo:
        """A new policy version, in force at once; a document with any problem is refused whole."""
        return await plane.set_policy(req)

    @app.post(
        api.POLICY + "/check",
        tags=["admin"],
        dependencies=[admin],
        response_model=PolicyCheckResult,
        responses={
            **_ok(
                {"ok": False, "problems": ["policy.toml: rules[0].ports[0]: 'tcp/80000': ports are 1-65535"]}
            ),
            **errors(401, 403, 413, 422),
        },
    )
    async def check_policy(
        req: Annotated[PolicySetRequest, Body(openapi_examples=_SET)],
    ) -> PolicyCheckResult:
        """Whether a document would be accepted, and every problem in it; nothing changes."""
        return plane.check_policy(req)

    @app.post(
        api.POLICY + "/test",
        tags=["admin"],
        dependencies=[admin],
        response_model=PolicyTestResult,
        responses={**_ok({"allowed": True, "rule": "api", "version": 3}), **errors(401, 403, 404, 422)},
    )
    async def test_policy(
        req: Annotated[PolicyTestRequest, Body(openapi_examples=_TEST)],
    ) -> PolicyTestResult:
        """May one node reach another (on a port), and which rule says so."""
        return plane.test_policy(req)

    @app.get(
        api.POLICY + "/history",
        tags=["admin"],
        dependencies=[admin],
        response_model=list[PolicyInfo],
        responses={**_ok([_INFO]), **errors(401, 403)},
    )
    async def policy_history() -> list[PolicyInfo]:
        """Every version, oldest first: who set it, when, and what it restored."""
        return await plane.policy_history()

    @app.post(
        api.POLICY + "/rollback",
        tags=["admin"],
        dependencies=[admin],
        response_model=PolicyInfo,
        responses={**_ok({**_INFO, "action": "rollback", "restored": 1}), **errors(401, 403, 404, 422)},
    )
    async def rollback_policy(
        req: Annotated[PolicyRollbackRequest, Body(openapi_examples=_ROLLBACK)],
    ) -> PolicyInfo:
        """Bring back an earlier version, as a new version."""
        return await plane.rollback_policy(req)
