"""Key files on disk: atomic writes with mode 0600 in a 0700 directory, and loads that refuse files
other users can read; the same for one-line secrets (credentials, pre-auth keys).

A key file holds one key as base64 and a newline, the format `wg genkey` writes.
"""

from __future__ import annotations

import contextlib
import os
import stat
import tempfile
from pathlib import Path
from typing import TypeVar

from keys.types import InvalidKey, _Key

K = TypeVar("K", bound=_Key)


def ensure_private_dir(path: Path) -> None:
    """Create `path` (and parents) if missing and make it 0700."""
    path.mkdir(parents=True, exist_ok=True, mode=0o700)
    os.chmod(path, 0o700)


def write_file_atomically(path: Path, data: bytes | str, mode: int) -> None:
    """Write `data` to `path` atomically with `mode` (temp file, fsync, rename, fsync of the directory):
    readers see the old file or the new one, never a torn one, also after a crash."""
    payload = data.encode() if isinstance(data, str) else data
    fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.", suffix=".tmp", dir=path.parent)
    try:
        os.fchmod(fd, mode)
        with os.fdopen(fd, "wb") as f:
            f.write(payload)
            f.flush()
            os.fsync(f.fileno())
        os.replace(tmp, path)
    except BaseException:
        with contextlib.suppress(FileNotFoundError):
            os.unlink(tmp)
        raise
    dir_fd = os.open(path.parent, os.O_RDONLY)
    try:
        os.fsync(dir_fd)
    finally:
        os.close(dir_fd)


def write_private_file(path: Path, data: bytes | str) -> None:
    """Write `data` to `path` atomically with mode 0600 in a 0700 directory."""
    ensure_private_dir(path.parent)
    write_file_atomically(path, data, 0o600)


def save_key(path: Path, key: _Key) -> None:
    write_private_file(path, key.base64() + "\n")


def load_key(path: Path, kind: type[K]) -> K:
    """Load a key file. Secret keys must not be readable or writable by group or others."""
    try:
        st = path.stat()
    except FileNotFoundError:
        raise InvalidKey(f"{kind.KIND} file {path} does not exist") from None
    if kind.SECRET and st.st_mode & (stat.S_IRWXG | stat.S_IRWXO):
        raise InvalidKey(
            f"{kind.KIND} file {path} has mode {stat.S_IMODE(st.st_mode):04o}: other users can read it; "
            f"run `chmod 600 {path}`"
        )
    try:
        text = path.read_text("ascii")
    except UnicodeDecodeError:
        raise InvalidKey(f"{kind.KIND} file {path}: not base64 text") from None
    try:
        return kind.from_base64(text)
    except InvalidKey as e:
        raise InvalidKey(f"{path}: {e}") from None


class SecretFileError(ValueError):
    """One line saying why a secret file cannot be used."""


def read_secret_line(path: Path, what: str) -> str:
    """The one-line secret in `path` (`what` names it in errors); only its owner may read the file."""
    try:
        st = path.stat()
        text = path.read_text("utf-8")
    except FileNotFoundError:
        raise SecretFileError(f"{what} file {path} does not exist") from None
    except (OSError, UnicodeDecodeError) as e:
        raise SecretFileError(f"{what} file {path}: {getattr(e, 'strerror', None) or e}") from None
    if st.st_mode & (stat.S_IRWXG | stat.S_IRWXO):
        raise SecretFileError(
            f"{what} file {path} has mode {stat.S_IMODE(st.st_mode):04o}: "
            f"other users can read it; run `chmod 600 {path}`"
        )
    secret = text.strip()
    if not secret or "\n" in secret:
        raise SecretFileError(f"{what} file {path} must hold exactly one line")
    return secret
