"""Controller settings: built once by the entry point from flags, then WGMESH_* environment variables,
then an optional TOML file, then defaults (first one that says something wins).

Every problem is reported as one `SettingsError` line naming the setting and where it came from.
"""

from __future__ import annotations

import dataclasses
import ipaddress
import os
import re
from collections.abc import Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from controller.ipam import pool_problem
from controller.netmap import DEFAULT_KEEPALIVE_S
from controller.topology import LinkPolicy
from wgmesh.metrics_listen import MetricsListenError, parse_metrics_listen
from wgmesh.settingsfile import SettingsFileError, read_settings_file
from wire.fields import parse_endpoint
from wire.models import IPNetwork

DEFAULT_LISTEN = "0.0.0.0:8420"
DEFAULT_MESH_CIDR = "100.64.0.0/10"
DEFAULT_MAX_BODY_BYTES = 1 << 20
DEFAULT_CONTROLLER_URL = "https://127.0.0.1:8420"

_SAN = re.compile(r"^[A-Za-z0-9*][A-Za-z0-9.:*-]{0,252}$")

# setting -> environment variable
ENV = {
    "listen": "WGMESH_LISTEN",
    "state_dir": "WGMESH_STATE_DIR",
    "db": "WGMESH_DB",
    "mesh_cidr": "WGMESH_MESH_CIDR",
    "config": "WGMESH_CONFIG",
    "max_body_bytes": "WGMESH_MAX_BODY_BYTES",
    "persistent_keepalive": "WGMESH_PERSISTENT_KEEPALIVE",
    "key_rotation_interval": "WGMESH_KEY_ROTATION_INTERVAL",
    "tls_cert": "WGMESH_TLS_CERT",
    "tls_key": "WGMESH_TLS_KEY",
    "tls_san": "WGMESH_TLS_SAN",
    "insecure_http": "WGMESH_INSECURE_HTTP",
    "metrics_listen": "WGMESH_METRICS_LISTEN",
}
FILE_KEYS = {
    "listen",
    "state_dir",
    "db",
    "mesh_cidr",
    "max_body_bytes",
    "persistent_keepalive",
    "key_rotation_interval",
    "tls_cert",
    "tls_key",
    "tls_san",
    "insecure_http",
    "metrics_listen",
    "routing",
}


# What each setting means, for `controller serve --help`, the README and docs/controller.example.toml
# (a unit test keeps these, ENV, FILE_KEYS and the example file in step).
SETTING_DOCS: dict[str, str] = {
    "listen": f"HOST:PORT the REST API listens on (default {DEFAULT_LISTEN})",
    "state_dir": "directory of the database and the admin credential (default /var/lib/wgmesh/controller "
    "as root, else $XDG_STATE_HOME/wgmesh/controller)",
    "db": "database URL: sqlite:///PATH or postgresql://... (default SQLite in the state directory)",
    "mesh_cidr": f"tunnel address pool (default {DEFAULT_MESH_CIDR})",
    "config": "TOML settings file (its keys: the names of this list, and [routing])",
    "max_body_bytes": f"largest request body accepted, in bytes (default {DEFAULT_MAX_BODY_BYTES})",
    "persistent_keepalive": f"keepalive seconds agents set on every peer, 0 for none (default {DEFAULT_KEEPALIVE_S})",
    "key_rotation_interval": "seconds between automatic WireGuard key rotations of each node, one node at a "
    "time; 0 for none (default 0: off, because every agent must speak rotation first; `wgmesh nodes "
    "rotate` works either way)",
    "tls_cert": "PEM certificate chain to serve HTTPS with (with tls_key; default: a controller CA made "
    "in STATE_DIR/tls on first start, whose pin every pre-auth key carries)",
    "tls_key": "PEM private key of tls_cert",
    "tls_san": "extra names and addresses agents reach the controller at, for the managed CA's server "
    "certificate (comma-separated; the listen address, host names and loopback are always in it)",
    "insecure_http": "true: serve plain HTTP, only behind a TLS-terminating proxy on this host "
    "(default false)",
    "metrics_listen": "HOST:PORT of a separate plain-HTTP listener serving GET /metrics WITHOUT a "
    "credential, for a Prometheus server (default: none; GET /metrics on the API listener always "
    "needs the admin credential). Bind it to loopback or a private address",
    "routing": "[routing] table of link weights: "
    + ", ".join(f"{f.name} (default {f.default:g})" for f in dataclasses.fields(LinkPolicy)),
}


