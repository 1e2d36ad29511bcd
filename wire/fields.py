"""Field types used across wire models: typed keys as base64 strings, endpoints, names and roles."""

from __future__ import annotations

import ipaddress
import re
from datetime import datetime
from typing import Annotated, Any, TypeVar

from pydantic import AfterValidator, BeforeValidator, Field, PlainSerializer, PlainValidator, WithJsonSchema

from keys.types import IdentityPublicKey, InvalidKey, WireGuardPublicKey, _Key

K = TypeVar("K", bound=_Key)

_EXAMPLE_KEY = "xTIBA5rboUvnH4htodjb6e697QjLERt1NAB4mZqp8Dg="


# The patterns below are the OpenAPI document's and the models' both: a field's validator accepts exactly
# the strings its pattern (and length) describes, so what the document calls valid is what the API
# takes. They are written for both dialects: ASCII classes only, no lookaround, matched whole
# (`fullmatch`: Python's `$` would also match before a final newline).

KEY_PATTERN = "^[A-Za-z0-9+/]{42}[AEIMQUYcgkosw048]=$"
"""A 32-byte key in canonical base64: 43 characters whose last carries 2 bits of padding, and '='."""


def _key_field(kind: type[K]) -> Any:
    canonical = re.compile(KEY_PATTERN)

    def parse(value: object) -> K:
        if isinstance(value, kind):
            return value
        if not isinstance(value, str):
            raise ValueError(f"{kind.KIND} must be a base64 string")
        try:
            key = kind.from_base64(value)
        except InvalidKey as e:
            raise ValueError(str(e)) from None
        if not canonical.fullmatch(value):
            raise ValueError(f"{kind.KIND}: not in canonical form (write it as {key.base64()!r})")
        return key

    return Annotated[
        kind,
        PlainValidator(parse),
        PlainSerializer(lambda k: k.base64(), return_type=str),
        WithJsonSchema(
            {"type": "string", "format": "base64", "pattern": KEY_PATTERN, "examples": [_EXAMPLE_KEY]}
        ),
    ]


WgPublicKey = _key_field(WireGuardPublicKey)
IdPublicKey = _key_field(IdentityPublicKey)

_LABEL = "[A-Za-z0-9]([A-Za-z0-9-]{0,61}[A-Za-z0-9])?"
HOSTNAME_PATTERN = f"^{_LABEL}(\\.{_LABEL})*$"
HOSTNAME_MAX = 253
_HOSTNAME = re.compile(HOSTNAME_PATTERN)


def _is_hostname(value: str) -> bool:
    return len(value) <= HOSTNAME_MAX and _HOSTNAME.fullmatch(value) is not None


# An endpoint as the document describes it: a dotted-quad IPv4 address, a DNS name whose last label
# starts with a letter, or a bracketed IPv6 address (no zone), then a port 1-65535 without leading zeros.
_OCTET = "(25[0-5]|2[0-4][0-9]|1[0-9][0-9]|[1-9]?[0-9])"
_IPV4 = f"{_OCTET}(\\.{_OCTET}){{3}}"
_NAME = f"({_LABEL}\\.)*[A-Za-z]([A-Za-z0-9-]{{0,61}}[A-Za-z0-9])?"
_H = "[0-9a-fA-F]{1,4}"
_IPV6 = "|".join(
    [
        f"({_H}:){{7}}{_H}",
        f"({_H}:){{1,7}}:",
        f"({_H}:){{1,6}}:{_H}",
        f"({_H}:){{1,5}}(:{_H}){{1,2}}",
        f"({_H}:){{1,4}}(:{_H}){{1,3}}",
        f"({_H}:){{1,3}}(:{_H}){{1,4}}",
        f"({_H}:){{1,2}}(:{_H}){{1,5}}",
        f"{_H}:(:{_H}){{1,6}}",
        f":((:{_H}){{1,7}}|:)",
    ]
)
_PORT = "(6553[0-5]|655[0-2][0-9]|65[0-4][0-9]{2}|6[0-4][0-9]{3}|[1-5][0-9]{4}|[1-9][0-9]{0,3})"
ENDPOINT_PATTERN = f"^({_IPV4}|{_NAME}|\\[({_IPV6})\\]):{_PORT}$"
ENDPOINT_MAX = HOSTNAME_MAX + 1  # with ':PORT', a name of at most 252 characters
_ENDPOINT = re.compile(ENDPOINT_PATTERN)


