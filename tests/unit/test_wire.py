"""Wire models: typed keys on the wire, strict shapes, errors that say what is wrong."""

from __future__ import annotations

import pytest
from pydantic import ValidationError

from keys.types import IdentityPrivateKey, WireGuardPrivateKey
from wire.fields import parse_endpoint
from wire.models import EnrollRequest, LinkMeasurement, enroll_signing_bytes


def enroll_body(**overrides):
    body = {
        "preauth_key": "wgm_pak_0123456789",
        "nonce": "q8V4m2Lr0cTz6YxN1bWs3A",
        "hostname": "web-1",
        "wg_public_key": WireGuardPrivateKey.generate().public_key().base64(),
        "identity_public_key": IdentityPrivateKey.generate().public_key().base64(),
        "endpoints": ["198.18.0.2:51820"],
        "listen_port": 51820,
        "signature": "c2ln",
    }
    body.update(overrides)
    return body


def test_round_trip_keeps_typed_keys():
    req = EnrollRequest.model_validate(enroll_body())
    again = EnrollRequest.model_validate_json(req.model_dump_json())
    assert again == req
    assert enroll_signing_bytes(again) == enroll_signing_bytes(req)


@pytest.mark.parametrize(
    ("field", "value", "message"),
    [
        ("wg_public_key", "abc", "44 base64 characters"),
        ("identity_public_key", 7, "must be a base64 string"),
        ("hostname", "bad host!", "must be a hostname"),
        ("endpoints", ["198.18.0.2"], "expected 'host:port'"),
        ("endpoints", ["198.18.0.2:70000"], "port must be 1-65535"),
        ("endpoints", ["fd00::1:5"], "IPv6"),
        ("endpoints", ["300.1.1.1:51820"], "not a valid IPv4 address"),
        ("endpoints", ["10.0.0:51820"], "not a valid IPv4 address"),
        ("listen_port", 0, "greater than or equal to 1"),
        ("surprise", 1, "Extra inputs are not permitted"),
    ],
)
def test_bad_fields_are_named(field, value, message):
    with pytest.raises(ValidationError, match=message) as info:
        EnrollRequest.model_validate(enroll_body(**{field: value}))
    assert field in str(info.value)


@pytest.mark.parametrize(
    ("text", "expected"),
    [
        ("198.18.0.2:51820", ("198.18.0.2", 51820)),
        ("[fd00::1]:1", ("fd00::1", 1)),
        ("h.example:9", ("h.example", 9)),
        ("host-1.lan:51820", ("host-1.lan", 51820)),
        ("255.255.255.255:1", ("255.255.255.255", 1)),
    ],
)
def test_parse_endpoint(text, expected):
    assert parse_endpoint(text) == expected


def test_loss_is_a_fraction_or_absent():
    with pytest.raises(ValidationError, match="less than or equal to 1"):
        LinkMeasurement(peer_id=1, loss=1.5)
    assert LinkMeasurement(peer_id=1).loss is None


def test_the_signature_covers_the_controller_nonce():
    """A request signed for one nonce does not verify for another: a recorded enrollment is useless."""
    req = EnrollRequest.model_validate(enroll_body())
    other = req.model_copy(update={"nonce": "another-nonce-0123456"})
    assert enroll_signing_bytes(other) != enroll_signing_bytes(req)
    assert enroll_signing_bytes(req).startswith(b"wgmesh-enroll-v2\n")
