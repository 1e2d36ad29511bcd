"""The rotating node's files: STATE_DIR/rotation.json holds a rotation under way (`PendingRotation`,
both private keys, 0600, written atomically before each phase's effects), and the host key file that
the new key replaces when the device switched.

Rules:
- rotation.json exists exactly while a rotation runs; its absence means none does.
- The new key becomes STATE_DIR/wireguard.key (atomic rename) only once the device runs it.
- A key that is no longer wanted is destroyed with the file: overwritten, flushed, then unlinked.
"""

from __future__ import annotations

import json
import os
from pathlib import Path

from agent.rotation import PendingRotation
from agent.state import StateError, StatePaths
from keys.store import save_key, write_private_file
from keys.types import InvalidKey, WireGuardPrivateKey

FILE_NAME = "rotation.json"


def pending_path(state_dir: Path) -> Path:
    return Path(state_dir) / FILE_NAME


def save_pending(state_dir: Path, pending: PendingRotation) -> None:
    data = {
        "rotation_id": pending.rotation_id,
        "old_key": pending.old_key.base64(),
        "new_key": pending.new_key.base64(),
        "phase": pending.phase,
        "started_at": pending.started_at,
        "switched_at": pending.switched_at,
        "retry_at": pending.retry_at,
        "attempts": pending.attempts,
    }
    write_private_file(pending_path(state_dir), json.dumps(data, indent=2) + "\n")


def load_pending(state_dir: Path) -> PendingRotation | None:
    """The rotation under way, or None. StateError naming the file when it cannot be read."""
    path = pending_path(state_dir)
    try:
        data = json.loads(path.read_text())
    except FileNotFoundError:
        return None
    except (OSError, ValueError) as e:
        raise StateError(f"{path}: cannot read the rotation under way: {e}") from None
    try:
        if data["phase"] not in ("prepared", "switching", "switched", "recorded"):
            raise ValueError(f"unknown phase {data['phase']!r}")
        return PendingRotation(
            rotation_id=int(data["rotation_id"]),
            old_key=WireGuardPrivateKey.from_base64(data["old_key"]),
            new_key=WireGuardPrivateKey.from_base64(data["new_key"]),
            phase=data["phase"],
            started_at=float(data["started_at"]),
            switched_at=None if data.get("switched_at") is None else float(data["switched_at"]),
            retry_at=float(data.get("retry_at", 0.0)),
            attempts=int(data.get("attempts", 0)),
        )
    except (KeyError, TypeError, ValueError, InvalidKey) as e:
        raise StateError(f"{path}: not a valid rotation record: {e}") from None


def destroy_pending(state_dir: Path) -> None:
    """Overwrite rotation.json (and the keys in it), flush it, and remove it. Missing: no-op."""
    path = pending_path(state_dir)
    try:
        size = path.stat().st_size
        with open(path, "r+b") as f:
            f.write(b"\0" * size)
            f.flush()
            os.fsync(f.fileno())
        path.unlink()
    except FileNotFoundError:
        return


def adopt_key(state_dir: Path, key: WireGuardPrivateKey) -> None:
    """The new key becomes the host's WireGuard key file."""
    save_key(StatePaths(Path(state_dir)).wireguard_key, key)
