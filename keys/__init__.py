"""keys: WireGuard (X25519) and identity (Ed25519) key types, their codecs, and 0600 storage."""

from keys.types import (
    IdentityPrivateKey,
    IdentityPublicKey,
    InvalidKey,
    PresharedKey,
    WireGuardPrivateKey,
    WireGuardPublicKey,
)

__all__ = [
    "IdentityPrivateKey",
    "IdentityPublicKey",
    "InvalidKey",
    "PresharedKey",
    "WireGuardPrivateKey",
    "WireGuardPublicKey",
]
