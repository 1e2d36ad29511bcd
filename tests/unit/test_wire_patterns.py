"""The OpenAPI document's patterns are the models' (issue #8 item 12): every string a field's pattern
describes is one its model takes, and the model takes nothing else, so what the document calls valid
is what the API accepts."""

from __future__ import annotations

import re
from datetime import UTC, datetime

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st
from pydantic import TypeAdapter, ValidationError

from wire.fields import (
    ENDPOINT_MAX,
    ENDPOINT_PATTERN,
    HOSTNAME_MAX,
    HOSTNAME_PATTERN,
    KEY_PATTERN,
    ROLE_PATTERN,
    Endpoint,
    Hostname,
    Rfc3339,
    Role,
    WgPublicKey,
)
from wire.models import LinkMeasurement, PreAuthKeyRequest
from wire.policy import TAG_PATTERN, TagName

CASES = [
    (Endpoint, ENDPOINT_PATTERN, ENDPOINT_MAX),
    (Hostname, HOSTNAME_PATTERN, HOSTNAME_MAX),
    (WgPublicKey, KEY_PATTERN, 44),
    (Role, ROLE_PATTERN, 32),
    (TagName, TAG_PATTERN, 32),
]


NAMES = ["endpoint", "hostname", "wg key", "role", "tag"]


@pytest.mark.parametrize(("kind", "pattern", "longest"), CASES, ids=NAMES)
def test_the_document_shows_the_pattern_the_model_checks(kind, pattern, longest):
    schema = TypeAdapter(kind).json_schema()
    assert schema["pattern"] == pattern


@pytest.mark.parametrize(("kind", "pattern", "longest"), CASES, ids=NAMES)
@settings(max_examples=100, deadline=None)
@given(data=st.data())
def test_what_the_pattern_describes_the_model_takes(kind, pattern, longest, data):
    text = data.draw(st.from_regex(pattern, fullmatch=True).filter(lambda s: len(s) <= longest))
    TypeAdapter(kind).validate_python(text)


@pytest.mark.parametrize(
    ("kind", "text"),
    [
        (Hostname, "web-1\n"),  # Python's `$` would take a final newline; JSON Schema's does not
        (Role, "node\n"),
        (TagName, "gpu\n"),
        (Endpoint, "198.18.0.2:051820"),  # a port with a leading zero
        (Endpoint, "[fe80::1%eth0]:51820"),  # a zone
        (Endpoint, "1host:51820"),  # a name's last label starts with a letter
        (Endpoint, "h" * 250 + ".lan:1"),
        (WgPublicKey, "xTIBA5rboUvnH4htodjb6e697QjLERt1NAB4mZqp8Dh="),  # not canonical base64
        (WgPublicKey, " xTIBA5rboUvnH4htodjb6e697QjLERt1NAB4mZqp8Dg="),
    ],
)
def test_what_the_pattern_refuses_the_model_refuses(kind, text):
    assert not (re.fullmatch(TypeAdapter(kind).json_schema()["pattern"], text) and len(text) <= ENDPOINT_MAX)
    with pytest.raises(ValidationError):
        TypeAdapter(kind).validate_python(text)


def test_an_integer_is_a_json_integer_and_nothing_else():
    assert LinkMeasurement.model_validate_json('{"peer_id": 2.0}').peer_id == 2
    assert PreAuthKeyRequest.model_validate_json('{"expires_in_s": 60.0}').expires_in_s == 60
    for body in ('{"peer_id": true}', '{"peer_id": "2"}', '{"peer_id": 2.5}'):
        with pytest.raises(ValidationError, match="peer_id"):
            LinkMeasurement.model_validate_json(body)
    schema = LinkMeasurement.model_json_schema()["properties"]["peer_id"]
    assert schema["type"] == "integer" and schema["minimum"] == 1


def test_a_time_is_rfc_3339_with_its_zone():
    parse = TypeAdapter(Rfc3339).validate_python
    assert parse("2026-11-24T10:00:00Z") == datetime(2026, 11, 24, 10, tzinfo=UTC)
    assert parse("2026-11-24t10:00:00.5+01:00").utcoffset() is not None
    assert parse("2016-12-31T23:59:60Z").second == 59  # a leap second
    for text in ("2026-11-24T10:00:00", "1700000000", "0.5", "2026-11-24", "2026-13-01T00:00:00Z"):
        with pytest.raises(ValidationError):
            parse(text)
