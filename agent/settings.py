"""What the operator chose for one agent (`AgentSettings`, built once by `wgmesh agent up`), and the
error an agent start fails with (`AgentError`)."""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

DEFAULT_INTERFACE = "wg0"
DEFAULT_LISTEN_PORT = 51820
DEFAULT_PROBE_INTERVAL_S = 10.0
DEFAULT_POLL_TIMEOUT_S = 30.0


class AgentError(RuntimeError):
    """The agent cannot start; the message is one line saying what to do."""


@dataclass(frozen=True)
class AgentSettings:
    """What the operator chose on the command line; None means 'what the state dir says, else default'."""

    state_dir: Path
    controller_url: str | None = None
    token: str | None = None  # the secret part of the pre-auth key
    ca_pin: str | None = None  # the pre-auth key's pin of the controller CA (agent/trust.py)
    ca_file: Path | None = None  # the operator's CA for the controller, instead of a pin
    interface: str | None = None
    hostname: str | None = None
    listen_port: int = DEFAULT_LISTEN_PORT
    endpoints: tuple[str, ...] = ()
    probe_interval_s: float = DEFAULT_PROBE_INTERVAL_S
    poll_timeout_s: float = DEFAULT_POLL_TIMEOUT_S
    down_on_stop: bool = False
    direct_probes: bool | None = None  # probe addresses (agent.desired); None: where IPv6 is usable


def ipv6_usable(proc: Path = Path("/proc/sys/net/ipv6/conf/all/disable_ipv6")) -> bool:
    """IPv6 works in this network namespace (a container may have it off: no probe addresses then)."""
    try:
        return proc.read_text().strip() == "0"
    except OSError:
        return False


def short_error(error: BaseException) -> str:
    """The first line of an error's text (its type name when it has none): what logs and status show."""
    text = str(error).strip().splitlines()
    return text[0] if text else type(error).__name__
