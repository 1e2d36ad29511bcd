"""The agent's state directory: what a host keeps on disk to restart without the pre-auth key.

Layout of STATE_DIR (the directory is 0700; every file is written atomically with mode 0600):

    node.json            AgentState: who this host is in the mesh, which controller, which interface.
                         No secrets, so tools (the lab, `wgmesh agent status`) may read it freely.
    wireguard.key        the WireGuard private key, base64 + newline (the `wg genkey` format)
    identity.key         the Ed25519 identity private key (seed), base64 + newline
    credential           the node credential the controller issued at enrollment, one line
    netmap.json          the last network map received (wire.models.NetMap as JSON)
    status.json          agent.status.AgentStatus as JSON, rewritten whenever it changes
    p2p-directory.json   the p2p directory (peers' identity keys), written from the network map

Rules:
- Private keys and the credential are created here and never leave the host; they live only in their
  own files, never in node.json, status.json or a log line.
- A loader names the file and what is wrong with it (`StateError`), never a traceback.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass
from datetime import datetime
from pathlib import Path
from typing import Literal

from pydantic import BaseModel, ConfigDict, Field, ValidationError

from keys.store import ensure_private_dir, load_key, save_key, write_private_file
from keys.types import IdentityPrivateKey, InvalidKey, WireGuardPrivateKey
from wire.models import IPAddress, IPNetwork, NetMap, NodeId

STATE_FORMAT = 1
DEFAULT_STATE_DIR = Path("/var/lib/wgmesh")
# Names the state directory when --state-dir is not given (empty counts as unset). The lab sets it for
# every command it runs on a host; `wgmesh p2p` reads the same variable.
STATE_DIR_ENV = "WGMESH_STATE_DIR"


def default_state_dir(environ: Mapping[str, str]) -> Path:
    return Path(environ.get(STATE_DIR_ENV) or DEFAULT_STATE_DIR)


BackendName = Literal["kernel", "userspace", "fake"]


class StateError(RuntimeError):
    """The state directory is missing something or holds a file that cannot be read; says which."""


@dataclass(frozen=True)
class StatePaths:
    """Where each file of one state directory lives."""

    root: Path

    @property
    def node(self) -> Path:
        return self.root / "node.json"

    @property
    def wireguard_key(self) -> Path:
        return self.root / "wireguard.key"

    @property
    def identity_key(self) -> Path:
        return self.root / "identity.key"

    @property
    def credential(self) -> Path:
        return self.root / "credential"

    @property
    def netmap(self) -> Path:
        return self.root / "netmap.json"

    @property
    def status(self) -> Path:
        return self.root / "status.json"

    @property
    def p2p_directory(self) -> Path:
        return self.root / "p2p-directory.json"


class AgentState(BaseModel):
    """node.json: this host's enrollment and the settings a restart reuses. Holds no secret."""

    model_config = ConfigDict(extra="forbid", frozen=True)

    format: int = STATE_FORMAT
    node_id: NodeId
    name: str
    tunnel_address: IPAddress
    mesh_cidr: IPNetwork
    controller_url: str
    interface: str = Field(description="The WireGuard interface the agent runs.")
    backend: BackendName = Field(description="The backend the agent last ran with (never 'auto').")
    listen_port: int = Field(ge=1, le=65535, description="The UDP port given at enrollment.")
    enrolled_at: datetime

    @classmethod
    def load(cls, state_dir: Path) -> AgentState:
        """Read STATE_DIR/node.json; StateError when the host has not enrolled or the file is bad."""
        path = StatePaths(Path(state_dir)).node
        try:
            text = path.read_text()
        except FileNotFoundError:
            raise StateError(f"{path} does not exist: this host has not enrolled yet") from None
        except OSError as e:
            raise StateError(f"{path}: cannot read: {e.strerror}") from None
        try:
            return cls.model_validate_json(text)
        except ValidationError as e:
            raise StateError(f"{path}: not a valid node state: {_first_error(e)}") from None

    def save(self, state_dir: Path) -> None:
        write_private_file(StatePaths(Path(state_dir)).node, self.model_dump_json(indent=2) + "\n")


@dataclass(frozen=True)
class HostKeys:
    """The two private keys of this host, generated on first start and kept 0600 in the state dir."""

    wireguard: WireGuardPrivateKey
    identity: IdentityPrivateKey


def load_or_create_keys(state_dir: Path) -> tuple[HostKeys, bool]:
    """The host's keys, generating (and saving) any that are missing. Returns (keys, created_any)."""
    paths = StatePaths(Path(state_dir))
    ensure_private_dir(paths.root)
    created = False
    try:
        if paths.wireguard_key.exists():
            wg = load_key(paths.wireguard_key, WireGuardPrivateKey)
        else:
            wg = WireGuardPrivateKey.generate()
            save_key(paths.wireguard_key, wg)
            created = True
        if paths.identity_key.exists():
            ident = load_key(paths.identity_key, IdentityPrivateKey)
        else:
            ident = IdentityPrivateKey.generate()
            save_key(paths.identity_key, ident)
            created = True
    except InvalidKey as e:
        raise StateError(str(e)) from None
    return HostKeys(wg, ident), created


def load_keys(state_dir: Path) -> HostKeys:
    """The host's existing keys; StateError when one is missing or unreadable."""
    paths = StatePaths(Path(state_dir))
    try:
        return HostKeys(
            load_key(paths.wireguard_key, WireGuardPrivateKey),
            load_key(paths.identity_key, IdentityPrivateKey),
        )
    except InvalidKey as e:
        raise StateError(str(e)) from None


def save_credential(state_dir: Path, credential: str) -> None:
    write_private_file(StatePaths(Path(state_dir)).credential, credential + "\n")


def load_credential(state_dir: Path) -> str:
    """The node credential; refuses a file other users can read, like a private key."""
    path = StatePaths(Path(state_dir)).credential
    try:
        st = path.stat()
        if st.st_mode & 0o077:
            raise StateError(f"{path} has mode {st.st_mode & 0o777:04o}: other users can read it; chmod 600")
        text = path.read_text().strip()
    except FileNotFoundError:
        raise StateError(f"{path} does not exist: this host has not enrolled yet") from None
    except OSError as e:
        raise StateError(f"{path}: cannot read: {e.strerror}") from None
    if not text:
        raise StateError(f"{path} is empty")
    return text


def save_netmap(state_dir: Path, netmap: NetMap) -> None:
    write_private_file(StatePaths(Path(state_dir)).netmap, netmap.model_dump_json(indent=1) + "\n")


def load_netmap(state_dir: Path) -> NetMap | None:
    """The cached network map, or None when there is none. A corrupt cache is a StateError."""
    path = StatePaths(Path(state_dir)).netmap
    try:
        text = path.read_text()
    except FileNotFoundError:
        return None
    except OSError as e:
        raise StateError(f"{path}: cannot read: {e.strerror}") from None
    try:
        return NetMap.model_validate_json(text)
    except ValidationError as e:
        raise StateError(f"{path}: not a valid network map: {_first_error(e)}") from None


def _first_error(e: ValidationError) -> str:
    errors = e.errors()
    if not errors:
        return str(e)
    err = errors[0]
    if err.get("type") == "json_invalid":
        return f"not JSON ({err.get('msg')})"
    loc = ".".join(str(p) for p in err.get("loc", ())) or "(top level)"
    return f"{loc}: {err.get('msg')}"
