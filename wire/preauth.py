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

import base64
import binascii
import hashlib
import re
from dataclasses import dataclass

PREAUTH_PREFIX = "wgm_pak_"
_SECRET = re.compile(r"^wgm_pak_[A-Za-z0-9_-]{6,150}$")
_PIN = re.compile(r"^[0-9a-f]{64}$")
_PEM_CERT = re.compile(rb"-----BEGIN CERTIFICATE-----([A-Za-z0-9+/=\s]*?)-----END CERTIFICATE-----")


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
    match = _PEM_CERT.search(pem)
    if match is None:
        raise ValueError("no PEM certificate")
    try:
        der = base64.b64decode(b"".join(match.group(1).split()), validate=True)
    except binascii.Error:
        raise ValueError("PEM certificate: bad base64") from None
    return hashlib.sha256(subject_public_key_info(der)).hexdigest()


def subject_public_key_info(der: bytes) -> bytes:
    """The DER SubjectPublicKeyInfo of an X.509 certificate (RFC 5280 4.1: the 7th field of the
    TBSCertificate, the 6th when the optional [0] version is absent). Walking the DER here keeps
    cryptography's x509 bindings (8 MiB resident) out of the agent, which pins a CA at enrollment.
    ValueError when `der` is not a certificate."""
    start, end = _element(der, 0, 0x30)  # Certificate
    at, end = _element(der, start, 0x30, end)  # TBSCertificate
    if der[at : at + 1] == b"\xa0":  # [0] EXPLICIT version
        at = _element(der, at, 0xA0, end)[1]
    for tag in (0x02, 0x30, 0x30, 0x30, 0x30):  # serialNumber, signature, issuer, validity, subject
        at = _element(der, at, tag, end)[1]
    return der[at : _element(der, at, 0x30, end)[1]]


def _element(der: bytes, at: int, tag: int, limit: int | None = None) -> tuple[int, int]:
    """Where the content of the DER element at `at` (which must have `tag`) starts, and where the
    element ends (within `limit`)."""
    limit = len(der) if limit is None else limit
    if at + 2 > limit or der[at] != tag:
        raise ValueError("not an X.509 certificate (unexpected DER structure)")
    length, start = der[at + 1], at + 2
    if length & 0x80:
        count = length & 0x7F
        if not 1 <= count <= 4 or start + count > limit:
            raise ValueError("not an X.509 certificate (bad DER length)")
        length, start = int.from_bytes(der[start : start + count], "big"), start + count
    if start + length > limit:
        raise ValueError("not an X.509 certificate (truncated DER)")
    return start, start + length