def describe_settings() -> str:
    """The settings as `serve --help` shows them: TOML key, environment variable, meaning."""
    lines = ["settings (flags win over WGMESH_* variables, which win over the --config TOML file):"]
    for name, text in SETTING_DOCS.items():
        env = f" / {ENV[name]}" if name in ENV else ""
        lines.append(f"  {name}{env}")
        lines.append(f"      {text}")
    return "\n".join(lines)


class SettingsError(Exception):
    """One line saying which setting is wrong and why."""


@dataclass(frozen=True)
class Settings:
    state_dir: Path
    listen_host: str = "0.0.0.0"
    listen_port: int = 8420
    db_url: str = ""  # empty: SQLite in the state directory
    mesh_cidr: IPNetwork = field(default_factory=lambda: ipaddress.ip_network(DEFAULT_MESH_CIDR))
    max_body_bytes: int = DEFAULT_MAX_BODY_BYTES
    persistent_keepalive_s: int | None = DEFAULT_KEEPALIVE_S
    key_rotation_interval_s: int | None = None  # None: no automatic rotation
    policy: LinkPolicy = field(default_factory=LinkPolicy)
    tls_cert: Path | None = None  # with tls_key: the operator's certificate; None: the managed CA
    tls_key: Path | None = None
    tls_san: tuple[str, ...] = ()
    insecure_http: bool = False
    metrics_listen: tuple[str, int] | None = None  # None: /metrics only on the API listener (admin)

    @property
    def scheme(self) -> str:
        return "http" if self.insecure_http else "https"

    @property
    def database_url(self) -> str:
        return self.db_url or f"sqlite:///{self.state_dir / 'controller.db'}"

    @property
    def listen(self) -> str:
        host = f"[{self.listen_host}]" if ":" in self.listen_host else self.listen_host
        return f"{host}:{self.listen_port}"


def default_state_dir(env: Mapping[str, str]) -> Path:
    if os.geteuid() == 0:
        return Path("/var/lib/wgmesh/controller")
    base = env.get("XDG_STATE_HOME") or str(Path.home() / ".local" / "state")
    return Path(base) / "wgmesh" / "controller"


def load_settings(flags: Mapping[str, Any], env: Mapping[str, str]) -> Settings:
    """Flags (None: not given) > environment > TOML file (flag/env `config`) > defaults."""
    config_path = flags.get("config") or env.get(ENV["config"])
    file_values: dict[str, Any] = {}
    if config_path:
        file_values = _read_toml(Path(config_path))

    def pick(name: str) -> tuple[Any, str] | None:
        if flags.get(name) is not None:
            return flags[name], f"--{name.replace('_', '-')}"
        if env.get(ENV[name]):
            return env[ENV[name]], ENV[name]
        if name in file_values:
            return file_values[name], f"{config_path}: {name}"
        return None

    kwargs: dict[str, Any] = {}
    listen = pick("listen")
    host, port = _listen(*(listen or (DEFAULT_LISTEN, "default")))
    kwargs.update(listen_host=host, listen_port=port)

    state = pick("state_dir")
    kwargs["state_dir"] = Path(_text(*state)).expanduser() if state else default_state_dir(env)

    db = pick("db")
    if db:
        kwargs["db_url"] = _db_url(*db)

    cidr = pick("mesh_cidr")
    kwargs["mesh_cidr"] = _cidr(*(cidr or (DEFAULT_MESH_CIDR, "default")))

    body = pick("max_body_bytes")
    if body:
        kwargs["max_body_bytes"] = _int(*body, low=1024, high=64 << 20)

    keepalive = pick("persistent_keepalive")
    if keepalive:
        value = _int(*keepalive, low=0, high=65535)
        kwargs["persistent_keepalive_s"] = value or None

    interval = pick("key_rotation_interval")
    if interval:
        kwargs["key_rotation_interval_s"] = _int(*interval, low=0, high=10 * 365 * 86400) or None
    cert, key = pick("tls_cert"), pick("tls_key")
    if (cert is None) != (key is None):
        given = cert or key
        assert given is not None
        raise SettingsError(f"{given[1]}: tls_cert and tls_key go together; give both or neither")
    if cert and key:
        kwargs["tls_cert"] = Path(_text(*cert)).expanduser()
        kwargs["tls_key"] = Path(_text(*key)).expanduser()
    san = pick("tls_san")
    if san:
        kwargs["tls_san"] = _names(*san)
    insecure = pick("insecure_http")
    if insecure:
        kwargs["insecure_http"] = _bool(*insecure)
    if kwargs.get("insecure_http") and "tls_cert" in kwargs:
        raise SettingsError("insecure_http and tls_cert contradict each other: choose one")

    metrics = pick("metrics_listen")
    if metrics:
        try:
            kwargs["metrics_listen"] = parse_metrics_listen(_text(*metrics))
        except MetricsListenError as e:
            raise SettingsError(f"{metrics[1]}: {e}") from None

    if "routing" in file_values:
        kwargs["policy"] = _policy(file_values["routing"], f"{config_path}: [routing]")
    return Settings(**kwargs)


