"""The OpenAPI document: every v1 path, every operation with a success example, every request body with
an example that the wire models accept, both bearer schemes, and errors documented."""

from __future__ import annotations

import pytest
from pydantic import TypeAdapter

from tests.support import ControllerHarness
from wire import api
from wire.models import LinkReport, NetMap, NetMapDelta, NetMapUpdate, PreAuthKeyRequest

PATHS = {
    api.HEALTH: {"get"},
    api.ENROLL: {"post"},
    api.ENROLL_NONCE: {"post"},
    api.TLS_CA: {"get"},
    api.NETMAP: {"get"},
    api.LINKS: {"post"},
    api.NODES: {"get"},
    api.NODES + "/{node_id}": {"get", "delete"},
    api.NODES + "/{node_id}/rotate": {"post"},
    api.NODES + "/{node_id}/tags": {"put"},
    api.REMOVED_NODES: {"get"},
    api.REMOVED_NODES + "/{node_id}": {"delete"},
    api.ROTATE_ALL: {"post"},
    api.ROTATIONS: {"get"},
    api.KEY: {"post"},
    api.PREAUTH_KEYS: {"get", "post"},
    api.PREAUTH_KEYS + "/{key_id}": {"delete"},
    api.TOPOLOGY: {"get"},
    api.POLICY: {"get", "put"},
    api.POLICY + "/check": {"post"},
    api.POLICY + "/test": {"post"},
    api.POLICY + "/history": {"get"},
    api.POLICY + "/rollback": {"post"},
    api.AUDIT: {"get"},
    api.METRICS: {"get"},
    api.UI_TICKETS: {"post"},
}


@pytest.fixture
async def openapi(controller: ControllerHarness) -> dict:
    r = await controller.client.get("/openapi.json")
    assert r.status_code == 200
    return r.json()


async def test_every_v1_path_and_method_is_documented(openapi):
    documented = {p: set(ops) for p, ops in openapi["paths"].items()}
    assert documented == PATHS


async def test_every_operation_has_a_success_example_and_documented_errors(openapi):
    for path, ops in openapi["paths"].items():
        for method, op in ops.items():
            ok = next(code for code in op["responses"] if code.startswith("2"))
            content = op["responses"][ok].get("content")
            if ok == "204":
                continue
            assert any("example" in c or "examples" in c for c in content.values()), (
                f"{method} {path}: no example"
            )
            if path != api.HEALTH:
                errors = [c for c in op["responses"] if c.startswith("4")]
                assert errors, f"{method} {path}: no error documented"


async def test_request_body_examples_are_valid_requests(openapi):
    models = {api.LINKS: LinkReport, api.PREAUTH_KEYS: PreAuthKeyRequest}
    for path, model in models.items():
        body = openapi["paths"][path]["post"]["requestBody"]["content"]["application/json"]
        for example in body["examples"].values():
            model.model_validate(example["value"])
    enroll = openapi["paths"][api.ENROLL]["post"]["requestBody"]["content"]["application/json"]
    assert enroll["examples"]


async def test_the_netmap_examples_are_a_map_and_a_delta_that_applies_to_it(openapi):
    op = openapi["paths"][api.NETMAP]["get"]
    examples = op["responses"]["200"]["content"]["application/json"]["examples"]
    full = NetMap.model_validate(examples["full"]["value"])
    delta = TypeAdapter(NetMapUpdate).validate_python(examples["delta"]["value"])
    assert isinstance(delta, NetMapDelta) and delta.serial == full.serial
    # the delta's upserts are records of the full map
    assert all(p in full.peers for p in delta.peers_upserted)
    assert all(r in full.routes for r in delta.routes_upserted)
    assert {p["name"] for p in op["parameters"]} == {"since", "timeout", "delta", "policy"}


async def test_node_and_admin_routes_name_their_bearer_scheme(openapi):
    schemes = openapi["components"]["securitySchemes"]
    assert (
        schemes["NodeCredential"]["scheme"] == "bearer" and schemes["AdminCredential"]["scheme"] == "bearer"
    )
    assert openapi["paths"][api.NETMAP]["get"]["security"] == [{"NodeCredential": []}]
    assert openapi["paths"][api.NODES]["get"]["security"] == [{"AdminCredential": []}]


async def test_every_operation_documents_the_errors_the_shared_layers_answer(openapi):
    for path, ops in openapi["paths"].items():
        for method, op in ops.items():
            codes = set(op["responses"])
            assert {"400", "413", "503"} <= codes, f"{method} {path}: {sorted(codes)}"
            if "requestBody" in op:
                assert {"415", "422"} <= codes, f"{method} {path}: {sorted(codes)}"
            if op.get("security"):
                assert {"401", "403"} <= codes, f"{method} {path}: {sorted(codes)}"
    assert "429" in openapi["paths"][api.NETMAP]["get"]["responses"]


async def test_a_wrong_method_names_every_method_of_the_path(controller: ControllerHarness):
    r = await controller.client.request("PATCH", api.NODES + "/1", headers=controller.admin)
    assert r.status_code == 405
    assert r.headers["allow"] == "DELETE, GET"
    r = await controller.client.request("DELETE", api.POLICY, headers=controller.admin)
    assert r.status_code == 405 and r.headers["allow"] == "GET, PUT"


@pytest.mark.parametrize("method", ["GET", "DELETE", "OPTIONS"])
async def test_a_path_of_its_own_is_no_value_of_another_paths_parameter(
    controller: ControllerHarness, method
):
    # /v1/nodes/rotate-all is that resource, not node "rotate-all" of /v1/nodes/{node_id}
    r = await controller.client.request(method, api.ROTATE_ALL, headers=controller.admin)
    assert r.status_code == 405 and r.headers["allow"] == "POST", r.text
    r = await controller.client.get(api.NODES + "/rotate-al", headers=controller.admin)
    assert r.status_code == 422 and "node_id" in r.json()["detail"]


@pytest.mark.parametrize(
    ("path", "body", "field"),
    [
        (api.LINKS, {"measurements": [{"peer_id": True, "loss": 1.0}]}, "peer_id"),
        (api.LINKS, {"measurements": [{"peer_id": "2", "loss": 1.0}]}, "peer_id"),
        (api.PREAUTH_KEYS, {"reusable": 1}, "reusable"),
        (api.PREAUTH_KEYS, {"expires_in_s": "3600"}, "expires_in_s"),
        (api.POLICY + "/rollback", {"version": True}, "version"),
        (api.POLICY + "/rollback", {"version": 1.5}, "version"),
    ],
)
async def test_the_models_are_strict_about_types(controller: ControllerHarness, path, body, field):
    node = await controller.enroll()
    auth = node.auth if path == api.LINKS else controller.admin
    r = await controller.client.post(path, json=body, headers=auth)
    assert r.status_code == 422 and field in r.json()["detail"], r.text


async def test_an_integer_may_be_written_as_a_json_number_without_fraction(controller: ControllerHarness):
    # JSON Schema's `integer` takes 3600.0; so does the API
    r = await controller.client.post(
        api.PREAUTH_KEYS, json={"expires_in_s": 3600.0}, headers=controller.admin
    )
    assert r.status_code == 201, r.text


async def test_a_link_report_that_does_not_fit_the_mesh_is_a_conflict(controller: ControllerHarness):
    node = await controller.enroll()
    for measurements in ([{"peer_id": 99}], [{"peer_id": node.node_id}]):
        r = await controller.client.post(api.LINKS, json={"measurements": measurements}, headers=node.auth)
        assert r.status_code == 409, r.text
