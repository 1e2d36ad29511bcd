"""Credentials: the admin credential file, node credentials and pre-auth keys.

Rules:
- Every secret is 256 random bits from `secrets`, with a prefix that says what it is.
- Only SHA-256 hashes are stored: the secrets are random, so a plain hash is as good as a slow one
  and lets a request be authenticated by one dictionary lookup.
- Comparisons of secrets go through hashes and `hmac.compare_digest`.
- The admin credential lives in STATE_DIR/admin-credential, one line, mode 0600.
"""

from __future__ import annotations

import hashlib
import hmac
import secrets
from pathlib import Path

from keys.store import SecretFileError, read_secret_line, write_private_file
from wire.preauth import PREAUTH_PREFIX

__all__ = ["PREAUTH_PREFIX"]  # defined with the key format in wire/preauth.py

ADMIN_PREFIX = "wgm_admin_"
NODE_PREFIX = "wgm_node_"

ADMIN_CREDENTIAL_FILE = "admin-credential"


class CredentialError(Exception):
    """The admin credential file cannot be used; the message says why."""


def new_secret(prefix: str) -> str:
    return prefix + secrets.token_urlsafe(32)


def credential_hash(secret: str) -> str:
    return hashlib.sha256(secret.encode()).hexdigest()


def same_hash(a: str, b: str) -> bool:
    return hmac.compare_digest(a.encode(), b.encode())


def admin_credential_path(state_dir: Path) -> Path:
    return state_dir / ADMIN_CREDENTIAL_FILE


def ensure_admin_credential(state_dir: Path) -> tuple[str, bool]:
    """The admin credential, created (0600) when missing. Returns (credential, created_now)."""
    path = admin_credential_path(state_dir)
    if path.exists():
        return read_admin_credential(path), False
    credential = new_secret(ADMIN_PREFIX)
    write_private_file(path, credential + "\n")
    return credential, True


def read_admin_credential(path: Path) -> str:
    try:
        return read_secret_line(path, "admin credential")
    except SecretFileError as e:
        raise CredentialError(str(e)) from None
