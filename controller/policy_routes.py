"""The admin routes of the access policy: get, set, check, test, history, rollback (`wire.api.POLICY`).

Every route needs the admin credential; the work is `controller.control.ControlPlane`'s.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Annotated, Any

from fastapi import Body, FastAPI
from fastapi.params import Depends

from controller.control import ControlPlane
from wire import api
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


def add_policy_routes(app: FastAPI, plane: ControlPlane, admin: Depends, errors: Errors) -> None:
    @app.get(
        api.POLICY,
        tags=["admin"],
        dependencies=[admin],
        response_model=PolicyState,
        responses=errors(401, 403),
    )
    async def get_policy() -> PolicyState:
        """The policy in force, with its text; `policy` null: none (the full mesh)."""
        return plane.policy_state()

    @app.put(
        api.POLICY,
        tags=["admin"],
        dependencies=[admin],
        response_model=PolicyInfo,
        responses=errors(401, 403, 413, 422),
    )
    async def set_policy(req: Annotated[PolicySetRequest, Body()]) -> PolicyInfo:
        """A new policy version, in force at once; a document with any problem is refused whole."""
        return plane.set_policy(req)

    @app.post(
        api.POLICY + "/check",
        tags=["admin"],
        dependencies=[admin],
        response_model=PolicyCheckResult,
        responses=errors(401, 403, 413, 422),
    )
    async def check_policy(req: Annotated[PolicySetRequest, Body()]) -> PolicyCheckResult:
        """Whether a document would be accepted, and every problem in it; nothing changes."""
        return plane.check_policy(req)

    @app.post(
        api.POLICY + "/test",
        tags=["admin"],
        dependencies=[admin],
        response_model=PolicyTestResult,
        responses=errors(401, 403, 404, 422),
    )
    async def test_policy(req: Annotated[PolicyTestRequest, Body()]) -> PolicyTestResult:
        """May one node reach another (on a port), and which rule says so."""
        return plane.test_policy(req)

    @app.get(
        api.POLICY + "/history",
        tags=["admin"],
        dependencies=[admin],
        response_model=list[PolicyInfo],
        responses=errors(401, 403),
    )
    async def policy_history() -> list[PolicyInfo]:
        """Every version, oldest first: who set it, when, and what it restored."""
        return plane.policy_history()

    @app.post(
        api.POLICY + "/rollback",
        tags=["admin"],
        dependencies=[admin],
        response_model=PolicyInfo,
        responses=errors(401, 403, 404, 422),
    )
    async def rollback_policy(req: Annotated[PolicyRollbackRequest, Body()]) -> PolicyInfo:
        """Bring back an earlier version, as a new version."""
        return plane.rollback_policy(req)
