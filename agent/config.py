"""The agent's settings file (`/etc/wgmesh/agent.toml`) and where each `wgmesh agent up` option comes
from: the flag, else its `WGMESH_*` environment variable, else the file (`--config FILE` or
`WGMESH_CONFIG`), else the default.

Rules:
- Only the keys in FILE_KEYS may appear in the file; anything else is one error line naming the key.
- Every value says where it came from (`--flag`, `WGMESH_X` or `FILE: key`) so an error names its source.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from wgmesh.settingsfile import SettingsFileError, read_settings_file

CONFIG_ENV = "WGMESH_CONFIG"

# option (the `up` argparse dest, also the file key) -> environment variable
ENV = {
    "controller": "WGMESH_CONTROLLER",
    "token_file": "WGMESH_TOKEN_FILE",
    "ca_file": "WGMESH_CA_FILE",
    "interface": "WGMESH_INTERFACE",
    "backend": "WGMESH_BACKEND",
    "state_dir": "WGMESH_STATE_DIR",
    "listen_port": "WGMESH_LISTEN_PORT",
    "endpoint": "WGMESH_ENDPOINT",
    "hostname": "WGMESH_HOSTNAME",
    "probe_interval": "WGMESH_PROBE_INTERVAL",
    "poll_timeout": "WGMESH_POLL_TIMEOUT",
    "metrics_listen": "WGMESH_METRICS_LISTEN",
}
FILE_KEYS = frozenset(ENV)


class ConfigError(Exception):
    """One line naming the setting, where it came from and what is wrong."""


@dataclass(frozen=True)
class Source:
    """A raw value and where it came from (for error messages)."""

    value: Any
    where: str


def read_config(path: Path) -> dict[str, Any]:
    """The settings file as a dict of known keys; ConfigError when unreadable, not TOML or unknown keys."""
    try:
        return read_settings_file(path, FILE_KEYS)
    except SettingsFileError as e:
        raise ConfigError(str(e)) from None


def config_path(flag: Path | None, env: Mapping[str, str]) -> Path | None:
    """The settings file to read: --config, else WGMESH_CONFIG, else none (the unit passes --config)."""
    if flag is not None:
        return flag
    if env.get(CONFIG_ENV):
        return Path(env[CONFIG_ENV])
    return None


def pick(
    name: str, flags: Mapping[str, Any], env: Mapping[str, str], file: Mapping[str, Any], path: Path | None
) -> Source | None:
    """The first of flag, environment and file that gives option `name`; None when none does."""
    flag = flags.get(name)
    if flag is not None and flag != []:
        return Source(flag, f"--{name.replace('_', '-')}")
    variable = ENV[name]
    if env.get(variable):
        return Source(env[variable], variable)
    if name in file:
        return Source(file[name], f"{path}: {name}")
    return None
