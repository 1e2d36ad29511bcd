"""A role's TOML settings file (the controller's controller.toml, the agent's agent.toml): read it and
refuse keys the role does not know, each problem one line naming the file."""

from __future__ import annotations

import tomllib
from collections.abc import Set
from pathlib import Path
from typing import Any


class SettingsFileError(ValueError):
    """One line naming the file and what is wrong with it."""


def read_settings_file(path: Path, known: Set[str]) -> dict[str, Any]:
    """The file's top-level table; SettingsFileError when unreadable, not TOML, or with an unknown key."""
    try:
        data = tomllib.loads(path.read_text("utf-8"))
    except FileNotFoundError:
        raise SettingsFileError(f"config file {path} does not exist") from None
    except (OSError, UnicodeDecodeError) as e:
        raise SettingsFileError(f"config file {path}: {e}") from None
    except tomllib.TOMLDecodeError as e:
        raise SettingsFileError(f"config file {path} is not valid TOML: {e}") from None
    unknown = sorted(set(data) - set(known))
    if unknown:
        raise SettingsFileError(
            f"config file {path}: unknown key {unknown[0]!r} (known: {', '.join(sorted(known))})"
        )
    return data