def parse_endpoint(value: str) -> tuple[str, int]:
    """Split `HOST:PORT` / `[V6]:PORT` into (host, port); raise ValueError naming what is wrong."""
    if not isinstance(value, str) or not value:
        raise ValueError("endpoint must be a non-empty 'host:port' string")
    if value.startswith("["):
        host, sep, port_text = value[1:].partition("]:")
        if not sep:
            raise ValueError(f"endpoint {value!r}: IPv6 form is '[addr]:port'")
        try:
            ipaddress.IPv6Address(host)
        except ValueError:
            raise ValueError(f"endpoint {value!r}: {host!r} is not an IPv6 address") from None
    else:
        host, sep, port_text = value.rpartition(":")
        if not sep or not host:
            raise ValueError(f"endpoint {value!r}: expected 'host:port'")
        if ":" in host:
            raise ValueError(f"endpoint {value!r}: write IPv6 addresses as '[addr]:port'")
        if not _is_hostname(host):
            raise ValueError(f"endpoint {value!r}: {host!r} is not a valid address or hostname")
        if host.rsplit(".", 1)[-1].isdigit():
            # A name whose last label is a number is an IPv4 address or nothing (no top-level domain is
            # numeric): `300.1.1.1` must not be taken for a hostname that never resolves.
            try:
                ipaddress.IPv4Address(host)
            except ValueError:
                raise ValueError(
                    f"endpoint {value!r}: {host!r} is not a valid IPv4 address (four numbers 0-255)"
                ) from None
    if not port_text.isdigit() or not 1 <= int(port_text) <= 65535:
        raise ValueError(f"endpoint {value!r}: port must be 1-65535")
    return host, int(port_text)


def _check_endpoint(value: str) -> str:
    parse_endpoint(value)
    if len(value) > ENDPOINT_MAX or not _ENDPOINT.fullmatch(value):
        raise ValueError(
            f"endpoint {value!r}: expected IPV4:PORT, NAME:PORT (its last label starting with a letter) "
            f"or [IPV6]:PORT, at most {ENDPOINT_MAX} characters"
        )
    return value


Endpoint = Annotated[
    str,
    AfterValidator(_check_endpoint),
    WithJsonSchema(
        {
            "type": "string",
            "maxLength": ENDPOINT_MAX,
            "pattern": ENDPOINT_PATTERN,
            "examples": ["198.18.0.2:51820"],
        }
    ),
]


def _check_hostname(value: str) -> str:
    if not _is_hostname(value):
        raise ValueError("must be a hostname: letters, digits, '-' and '.', at most 253 characters")
    return value


Hostname = Annotated[
    str,
    AfterValidator(_check_hostname),
    WithJsonSchema(
        {
            "type": "string",
            "minLength": 1,
            "maxLength": HOSTNAME_MAX,
            "pattern": HOSTNAME_PATTERN,
            "examples": ["web-1"],
        }
    ),
]

ROLE_PATTERN = "^[a-z][a-z0-9_-]{0,31}$"
_ROLE = re.compile(ROLE_PATTERN)


def _check_role(value: str) -> str:
    if not _ROLE.fullmatch(value):
        raise ValueError("role must be 1-32 of a-z, 0-9, '_' or '-', starting with a letter")
    return value


Role = Annotated[
    str,
    AfterValidator(_check_role),
    WithJsonSchema({"type": "string", "pattern": ROLE_PATTERN, "examples": ["node"]}),
]


def _json_integer(value: object) -> object:
    """A JSON number without a fraction is an integer, as JSON Schema's `integer` says: 3.0 is 3.
    Anything else goes on to the (strict) int check: `true` and `"3"` are no integers."""
    if isinstance(value, float) and value.is_integer():
        return int(value)
    return value


JSON_INT = BeforeValidator(_json_integer)
"""Put last in an int field's Annotated (after its Field constraints, which the JSON schema then shows
as minimum/maximum): `Annotated[int, Field(ge=1), JSON_INT]`."""
Int = Annotated[int, JSON_INT]
"""An int field of a request model (strict: no bools, no strings), as JSON Schema's `integer`."""

Port = Annotated[int, Field(ge=1, le=65535), JSON_INT]


_RFC3339 = re.compile(
    "[0-9]{4}-[0-9]{2}-[0-9]{2}[Tt][0-9]{2}:[0-9]{2}:[0-9]{2}([.][0-9]+)?([Zz]|[+-][0-9]{2}:[0-9]{2})"
)


def parse_rfc3339(value: object) -> datetime:
    """An RFC 3339 date-time (JSON Schema's `date-time`), which always names its zone: nothing else,
    not a bare number, not a time without a zone. A leap second counts as second 59."""
    if isinstance(value, datetime) and value.tzinfo is not None:
        return value
    if not isinstance(value, str) or not _RFC3339.fullmatch(value):
        raise ValueError("expected an RFC 3339 time with a zone, as 2026-11-24T10:00:00Z")
    text = value.upper()
    if text[17:19] == "60":
        text = f"{text[:17]}59{text[19:]}"
    try:
        return datetime.fromisoformat(text)
    except ValueError as e:
        raise ValueError(f"{value!r}: {e}") from None


Rfc3339 = Annotated[
    datetime, PlainValidator(parse_rfc3339), WithJsonSchema({"type": "string", "format": "date-time"})
]
