"""X25519 and Ed25519 through the system's OpenSSL libcrypto (ctypes): the public key of a private key,
and Ed25519 signatures made and checked.

Why: cryptography's bindings hold ~8 MiB resident once imported, most of an agent's share of its 50 MiB
goal, while the libcrypto the `ssl` module links is mapped already. Derivation is rare everywhere, so
keys/types.py derives through here. Signing through here costs about twice cryptography's time per
signature (OpenSSL 3.0 sets up its providers per call), which suits the agent's few rotation messages a
day; p2p, which signs and checks thousands a second, keeps `IdentityPrivateKey.sign` and
`IdentityPublicKey.verify` (cryptography).

Rules:
- The results are the same bytes cryptography gives (Ed25519 signatures are deterministic); the tests
  compare both on random keys.
- Where no libcrypto with raw-key support (OpenSSL >= 1.1.1) can be loaded, every function falls back to
  cryptography: slower to import, same answers.
- A key never crosses this module as anything but 32 raw bytes; nothing here logs.
"""

from __future__ import annotations

import ctypes
from collections.abc import Iterator
from contextlib import contextmanager
from functools import cache
from typing import Any

_X25519 = 1034  # NID_X25519 (EVP_PKEY_X25519)
_ED25519 = 1087  # NID_ED25519
_SONAMES = ("libcrypto.so.3", "libcrypto.so.1.1")
_P = ctypes.c_void_p
_SIZE = ctypes.c_size_t


@cache
def _lib() -> Any | None:
    """The loaded libcrypto with the prototypes set, or None (then cryptography answers)."""
    for soname in _SONAMES:
        try:
            lib = ctypes.CDLL(soname)
            prototypes = {
                "EVP_PKEY_new_raw_private_key": (_P, [ctypes.c_int, _P, ctypes.c_char_p, _SIZE]),
                "EVP_PKEY_new_raw_public_key": (_P, [ctypes.c_int, _P, ctypes.c_char_p, _SIZE]),
                "EVP_PKEY_get_raw_public_key": (ctypes.c_int, [_P, ctypes.c_char_p, ctypes.POINTER(_SIZE)]),
                "EVP_PKEY_free": (None, [_P]),
                "EVP_MD_CTX_new": (_P, []),
                "EVP_MD_CTX_free": (None, [_P]),
                "EVP_DigestSignInit": (ctypes.c_int, [_P, _P, _P, _P, _P]),
                "EVP_DigestSign": (ctypes.c_int, [_P, ctypes.c_char_p, ctypes.POINTER(_SIZE), ctypes.c_char_p, _SIZE]),
                "EVP_DigestVerifyInit": (ctypes.c_int, [_P, _P, _P, _P, _P]),
                "EVP_DigestVerify": (ctypes.c_int, [_P, ctypes.c_char_p, _SIZE, ctypes.c_char_p, _SIZE]),
                "ERR_clear_error": (None, []),
            }  # fmt: skip
            for name, (restype, argtypes) in prototypes.items():
                function = getattr(lib, name)
                function.restype, function.argtypes = restype, argtypes
        except (OSError, AttributeError):
            continue
        return lib
    return None


def available() -> bool:
    """Whether libcrypto answers (else cryptography does)."""
    return _lib() is not None


@contextmanager
def _private_key(lib: Any, kind: int, raw: bytes) -> Iterator[Any]:
    """An EVP_PKEY of one raw private key, freed after; OpenSSL's error queue is left empty (the `ssl`
    module of this thread reads the same queue)."""
    pkey = lib.EVP_PKEY_new_raw_private_key(kind, None, raw, len(raw))
    try:
        if not pkey:
            raise ValueError("libcrypto refused the private key")
        yield pkey
    finally:
        lib.EVP_PKEY_free(pkey)
        lib.ERR_clear_error()


def _public_of(kind: int, private: bytes) -> bytes:
    lib = _lib()
    assert lib is not None
    with _private_key(lib, kind, private) as pkey:
        out, size = ctypes.create_string_buffer(32), _SIZE(32)
        if lib.EVP_PKEY_get_raw_public_key(pkey, out, ctypes.byref(size)) != 1 or size.value != 32:
            raise ValueError("libcrypto gave no public key")
        return out.raw


def x25519_public_key(private: bytes) -> bytes:
    """The X25519 public key of 32 private bytes (clamped as X25519 does: the same as `wg pubkey`)."""
    if _lib() is not None:
        return _public_of(_X25519, private)
    from cryptography.hazmat.primitives.asymmetric import x25519

    return x25519.X25519PrivateKey.from_private_bytes(private).public_key().public_bytes_raw()


def ed25519_public_key(seed: bytes) -> bytes:
    """The Ed25519 public key of a 32-byte seed."""
    if _lib() is not None:
        return _public_of(_ED25519, seed)
    from cryptography.hazmat.primitives.asymmetric import ed25519

    return ed25519.Ed25519PrivateKey.from_private_bytes(seed).public_key().public_bytes_raw()


def ed25519_sign(seed: bytes, message: bytes) -> bytes:
    """The Ed25519 signature (64 bytes) of `message` by the key of `seed`."""
    lib = _lib()
    if lib is None:
        from cryptography.hazmat.primitives.asymmetric import ed25519

        return ed25519.Ed25519PrivateKey.from_private_bytes(seed).sign(message)
    with _private_key(lib, _ED25519, seed) as pkey:
        ctx = lib.EVP_MD_CTX_new()
        try:
            out, size = ctypes.create_string_buffer(64), _SIZE(64)
            if (
                not ctx
                or lib.EVP_DigestSignInit(ctx, None, None, None, pkey) != 1
                or lib.EVP_DigestSign(ctx, out, ctypes.byref(size), message, len(message)) != 1
            ):
                raise ValueError("libcrypto could not sign")
            return out.raw[: size.value]
        finally:
            lib.EVP_MD_CTX_free(ctx)


def ed25519_verify(public: bytes, signature: bytes, message: bytes) -> bool:
    """Whether `signature` is the Ed25519 signature of `message` by `public`."""
    lib = _lib()
    if lib is None:
        from cryptography.exceptions import InvalidSignature
        from cryptography.hazmat.primitives.asymmetric import ed25519

        try:
            ed25519.Ed25519PublicKey.from_public_bytes(public).verify(signature, message)
        except (InvalidSignature, ValueError):
            return False
        return True
    pkey = lib.EVP_PKEY_new_raw_public_key(_ED25519, None, public, len(public))
    ctx = lib.EVP_MD_CTX_new()
    try:
        if not pkey or not ctx or lib.EVP_DigestVerifyInit(ctx, None, None, None, pkey) != 1:
            return False
        return bool(lib.EVP_DigestVerify(ctx, signature, len(signature), message, len(message)) == 1)
    finally:
        lib.EVP_MD_CTX_free(ctx)
        lib.EVP_PKEY_free(pkey)
        lib.ERR_clear_error()
