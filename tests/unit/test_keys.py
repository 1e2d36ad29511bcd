"""Key types, codecs and key files, as a user of `wgmesh keys` and of the library sees them."""

from __future__ import annotations

import base64
import os
import shutil
import subprocess
import sys

import pytest
from hypothesis import given
from hypothesis import strategies as st

from keys import libcrypto
from keys.store import load_key, save_key, write_private_file
from keys.types import (
    IdentityPrivateKey,
    IdentityPublicKey,
    InvalidKey,
    PresharedKey,
    WireGuardPrivateKey,
    WireGuardPublicKey,
)


def wgmesh(*args: str, stdin: str = "") -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "-m", "wgmesh", *args], input=stdin, capture_output=True, text=True
    )


@given(st.binary(min_size=32, max_size=32))
def test_base64_and_hex_round_trip(raw):
    key = WireGuardPublicKey(raw)
    assert WireGuardPublicKey.from_base64(key.base64()) == key
    assert WireGuardPublicKey.from_hex(key.hex()) == key


@pytest.mark.parametrize(
    ("text", "problem"),
    [
        ("", "empty"),
        ("abc", "44 base64 characters"),
        ("A" * 43 + "=" + "A", "44 base64 characters"),
        ("!" * 43 + "=", "alphabet"),
        (base64.b64encode(b"x" * 31).decode() + "AAAA", "44 base64 characters"),
    ],
)
def test_bad_base64_names_the_problem(text, problem):
    with pytest.raises(InvalidKey, match=problem):
        WireGuardPublicKey.from_base64(text)


def test_wrong_length_raw_and_hex():
    with pytest.raises(InvalidKey, match="32 bytes, got 31"):
        PresharedKey(b"x" * 31)
    with pytest.raises(InvalidKey, match="64 characters"):
        WireGuardPublicKey.from_hex("ab")
    with pytest.raises(InvalidKey, match="not valid hex"):
        WireGuardPublicKey.from_hex("zz" * 32)


def test_private_keys_are_redacted_everywhere():
    for key in (WireGuardPrivateKey.generate(), PresharedKey.generate(), IdentityPrivateKey.generate()):
        secret = key.base64()
        assert secret not in repr(key) and secret not in str(key) and secret not in f"{key!r} {key}"
        assert "redacted" in repr(key)
    pub = WireGuardPrivateKey.generate().public_key()
    assert pub.base64() in repr(pub)


def test_kinds_never_compare_equal():
    raw = os.urandom(32)
    assert WireGuardPublicKey(raw) != IdentityPublicKey(raw)
    assert WireGuardPublicKey(raw) == WireGuardPublicKey(raw)
    assert len({WireGuardPublicKey(raw), WireGuardPublicKey(raw)}) == 1


def test_identity_sign_and_verify():
    key = IdentityPrivateKey.generate()
    sig = key.sign(b"hello")
    assert key.public_key().verify(sig, b"hello")
    assert not key.public_key().verify(sig, b"hellO")
    assert not IdentityPrivateKey.generate().public_key().verify(sig, b"hello")
    assert not key.public_key().verify(b"short", b"hello")


# RFC 7748 6.1 (Alice) and RFC 8032 7.1 (test 1, the empty message)
X25519_PRIVATE = "77076d0a7318a57d3c16c17251b26645df4c2f87ebc0992ab177fba51db92c2a"
X25519_PUBLIC = "8520f0098930a754748b7ddcb43ef75a0dbf3a0d26381af4eba4a98eaa9b4e6a"
ED25519_SEED = "9d61b19deffd5a60ba844af492ec2cc44449c5697b326919703bac031cae7f60"
ED25519_PUBLIC = "d75a980182b10ab7d54bfed3c964073a0ee172f3daa62325af021a68f707511a"
ED25519_SIGNATURE = "e5564300c360ac729086e2cc806e828a84877f1eb8e5d974d873e065224901555fb8821590a33bacc61e39701cf9b46bd25bf5f0595bbe24655141438e7a100b"


@pytest.fixture(params=["libcrypto", "cryptography"])
def backend(request, monkeypatch):
    """keys.libcrypto as it runs here, and as it runs where no libcrypto can be loaded."""
    if request.param == "libcrypto":
        assert libcrypto.available(), "this machine has no libcrypto.so.3 or .so.1.1"
    else:
        monkeypatch.setattr(libcrypto, "_lib", lambda: None)
    return request.param


def test_the_rfc_vectors_give_the_rfc_keys_and_signature(backend):
    assert WireGuardPrivateKey.from_hex(X25519_PRIVATE).public_key().hex() == X25519_PUBLIC
    seed = IdentityPrivateKey.from_hex(ED25519_SEED)
    assert seed.public_key().hex() == ED25519_PUBLIC
    assert seed.sign_with_libcrypto(b"").hex() == seed.sign(b"").hex() == ED25519_SIGNATURE
    assert seed.public_key().verify_with_libcrypto(bytes.fromhex(ED25519_SIGNATURE), b"")


