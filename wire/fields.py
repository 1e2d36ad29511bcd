"""Field types used across wire models: typed keys as base64 strings, endpoints, names and roles."""

from __future__ import annotations

import ipaddress
import re
from typing import Annotated, Any, TypeVar

from pydantic import AfterValidator, Field, PlainSerializer, PlainValidator, WithJsonSchema

from keys.types import IdentityPublicKey, InvalidKey, WireGuardPublicKey, _Key

K = TypeVar("K", bound=_Key)

_EXAMPLE_KEY = "xTIBA5rboUvnH4htodjb6e697QjLERt1NAB4mZqp8Dg="


def _key_field(kind: type[K]) -> Any:
    def parse(value: object) -> K:
        if isinstance(value, kind):
            return value
        if not isinstance(value, str):
            raise ValueError(f"{kind.KIND} must be a base64 string")
        try:
            return kind.from_base64(value)
        except InvalidKey as e:
            raise ValueError(str(e)) from None

    return Annotated[
        kind,
        PlainValidator(parse),
        PlainSerializer(lambda k: k.base64(), return_type=str),
        WithJsonSchema({"type": "string", "format": "base64", "examples": [_EXAMPLE_KEY]}),
    ]


WgPublicKey = _key_field(WireGuardPublicKey)
IdPublicKey = _key_field(IdentityPublicKey)

_HOSTNAME = re.compile(
    r"^(?=.{1,253}$)[A-Za-z0-9]([A-Za-z0-9-]{0,61}[A-Za-z0-9])?(\.[A-Za-z0-9]([A-Za-z0-9-]{0,61}[A-Za-z0-9])?)*$"
)


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
        if not _HOSTNAME.match(host):
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
    return value


Endpoint = Annotated[
    str,
    AfterValidator(_check_endpoint),
    WithJsonSchema({"type": "string", "examples": ["198.18.0.2:51820"]}),
]


def _check_hostname(value: str) -> str:
    if not _HOSTNAME.match(value):
        raise ValueError("must be a hostname: letters, digits, '-' and '.', at most 253 characters")
    return value


Hostname = Annotated[
    str, AfterValidator(_check_hostname), WithJsonSchema({"type": "string", "examples": ["web-1"]})
]

_ROLE = re.compile(r"^[a-z][a-z0-9_-]{0,31}$")


def _check_role(value: str) -> str:
    if not _ROLE.match(value):
        raise ValueError("role must be 1-32 of a-z, 0-9, '_' or '-', starting with a letter")
    return value


Role = Annotated[str, AfterValidator(_check_role), WithJsonSchema({"type": "string", "examples": ["node"]})]

Port = Annotated[int, Field(ge=1, le=65535)]
