"""Key types: one type per key kind, parsed and validated from base64 (or hex, as UAPI speaks it).

Rules:
- Every key is exactly 32 raw bytes; parsing names what is wrong (alphabet, padding, length).
- Private keys never show their bytes in `repr`/`str`; `.base64()` is the one explicit way out.
- Equality is constant time (`hmac.compare_digest`) for every kind, so no caller has to remember.
- Kinds do not compare equal to each other: a WireGuard public key is never an identity key.
"""

from __future__ import annotations

import base64
import binascii
import hmac
import os
from typing import TYPE_CHECKING, ClassVar, Self

from keys import libcrypto

if TYPE_CHECKING:
    from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey

KEY_LEN = 32


class InvalidKey(ValueError):
    """A key could not be parsed or loaded; the message says what is wrong with it."""


class _Key:
    """32 raw bytes of one kind of key. Subclasses set KIND and SECRET."""

    KIND: ClassVar[str] = "key"
    SECRET: ClassVar[bool] = False
    __slots__ = ("_raw",)

    def __init__(self, raw: bytes) -> None:
        if not isinstance(raw, bytes | bytearray):
            raise InvalidKey(f"{self.KIND}: expected bytes, got {type(raw).__name__}")
        if len(raw) != KEY_LEN:
            raise InvalidKey(f"{self.KIND}: must be {KEY_LEN} bytes, got {len(raw)}")
        self._raw = bytes(raw)

    @classmethod
    def from_base64(cls, text: str | bytes) -> Self:
        if isinstance(text, bytes):
            try:
                text = text.decode("ascii")
            except UnicodeDecodeError:
                raise InvalidKey(f"{cls.KIND}: not base64 (non-ASCII bytes)") from None
        text = text.strip()
        if not text:
            raise InvalidKey(f"{cls.KIND}: empty")
        if len(text) != 44 or not text.endswith("="):
            raise InvalidKey(
                f"{cls.KIND}: must be 44 base64 characters ending in '=' (a 32-byte key), got {len(text)}"
            )
        try:
            raw = base64.b64decode(text, validate=True)
        except (binascii.Error, ValueError):
            raise InvalidKey(f"{cls.KIND}: not valid base64 (alphabet is A-Z a-z 0-9 + /)") from None
        return cls(raw)

    @classmethod
    def from_hex(cls, text: str) -> Self:
        text = text.strip()
        if len(text) != 2 * KEY_LEN:
            raise InvalidKey(f"{cls.KIND}: hex form must be {2 * KEY_LEN} characters, got {len(text)}")
        try:
            return cls(bytes.fromhex(text))
        except ValueError:
            raise InvalidKey(f"{cls.KIND}: not valid hex") from None

    def raw(self) -> bytes:
        return self._raw

    def base64(self) -> str:
        return base64.b64encode(self._raw).decode("ascii")

    def hex(self) -> str:
        return self._raw.hex()

    def __eq__(self, other: object) -> bool:
        if type(other) is not type(self):
            return NotImplemented
        assert isinstance(other, _Key)
        return hmac.compare_digest(self._raw, other._raw)

    def __hash__(self) -> int:
        return hash((type(self).__name__, self._raw))

    def __repr__(self) -> str:
        if self.SECRET:
            return f"{type(self).__name__}(<redacted>)"
        return f"{type(self).__name__}({self.base64()!r})"

    def __str__(self) -> str:
        return "<redacted>" if self.SECRET else self.base64()

    def __reduce__(self) -> tuple[type[Self], tuple[bytes]]:
        return (type(self), (self._raw,))


class WireGuardPublicKey(_Key):
    KIND = "WireGuard public key"


class PresharedKey(_Key):
    KIND = "preshared key"
    SECRET = True

    @classmethod
    def generate(cls) -> Self:
        return cls(os.urandom(KEY_LEN))


class WireGuardPrivateKey(_Key):
    KIND = "WireGuard private key"
    SECRET = True

    @classmethod
    def generate(cls) -> Self:
        raw = bytearray(os.urandom(KEY_LEN))
        raw[0] &= 248  # clamped as `wg genkey` (and OpenSSL's X25519 key generation) store it
        raw[31] = (raw[31] & 127) | 64
        return cls(bytes(raw))

    def public_key(self) -> WireGuardPublicKey:
        # X25519 clamps the scalar itself, so any 32 bytes give the same public key `wg pubkey` does.
        return WireGuardPublicKey(libcrypto.x25519_public_key(self._raw))


class IdentityPublicKey(_Key):
    KIND = "identity public key"

    def verify(self, signature: bytes, message: bytes) -> bool:
        # cryptography, imported at the first check: p2p checks thousands a second (the agent checks its
        # few with verify_with_libcrypto, which keeps cryptography out of it).
        from cryptography.exceptions import InvalidSignature
        from cryptography.hazmat.primitives.asymmetric import ed25519

        try:
            ed25519.Ed25519PublicKey.from_public_bytes(self._raw).verify(signature, message)
        except (InvalidSignature, ValueError):
            return False
        return True

    def verify_with_libcrypto(self, signature: bytes, message: bytes) -> bool:
        """`verify` without importing cryptography (keys/libcrypto.py): for a process that checks a few."""
        return libcrypto.ed25519_verify(self._raw, signature, message)


class IdentityPrivateKey(_Key):
    """An Ed25519 seed. The signing object (cryptography) is made at the first `sign` and cached: creating
    one costs more than signing."""

    KIND = "identity private key"
    SECRET = True
    __slots__ = ("_signer",)

    def __init__(self, raw: bytes) -> None:
        super().__init__(raw)
        self._signer: Ed25519PrivateKey | None = None

    @classmethod
    def generate(cls) -> Self:
        return cls(os.urandom(KEY_LEN))

    def public_key(self) -> IdentityPublicKey:
        return IdentityPublicKey(libcrypto.ed25519_public_key(self._raw))

    def sign(self, message: bytes) -> bytes:
        if self._signer is None:
            from cryptography.hazmat.primitives.asymmetric import ed25519

            self._signer = ed25519.Ed25519PrivateKey.from_private_bytes(self._raw)
        return self._signer.sign(message)

    def sign_with_libcrypto(self, message: bytes) -> bytes:
        """`sign` without importing cryptography (keys/libcrypto.py): the same signature, twice the time,
        for a process that signs a few (the agent)."""
        return libcrypto.ed25519_sign(self._raw, message)