@given(st.binary(min_size=32, max_size=32), st.binary(max_size=300))
def test_signatures_made_and_checked_without_cryptography_are_the_same(raw, message):
    key = IdentityPrivateKey(raw)
    signature = key.sign_with_libcrypto(message)
    assert signature == key.sign(message)
    assert key.public_key().verify(signature, message)
    assert key.public_key().verify_with_libcrypto(signature, message)
    assert not key.public_key().verify_with_libcrypto(signature, message + b"!")
    assert not key.public_key().verify_with_libcrypto(signature[:-1], message)
    assert not IdentityPrivateKey.generate().public_key().verify_with_libcrypto(signature, message)


@given(st.binary(min_size=32, max_size=32))
def test_public_keys_derived_without_cryptography_are_cryptographys(raw):
    from cryptography.hazmat.primitives.asymmetric import ed25519, x25519

    assert WireGuardPrivateKey(raw).public_key().raw() == (
        x25519.X25519PrivateKey.from_private_bytes(raw).public_key().public_bytes_raw()
    )
    assert IdentityPrivateKey(raw).public_key().raw() == (
        ed25519.Ed25519PrivateKey.from_private_bytes(raw).public_key().public_bytes_raw()
    )


def test_a_generated_wireguard_key_is_clamped_as_wg_genkey_stores_it():
    for _ in range(50):
        raw = WireGuardPrivateKey.generate().raw()
        assert raw[0] & 7 == 0 and raw[31] & 128 == 0 and raw[31] & 64 == 64


def test_key_file_is_0600_in_0700_dir_and_round_trips(tmp_path):
    path = tmp_path / "state" / "wg.key"
    key = WireGuardPrivateKey.generate()
    save_key(path, key)
    assert path.stat().st_mode & 0o777 == 0o600
    assert path.parent.stat().st_mode & 0o777 == 0o700
    assert load_key(path, WireGuardPrivateKey) == key
    assert not [p for p in path.parent.iterdir() if p.name.endswith(".tmp")]


def test_refuses_private_key_readable_by_others(tmp_path):
    path = tmp_path / "wg.key"
    save_key(path, WireGuardPrivateKey.generate())
    path.chmod(0o644)
    with pytest.raises(InvalidKey, match="other users can read it; run `chmod 600"):
        load_key(path, WireGuardPrivateKey)


def test_public_key_files_may_be_world_readable(tmp_path):
    path = tmp_path / "wg.pub"
    pub = WireGuardPrivateKey.generate().public_key()
    save_key(path, pub)
    path.chmod(0o644)
    assert load_key(path, WireGuardPublicKey) == pub


def test_garbage_key_file_names_the_file(tmp_path):
    path = tmp_path / "wg.key"
    write_private_file(path, "not a key\n")
    with pytest.raises(InvalidKey, match=str(path)):
        load_key(path, WireGuardPrivateKey)
    with pytest.raises(InvalidKey, match="does not exist"):
        load_key(tmp_path / "missing", WireGuardPrivateKey)


def test_atomic_write_replaces_whole_file(tmp_path):
    path = tmp_path / "f"
    write_private_file(path, "a" * 1000)
    write_private_file(path, "b")
    assert path.read_text() == "b"


def test_cli_genkey_pubkey_genpsk():
    private = wgmesh("keys", "genkey").stdout.strip()
    pub = wgmesh("keys", "pubkey", stdin=private + "\n")
    assert pub.returncode == 0
    assert WireGuardPrivateKey.from_base64(private).public_key().base64() == pub.stdout.strip()
    psk = wgmesh("keys", "genpsk").stdout.strip()
    assert len(base64.b64decode(psk)) == 32


def test_cli_pubkey_rejects_garbage_with_one_line():
    result = wgmesh("keys", "pubkey", stdin="garbage\n")
    assert result.returncode == 1
    assert "Traceback" not in result.stderr
    assert "44 base64 characters" in result.stderr


@pytest.mark.skipif(shutil.which("wg") is None, reason="wireguard-tools (`wg`) is not installed")
def test_pubkey_matches_real_wg_both_ways():
    ours = wgmesh("keys", "genkey").stdout.strip()
    theirs = subprocess.run(["wg", "genkey"], capture_output=True, text=True, check=True).stdout.strip()
    for private in (ours, theirs):
        expected = subprocess.run(
            ["wg", "pubkey"], input=private + "\n", capture_output=True, text=True, check=True
        ).stdout.strip()
        assert wgmesh("keys", "pubkey", stdin=private + "\n").stdout.strip() == expected
