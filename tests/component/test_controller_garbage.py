"""Garbage at every route: malformed JSON, wrong types, invalid keys and CIDRs, unknown ids, huge
numbers, oversized bodies, wrong content types and methods. Always a 4xx with a one-line reason,
never a 500, and nothing changes."""

from __future__ import annotations

import json
import math
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from controller.app import create_app
from controller.credentials import admin_credential_path
from controller.settings import Settings
from controller.sqlstore import SqlStore
from tests.support import MESH_CIDR, ManualClock, SyncClient, enroll_request, make_host
from wire import api

ROUTES = [
    ("GET", api.HEALTH),
    ("POST", api.ENROLL),
    ("GET", api.NETMAP),
    ("POST", api.LINKS),
    ("GET", api.NODES),
    ("GET", api.NODES + "/{id}"),
    ("DELETE", api.NODES + "/{id}"),
    ("POST", api.PREAUTH_KEYS),
    ("GET", api.PREAUTH_KEYS),
    ("DELETE", api.PREAUTH_KEYS + "/{id}"),
    ("GET", api.TOPOLOGY),
]
MAX_BODY = 4096


class World:
    """A controller with two nodes and a key, reached through a synchronous client."""

    def __init__(self, tmp: Path) -> None:
        settings = Settings(state_dir=tmp, mesh_cidr=MESH_CIDR, max_body_bytes=MAX_BODY)
        self.store = SqlStore(settings.database_url)
        self.client = SyncClient(create_app(settings, self.store, ManualClock()))
        admin = admin_credential_path(tmp).read_text().strip()
        self.admin = {"Authorization": f"Bearer {admin}"}
        self.nodes = []
        for i in range(2):
            host = make_host(f"h{i}", i + 1)
            key = self.client.post(api.PREAUTH_KEYS, json={}, headers=self.admin).json()["key"]
            nonce = self.client.post(api.ENROLL_NONCE).json()["nonce"]
            r = self.client.post(
                api.ENROLL, content=enroll_request(host, key, nonce).model_dump_json(), headers=JSON
            )
            assert r.status_code == 200, r.text
            self.nodes.append({"Authorization": f"Bearer {r.json()['node_credential']}"})
        # a usable key, so that enrollments get past the key check to what else is wrong with them
        self.key = self.client.post(api.PREAUTH_KEYS, json={"reusable": True}, headers=self.admin).json()[
            "key"
        ]

    def state(self) -> Any:
        """What must not change: nodes, keys, maps, topology."""
        nodes = self.client.get(api.NODES, headers=self.admin).json()
        for n in nodes:
            n.pop("last_seen")  # a poll is allowed to say the node is alive
        keys = self.client.get(api.PREAUTH_KEYS, headers=self.admin).json()
        maps = [self.client.get(api.NETMAP, headers=h).json() for h in self.nodes]
        topology = self.client.get(api.TOPOLOGY, headers=self.admin).json()
        return nodes, keys, maps, topology


JSON = {"Content-Type": "application/json"}


@pytest.fixture(scope="module")
def world(tmp_path_factory: pytest.TempPathFactory) -> Iterator[World]:
    w = World(tmp_path_factory.mktemp("garbage"))
    with w.client:
        yield w
    w.store.close()


def check(response: Any, route: str) -> None:
    assert response.status_code < 500, f"{route}: {response.status_code} {response.text}"
    if response.status_code >= 400:
        body = response.json()
        assert isinstance(body.get("detail"), str) and body["detail"], f"{route}: no reason in {body}"
        assert "\n" not in body["detail"]


json_values = st.recursive(
    st.none()
    | st.booleans()
    | st.integers(min_value=-(2**70), max_value=2**70)
    | st.floats(allow_nan=False)
    | st.text(max_size=30),
    lambda children: (
        st.lists(children, max_size=4) | st.dictionaries(st.text(max_size=12), children, max_size=4)
    ),
    max_leaves=12,
)
field_names = st.sampled_from(
    [
        "preauth_key",
        "hostname",
        "wg_public_key",
        "identity_public_key",
        "endpoints",
        "listen_port",
        "signature",
        "protocol_version",
        "measurements",
        "peer_id",
        "rtt_ms",
        "loss",
        "handshake_age_s",
        "role",
        "reusable",
        "expires_in_s",
    ]
)
# Bodies shaped like the real ones, with wrong values in the right places.
plausible = st.dictionaries(field_names, json_values, max_size=8) | st.fixed_dictionaries(
    {"measurements": st.lists(st.dictionaries(field_names, json_values, max_size=4), max_size=3)}
)
raw_bodies = st.one_of(
    st.binary(max_size=200),
    st.text(max_size=200).map(str.encode),
    json_values.map(lambda v: json.dumps(v).encode()),
    plausible.map(lambda v: json.dumps(v).encode()),
    st.sampled_from(
        [
            b"{",
            b"[1,2",
            b'{"a":NaN}',
            b'{"measurements":[{"peer_id":1,"handshake_age_s":Infinity}]}',
            b"\xff\xfe",
            b"null",
        ]
    ),
)
path_ids = st.one_of(
    st.integers(min_value=-(2**80), max_value=2**80).map(str),
    st.sampled_from(["abc", "1.5", "", "%00", "1e3", "0x10", "99999999999999999999999999"]),
)
query_values = st.one_of(
    st.text(max_size=20),
    st.integers(min_value=-(2**70), max_value=2**70).map(str),
    st.just("nan"),
    st.just("inf"),
)


