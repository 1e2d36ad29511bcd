"""The pre-auth key as text: the secret the controller checks, and the CA pin an agent trusts.

Format (what `wgmesh controller token create` prints; one word, safe in files and shells):

    wgm_pak_<secret>                     no pin: the agent trusts the system CAs (or --ca-file)
    wgm_pak_<secret>.<sha256 hex>        pinned: 64 hex digits after the last '.'

The pin is the SHA-256 of the controller CA certificate's SubjectPublicKeyInfo (DER), the way
kubeadm's `--discovery-token-ca-cert-hash` names a cluster CA. Compute it from a CA file with

    openssl x509 -in ca.crt -pubkey -noout | openssl pkey -pubin -outform der | sha256sum

Only the secret part is sent at enrollment and hashed by the controller; the pin is public.
"""

from __future__ import annotations

import hashlib
import re
from dataclasses import dataclass

from cryptography.hazmat.primitives import serialization

PREAUTH_PREFIX = "wgm_pak_"
_SECRET = re.compile(r"^wgm_pak_[A-Za-z0-9_-]{6,150}$")
_PIN = re.compile(r"^[0-9a-f]{64}$")


class PreAuthKeyError(ValueError):
    """The text is not a pre-auth key; the message is one line saying what is wrong."""


@dataclass(frozen=True)
class PreAuthKey:
    secret: str
    ca_pin: str | None = None  # lower-case hex SHA-256 of the CA's SubjectPublicKeyInfo

    def text(self) -> str:
        return self.secret if self.ca_pin is None else f"{self.secret}.{self.ca_pin}"

    def __repr__(self) -> str:
        return f"PreAuthKey(secret=<redacted>, ca_pin={self.ca_pin!r})"


def parse_preauth_key(text: str) -> PreAuthKey:
    """The key in `text` (surrounding whitespace ignored); PreAuthKeyError when it is not one."""
    word = text.strip()
    if not word:
        raise PreAuthKeyError(
            "pre-auth key: empty (expected the key `wgmesh controller token create` printed)"
        )
    secret, dot, pin = word.partition(".")
    if not _SECRET.match(secret):
        raise PreAuthKeyError(
            f"pre-auth key: expected {PREAUTH_PREFIX}... as `wgmesh controller token create` printed it"
        )
    if not dot:
        return PreAuthKey(secret)
    pin = pin.lower()
    if not _PIN.match(pin):
        raise PreAuthKeyError(
            "pre-auth key: the part after '.' must be 64 hex digits (the controller CA's SHA-256 pin)"
        )
    return PreAuthKey(secret, pin)


def ca_pin_of_pem(pem: bytes) -> str:
    """The pin of the first certificate in `pem`: hex SHA-256 of its SubjectPublicKeyInfo (DER).
    ValueError when `pem` holds no certificate."""
    from cryptography import x509  # only where a CA is pinned: the agent at enrollment, the controller

    cert = x509.load_pem_x509_certificate(pem)
    spki = cert.public_key().public_bytes(
        serialization.Encoding.DER, serialization.PublicFormat.SubjectPublicKeyInfo
    )
    return hashlib.sha256(spki).hexdigest()