def _names(value: Any, where: str) -> tuple[str, ...]:
    items = value.split(",") if isinstance(value, str) else value
    if not isinstance(items, list | tuple) or not all(isinstance(i, str) for i in items):
        raise SettingsError(f"{where}: expected names separated by commas, got {value!r}")
    names = tuple(i.strip() for i in items if i.strip())
    for name in names:
        if not _SAN.match(name):
            raise SettingsError(f"{where}: {name!r} is not a host name or an IP address")
    return names


def _bool(value: Any, where: str) -> bool:
    if isinstance(value, bool):
        return value
    text = str(value).strip().lower()
    if text in ("1", "true", "yes", "on"):
        return True
    if text in ("0", "false", "no", "off"):
        return False
    raise SettingsError(f"{where}: expected true or false, got {value!r}")


def _read_toml(path: Path) -> dict[str, Any]:
    try:
        return read_settings_file(path, FILE_KEYS)
    except SettingsFileError as e:
        raise SettingsError(str(e)) from None


def _text(value: Any, where: str) -> str:
    if not isinstance(value, str) or not value.strip():
        raise SettingsError(f"{where}: expected a non-empty string, got {value!r}")
    return value.strip()


def _int(value: Any, where: str, low: int, high: int) -> int:
    try:
        number = int(value) if not isinstance(value, bool) else None
    except (TypeError, ValueError):
        number = None
    if number is None or not low <= number <= high:
        raise SettingsError(f"{where}: expected an integer from {low} to {high}, got {value!r}")
    return number


def _listen(value: Any, where: str) -> tuple[str, int]:
    text = _text(value, where)
    try:
        host, port = parse_endpoint(text)
    except ValueError as e:
        raise SettingsError(f"{where}: {e}") from None
    return host, port


def _cidr(value: Any, where: str) -> IPNetwork:
    text = _text(value, where)
    try:
        net = ipaddress.ip_network(text, strict=True)
    except ValueError as e:
        raise SettingsError(f"{where}: {text!r} is not a network in CIDR form ({e})") from None
    problem = pool_problem(net)
    if problem:
        raise SettingsError(f"{where}: {problem}")
    return net


_SCHEME = re.compile(r"^[a-z][a-z0-9+.-]{0,30}$")


def _db_url(value: Any, where: str) -> str:
    """A database URL, checked enough that nothing of it but its scheme is ever echoed: it carries the
    password."""
    text = _text(value, where)
    scheme, sep, rest = text.partition("://")
    base = scheme.partition("+")[0]
    if not sep or base not in ("sqlite", "postgresql", "postgres"):
        got = repr(scheme) if sep and _SCHEME.match(scheme) else "something else"
        raise SettingsError(f"{where}: database URL must start with sqlite:/// or postgresql://, got {got}")
    if base == "postgres":
        text = "postgresql" + text[len("postgres") :]
    if base != "sqlite":
        authority = rest.partition("/")[0]
        if authority.count("@") > 1:
            raise SettingsError(
                f"{where}: the database URL has more than one '@' before its host: write an '@' in the "
                "user name or password as %40"
            )
        import sqlalchemy as sa  # only when a URL is given: admin commands never pay for it

        try:
            sa.engine.make_url(text)
        except ValueError:
            raise SettingsError(f"{where}: the port of the database URL is not a number") from None
        except sa.exc.ArgumentError:
            raise SettingsError(
                f"{where}: not a database URL (expected postgresql://USER:PASSWORD@HOST[:PORT]/DATABASE)"
            ) from None
    return text


def _policy(value: Any, where: str) -> LinkPolicy:
    if not isinstance(value, dict):
        raise SettingsError(f"{where}: expected a table")
    known = {f.name: f for f in dataclasses.fields(LinkPolicy)}
    values: dict[str, float] = {}
    for key, raw in value.items():
        if key not in known:
            raise SettingsError(f"{where}: unknown key {key!r} (known: {', '.join(known)})")
        if isinstance(raw, bool) or not isinstance(raw, int | float):
            raise SettingsError(f"{where}: {key} must be a number, got {raw!r}")
        values[key] = float(raw)
    policy = LinkPolicy(**values)
    problems = policy.problems()
    if problems:
        raise SettingsError(f"{where}: {problems[0]}")
    return policy