@settings(max_examples=300, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(
    route=st.sampled_from(ROUTES),
    who=st.sampled_from(["none", "admin", "node"]),
    body=raw_bodies,
    content_type=st.sampled_from(["application/json", "text/plain", None]),
    path_id=path_ids,
    query=st.dictionaries(st.sampled_from(["since", "timeout", "format", "x"]), query_values, max_size=3),
)
def test_garbage_never_gives_a_500_and_changes_nothing(world, route, who, body, content_type, path_id, query):
    method, path = route
    if "timeout" in query:
        query["timeout"] = "0"  # garbage must not hold the test for minutes; wrong types come from `since`
    headers = {"admin": world.admin, "node": world.nodes[0], "none": {}}[who].copy()
    if content_type:
        headers["Content-Type"] = content_type
    url = path.replace("{id}", path_id)
    before = world.state() if method != "GET" else None
    if method == "DELETE" and path_id.isdigit():
        url = path.replace("{id}", str(int(path_id) + 1000))  # unknown ids only: real deletes change state
    r = world.client.request(method, url, content=body, params=query, headers=headers)
    check(r, f"{method} {url}")
    if before is not None and r.status_code >= 400:
        assert world.state() == before


@pytest.mark.parametrize(
    ("body", "reason"),
    [
        (b"{", "malformed JSON"),
        (b'{"measurements": [{"peer_id": "x"}]}', "peer_id"),
        (b'{"measurements": [{"peer_id": 999}]}', "unknown peer ids 999"),
        (b'{"measurements": [{"peer_id": 2, "loss": 2}]}', "loss"),
        (b'{"measurements": [{"peer_id": 2, "rtt_ms": -1}]}', "rtt_ms"),
        (b'{"measurements": [{"peer_id": 2}, {"peer_id": 2}]}', "more than once"),
        (b'{"measurements": [], "extra": 1}', "extra"),
    ],
)
def test_bad_link_reports_say_what_is_wrong(world, body, reason):
    before = world.state()
    r = world.client.post(api.LINKS, content=body, headers={**world.nodes[0], **JSON})
    assert 400 <= r.status_code < 500 and reason in r.json()["detail"], r.text
    assert world.state() == before


def test_infinite_handshake_age_is_taken_as_long_ago(world):
    body = b'{"measurements": [{"peer_id": 2, "handshake_age_s": Infinity}]}'
    for _ in range(2):  # the first takes the link down, the second asks whether it came back
        r = world.client.post(api.LINKS, content=body, headers={**world.nodes[0], **JSON})
        assert r.status_code == 204, r.text


@pytest.mark.parametrize(
    ("change", "reason"),
    [
        ({"wg_public_key": "not-a-key"}, "wg_public_key"),
        ({"wg_public_key": "A" * 43 + "="}, None),  # a valid key of nobody: accepted shape
        ({"identity_public_key": "@" * 44}, "identity_public_key"),
        ({"endpoints": ["198.18.0.1"]}, "endpoints"),
        ({"endpoints": ["[fe80::1]:0"]}, "port"),
        ({"hostname": "bad_host"}, "hostname"),
        ({"listen_port": 70000}, "listen_port"),
        ({"signature": "%%%"}, "signature"),
        ({"preauth_key": "short"}, "preauth_key"),
    ],
)
def test_bad_enrollments_say_what_is_wrong_and_change_nothing(world, change, reason):
    before = world.state()
    body = json.loads(enroll_request(make_host("h7", 7), world.key).model_dump_json())
    body.update(change)
    r = world.client.post(api.ENROLL, content=json.dumps(body), headers=JSON)
    assert 400 <= r.status_code < 500, r.text
    if reason:
        assert reason in r.json()["detail"], r.text
    assert world.state() == before


@pytest.mark.parametrize("size", [MAX_BODY + 1, 10 * MAX_BODY])
def test_oversized_bodies_are_refused_before_parsing(world, size):
    before = world.state()
    body = b'{"measurements": [' + b" " * size + b"]}"
    r = world.client.post(api.LINKS, content=body, headers={**world.nodes[0], **JSON})
    assert r.status_code == 413 and "too large" in r.json()["detail"]
    chunks = iter([body[:100], body[100:]])  # no Content-Length: counted while reading
    r = world.client.post(api.LINKS, content=chunks, headers={**world.nodes[0], **JSON})
    assert r.status_code == 413
    assert world.state() == before


def test_unknown_ids_are_404_with_the_id(world):
    for method, path in (
        ("GET", f"{api.NODES}/77"),
        ("DELETE", f"{api.NODES}/77"),
        ("DELETE", f"{api.PREAUTH_KEYS}/77"),
    ):
        r = world.client.request(method, path, headers=world.admin)
        assert r.status_code == 404 and "77" in r.json()["detail"]


def test_wrong_methods_and_paths_are_4xx(world):
    assert world.client.put(api.NODES, headers=world.admin).status_code == 405
    assert world.client.get("/v1/nope", headers=world.admin).status_code == 404
    assert world.client.get(api.TOPOLOGY, params={"format": "svg"}, headers=world.admin).status_code == 422


def test_the_math_of_timeouts_is_bounded(world):
    for timeout in ("-1", str(api.NETMAP_MAX_TIMEOUT_S + 1), "nan", "inf"):
        r = world.client.get(api.NETMAP, params={"timeout": timeout}, headers=world.nodes[0])
        assert r.status_code == 422, (timeout, r.text)
    assert math.isfinite(api.NETMAP_MAX_TIMEOUT_S)
