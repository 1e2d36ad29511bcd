"""Who calls: the node and admin bearer credentials, checked before anything else of a request is read.

Rules:
- A route that needs a credential checks it first: a request without the right credential is answered
  401 (none, or unknown), 410 (the credential of a node an admin removed: for good, see
  controller.store's removed nodes) or 403 (the other kind) whatever its body, query or path, so nothing about the
  API's validation or the mesh's state reaches a caller who is not authenticated. `AuthFirstRoute`
  does this for every route whose dependencies name `caller_node` or `caller_admin`; those
  dependencies then only hand the already checked caller to the route.
- Every replica answers a credential alike: one it does not know yet catches it up once (a node
  enrolled through another replica a moment ago is a node here: 403 on an admin route, not 401).
- Only `Authorization: Bearer <credential>` counts; any other scheme is a missing credential.
"""

from __future__ import annotations

from collections.abc import Callable, Coroutine
from typing import Annotated, Any

from fastapi import Depends, Request, Response, Security
from fastapi.dependencies.models import Dependant
from fastapi.routing import APIRoute
from fastapi.security import HTTPAuthorizationCredentials, HTTPBearer

from controller.audited import AuditedControlPlane
from controller.control import ApiError

node_bearer = HTTPBearer(
    scheme_name="NodeCredential",
    description="The node credential from EnrollResponse.node_credential.",
    auto_error=False,
)
admin_bearer = HTTPBearer(
    scheme_name="AdminCredential",
    description="The admin credential from STATE_DIR/admin-credential on the controller host.",
    auto_error=False,
)

_CALLER_NODE = "wgmesh_caller_node"  # ASGI scope keys: what `AuthFirstRoute` already checked
_CALLER_ADMIN = "wgmesh_caller_admin"


def _plane(request: Request) -> AuditedControlPlane:
    plane: AuditedControlPlane = request.app.state.plane
    return plane


def bearer_of(request: Request) -> str | None:
    return bearer_credential(request.headers.get("authorization", ""))


def bearer_credential(authorization: str) -> str | None:
    """The credential of an `Authorization` header's value (None: none, or not `Bearer`)."""
    scheme, _, credential = authorization.partition(" ")
    credential = credential.strip()
    if scheme.lower() != "bearer" or not credential:
        return None
    return credential


async def authenticate_node(request: Request) -> int:
    """The node whose credential the request carries (ApiError 401/403 otherwise)."""
    node = await node_of_credential(_plane(request), bearer_of(request))
    request.scope[_CALLER_NODE] = node
    return node


async def node_of_credential(plane: AuditedControlPlane, credential: str | None) -> int:
    """The node whose credential this is (ApiError 401 none or unknown, 403 the admin's, 410 a removed
    node's)."""
    if credential is None:
        raise ApiError(401, "missing credential: send 'Authorization: Bearer <node credential>'")
    node = await plane.node_of(credential)
    if node is None:
        if plane.is_admin(credential):
            raise ApiError(403, "this route needs a node credential, not the admin credential")
        removed = await plane.removed_node_of(credential)
        if removed is not None:
            raise ApiError(
                410,
                f"node {removed.node_id} ({removed.name}) was removed from the mesh: this credential is "
                f"refused for good (an admin can allow its keys again: wgmesh nodes allow {removed.node_id})",
            )
        raise ApiError(401, "unknown node credential (was the node removed or re-enrolled?)")
    return node


async def authenticate_admin(request: Request) -> None:
    """Nothing when the request carries the admin credential; a refusal goes into the audit trail."""
    plane = _plane(request)
    credential = bearer_of(request)
    refusal = None
    if credential is None:
        refusal = ApiError(401, "missing credential: send 'Authorization: Bearer <admin credential>'")
    elif not plane.is_admin(credential):
        # a node enrolled through another replica a moment ago is a node here too (node_of catches up)
        if await plane.node_of(credential) is not None:
            refusal = ApiError(403, "this route needs the admin credential, not a node credential")
        else:
            refusal = ApiError(401, "wrong admin credential")
    if refusal is not None:
        plane.admin_refused(f"{request.method} {request.url.path}: {refusal.detail}")
        raise refusal
    request.scope[_CALLER_ADMIN] = True


async def caller_node(
    request: Request, _creds: Annotated[HTTPAuthorizationCredentials | None, Security(node_bearer)]
) -> int:
    """The node whose credential the request carries (checked by `AuthFirstRoute` already)."""
    node = request.scope.get(_CALLER_NODE)
    return node if isinstance(node, int) else await authenticate_node(request)


async def caller_admin(
    request: Request, _creds: Annotated[HTTPAuthorizationCredentials | None, Security(admin_bearer)]
) -> None:
    """Nothing: the admin credential was checked by `AuthFirstRoute` (again here for other routers)."""
    if request.scope.get(_CALLER_ADMIN) is not True:
        await authenticate_admin(request)


NodeCaller = Annotated[int, Depends(caller_node)]
ADMIN = Depends(caller_admin)


def _needed(dependant: Dependant) -> Callable[[Request], Coroutine[Any, Any, object]] | None:
    """The check a route's dependencies need (admin wins over node; None: no credential)."""
    calls = set()
    stack = [dependant]
    while stack:
        d = stack.pop()
        calls.add(d.call)
        stack.extend(d.dependencies)
    if caller_admin in calls:
        return authenticate_admin
    if caller_node in calls:
        return authenticate_node
    return None


class AuthFirstRoute(APIRoute):
    """A FastAPI route that checks its credential before the body is read or anything validated."""

    def get_route_handler(self) -> Callable[[Request], Coroutine[Any, Any, Response]]:
        handler = super().get_route_handler()
        check = _needed(self.dependant)
        if check is None:
            return handler

        async def authenticated(request: Request) -> Response:
            await check(request)
            return await handler(request)

        return authenticated
