"""The errors the OpenAPI document names for every operation: the ones the app's shared layers answer,
whichever route they stop a request on (routes document their own on top).

Rules (each from the layer that answers it):
- every operation: 400 (a Content-Length that is no number), 413 (a body over the limit: `BodyLimit`),
  503 (this replica cannot reach its database);
- an operation with a request body: 400 (malformed JSON), 415 (not JSON), 422 (invalid fields);
- an operation with parameters: 422;
- an operation that needs a credential: 401 (none or unknown), 403 (the other kind: `AuthFirstRoute`).
The error body is always `ErrorBody` (`{"detail": "<one line>"}`).
"""

from __future__ import annotations

from typing import Any

from wire.models import ErrorBody

_TEXT = {
    400: "malformed request",
    401: "missing or unknown credential",
    403: "credential not allowed here, or enrollment refused",
    413: "request body too large",
    415: "the body is not JSON (Content-Type: application/json)",
    422: "invalid field values",
    503: "this replica cannot reach its database",
}
_METHODS = {"get", "put", "post", "delete", "patch", "head", "options"}


def statuses_of(op: dict[str, Any]) -> set[int]:
    """What the shared layers may answer for this operation."""
    out = {400, 413, 503}
    if "requestBody" in op:
        out |= {400, 415, 422}
    if op.get("parameters"):
        out.add(422)
    if op.get("security"):
        out |= {401, 403}
    return out


def document_errors(schema: dict[str, Any]) -> dict[str, Any]:
    """Add the shared layers' errors to every operation of `schema` that does not name them (in place;
    a second call changes nothing)."""
    ref = {"$ref": "#/components/schemas/ErrorBody"}
    schemas = schema.setdefault("components", {}).setdefault("schemas", {})
    schemas.setdefault("ErrorBody", ErrorBody.model_json_schema())
    for item in schema.get("paths", {}).values():
        for method, op in item.items():
            if method not in _METHODS:
                continue
            responses = op.setdefault("responses", {})
            for status in sorted(statuses_of(op)):
                responses.setdefault(
                    str(status),
                    {"description": _TEXT[status], "content": {"application/json": {"schema": ref}}},
                )
    return schema
