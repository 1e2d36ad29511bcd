"""`wgmesh agent`: up (run the daemon), down (remove the interface), status (peers table), export
(wg-quick file).

This is the entry point that builds the settings once and wires the real I/O edges into the daemon.
A user mistake (bad argument, unreadable state, unreachable controller at enrollment) is one line on
stderr and a non-zero exit, never a traceback: 2 for bad usage, 1 for everything else. `up` exits 3
(agent.core.EXIT_REMOVED) after the controller removed this node from the mesh: its peers are down and
restarting will not bring them back (a service manager should not restart it).
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import signal
import socket
import sys
import time
from collections.abc import Callable, Mapping, Sequence
from ipaddress import ip_interface
from pathlib import Path
from typing import TYPE_CHECKING, Any, TextIO

from pydantic import TypeAdapter, ValidationError

from agent.backends import BACKEND_CHOICES, BackendError, open_backend
from agent.config import ConfigError, Source, config_path, pick, read_config
from agent.eventlog import EventLog
from agent.hostnet.base import HostNetwork
from agent.nft import NftError, SystemNftables, apply_firewall
from agent.settings import (
    DEFAULT_LISTEN_PORT,
    DEFAULT_POLL_TIMEOUT_S,
    DEFAULT_PROBE_INTERVAL_S,
    AgentError,
    AgentSettings,
)
from agent.state import (
    DEFAULT_STATE_DIR,
    STATE_DIR_ENV,
    AgentState,
    StateError,
    StatePaths,
    default_state_dir,
    load_netmap,
)
from agent.status import AgentStatus, StatusError, render_table, with_live_device
from agent.targets import split_urls, url_problem
from keys.store import SecretFileError, read_secret_line
from wgmesh.argparser import USAGE_EXIT, OneLineParser, UsageError
from wgmesh.metrics_listen import DEFAULT_AGENT_METRICS_PORT, MetricsListenError, parse_metrics_listen
from wgmesh.systemd import Notifier
from wire.fields import Hostname, parse_endpoint
from wire.preauth import PreAuthKey, PreAuthKeyError, parse_preauth_key

if TYPE_CHECKING:
    from agent.daemon import Agent
    from agent.device import Device
    from agent.metrics import MetricsListener

IFNAME_MAX = 15


# --- argument checks (each raises argparse.ArgumentTypeError with one clear line) -------------------


def _controller_url(text: str) -> str:
    """One URL, or several replicas' URLs separated by commas."""
    urls = split_urls(text)
    if not urls:
        raise argparse.ArgumentTypeError(f"controller URL {text!r}: expected http(s)://HOST[:PORT]")
    for url in urls:
        problem = url_problem(url)
        if problem:
            raise argparse.ArgumentTypeError(f"controller URL {url!r}: {problem}")
    return ",".join(urls)


def _ifname(text: str) -> str:
    if not text or len(text) > IFNAME_MAX or any(c in text for c in "/ \t\n:") or text in (".", ".."):
        raise argparse.ArgumentTypeError(
            f"interface name {text!r}: 1-{IFNAME_MAX} characters, no '/', ':' or spaces"
        )
    return text


def _port(text: str) -> int:
    if not text.isdigit() or not 1 <= int(text) <= 65535:
        raise argparse.ArgumentTypeError(f"port {text!r}: must be 1-65535")
    return int(text)


def _endpoint(text: str) -> str:
    try:
        parse_endpoint(text)
    except ValueError as e:
        raise argparse.ArgumentTypeError(str(e)) from None
    return text


_HOSTNAME = TypeAdapter(Hostname)


def _hostname(text: str) -> str:
    try:
        return str(_HOSTNAME.validate_python(text))
    except ValidationError:
        raise argparse.ArgumentTypeError(
            f"hostname {text!r}: letters, digits, '-' and '.', at most 253 characters"
        ) from None


def _seconds(text: str) -> float:
    try:
        value = float(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"{text!r}: expected a number of seconds") from None
    if not 0.1 <= value <= 3600:
        raise argparse.ArgumentTypeError(f"{text!r}: must be between 0.1 and 3600 seconds")
    return value


def _poll_seconds(text: str) -> float:
    value = _seconds(text)
    if value > 300:
        raise argparse.ArgumentTypeError(f"{text!r}: the controller holds a poll at most 300 seconds")
    return value


def _metrics_listen(text: str) -> tuple[str, int]:
    try:
        return parse_metrics_listen(text)
    except MetricsListenError as e:
        raise argparse.ArgumentTypeError(str(e)) from None


# --- the parser -------------------------------------------------------------------------------------


def build_parser(prog: str) -> argparse.ArgumentParser:
    parser = OneLineParser(prog=prog, description="Run and inspect the wgmesh agent of this host.")
    sub = parser.add_subparsers(dest="cmd", required=True, metavar="COMMAND", parser_class=OneLineParser)

    def state_dir(p: argparse.ArgumentParser) -> None:
        p.add_argument(
            "--state-dir",
            type=Path,
            default=default_state_dir(os.environ),
            help=f"keys, enrollment and cached map (default: ${STATE_DIR_ENV} or {DEFAULT_STATE_DIR})",
        )

    # `up`'s options default to None: each one is then taken from WGMESH_*, the settings file, or its
    # default (see _layered_up_options).
    up = sub.add_parser("up", help="enroll (first start) and run the agent until SIGTERM")
    up.add_argument(
        "--config", type=Path, metavar="FILE.toml", help="settings file, e.g. /etc/wgmesh/agent.toml"
    )
    up.add_argument(
        "--controller",
        type=_controller_url,
        help="controller URL, or several replicas' URLs separated by commas (first start; later: stored)",
    )
    up.add_argument(
        "--token-file",
        type=Path,
        metavar="FILE",
        help="file holding the pre-auth key (0600), '-' for standard input (first start only); "
        "never on the command line, where `ps` shows it",
    )
    up.add_argument(
        "--ca-file",
        type=Path,
        metavar="FILE",
        help="CA of the controller's certificate, for a key without pin, or for a host enrolled before the "
        "controller served HTTPS (kept in the state directory; "
        "default: the pin in the key, else the system CAs)",
    )
    up.add_argument(
        "--insecure",
        action="store_true",
        help="allow a plain http:// controller URL (the credentials then cross the network in clear)",
    )
    up.add_argument("--interface", type=_ifname, help="WireGuard interface (default wg0, or the stored one)")
    up.add_argument(
        "--backend",
        choices=BACKEND_CHOICES,
        help="WireGuard implementation (default auto: kernel module if present, else wireguard-go)",
    )
    up.add_argument(
        "--state-dir",
        type=Path,
        help=f"keys, enrollment and cached map (default: ${STATE_DIR_ENV} or {DEFAULT_STATE_DIR})",
    )
    up.add_argument("--listen-port", type=_port, help=f"UDP port (enrollment; default {DEFAULT_LISTEN_PORT})")
    up.add_argument(
        "--endpoint",
        type=_endpoint,
        action="append",
        default=[],
        metavar="HOST:PORT",
        help="underlay address peers reach this host at (repeatable; enrollment)",
    )
    up.add_argument("--hostname", type=_hostname, help="name to enroll under (default: this host's name)")
    up.add_argument(
        "--probe-interval",
        type=_seconds,
        metavar="S",
        help=f"seconds between link probes and reports (default {DEFAULT_PROBE_INTERVAL_S:g})",
    )
    up.add_argument(
        "--poll-timeout",
        type=_poll_seconds,
        metavar="S",
        help=f"seconds the controller may hold a map request (default {DEFAULT_POLL_TIMEOUT_S:g})",
    )
    up.add_argument(
        "--metrics-listen",
        type=_metrics_listen,
        metavar="HOST:PORT",
        help=f"serve Prometheus metrics (GET /metrics, no credential) on this local address, e.g. "
        f"127.0.0.1:{DEFAULT_AGENT_METRICS_PORT} (default: off)",
    )
    up.add_argument("--down", action="store_true", help="remove the interface when the agent stops")

    down = sub.add_parser("down", help="remove this host's WireGuard interface")
    state_dir(down)
    down.add_argument("--interface", type=_ifname, help="interface (default: the stored one)")
    down.add_argument("--backend", choices=BACKEND_CHOICES, help="backend (default: the stored one)")

    status = sub.add_parser("status", help="peers, handshakes, transfer, RTT and routes")
    state_dir(status)
    status.add_argument("--json", action="store_true", help="print status.json (with live counters)")

    export = sub.add_parser("export", help="the current interface as a wg-quick file (mode 0600)")
    state_dir(export)
    export.add_argument("--output", type=Path, help="file to write (default: stdout)")
    return parser


def main(argv: Sequence[str], prog: str = "wgmesh agent") -> int:
    args = build_parser(prog).parse_args(list(argv))
    command = {"up": cmd_up, "down": cmd_down, "status": cmd_status, "export": cmd_export}[args.cmd]
    try:
        return command(args)
    except UsageError as e:
        print(f"{prog} {args.cmd}: {e}", file=sys.stderr)
        return USAGE_EXIT
    except (AgentError, StateError, StatusError, BackendError, ConfigError) as e:
        print(f"{prog} {args.cmd}: {e}", file=sys.stderr)
        return 1


# --- up -----------------------------------------------------------------------------------------------


def _backend_choice(text: str) -> str:
    if text not in BACKEND_CHOICES:
        raise argparse.ArgumentTypeError(f"backend {text!r}: expected one of {', '.join(BACKEND_CHOICES)}")
    return text


def _endpoints(value: object) -> list[str]:
    items = value if isinstance(value, list) else str(value).split(",")
    return [_endpoint(str(item).strip()) for item in items if str(item).strip()]


# option -> (check turning a value from the environment or the file into the flag's value, default)
_UP_OPTIONS: dict[str, tuple[Callable[[Any], Any], Any]] = {
    "controller": (_controller_url, None),
    "token_file": (Path, None),
    "ca_file": (Path, None),
    "interface": (_ifname, None),
    "backend": (_backend_choice, "auto"),
    "state_dir": (Path, DEFAULT_STATE_DIR),
    "listen_port": (_port, DEFAULT_LISTEN_PORT),
    "endpoint": (_endpoints, []),
    "hostname": (_hostname, None),
    "probe_interval": (_seconds, DEFAULT_PROBE_INTERVAL_S),
    "poll_timeout": (_poll_seconds, DEFAULT_POLL_TIMEOUT_S),
    "metrics_listen": (_metrics_listen, None),
}


def _layered_up_options(args: argparse.Namespace, env: Mapping[str, str]) -> argparse.Namespace:
    """`up`'s options with each one from its flag, else WGMESH_*, else the settings file, else default."""
    path = config_path(args.config, env)
    file = read_config(path) if path is not None else {}
    flags = vars(args)
    values = dict(flags)
    for name, (check, default) in _UP_OPTIONS.items():
        source = pick(name, flags, env, file, path)
        if source is None:
            values[name] = default
        elif source.where.startswith("--"):
            values[name] = source.value  # argparse checked it
        else:
            values[name] = _checked(check, source)
    return argparse.Namespace(**values)


def _checked(check: Callable[[Any], Any], source: Source) -> Any:
    value = source.value
    if isinstance(value, bool) or not isinstance(value, str | int | float | list):
        raise UsageError(f"{source.where}: unexpected value {value!r}")
    try:
        return check(value if isinstance(value, list) or check is _endpoints else str(value))
    except argparse.ArgumentTypeError as e:
        raise UsageError(f"{source.where}: {e}") from None


def cmd_up(args: argparse.Namespace) -> int:
    args = _layered_up_options(args, os.environ)
    state_dir: Path = args.state_dir
    stored = _stored_state(state_dir)
    key = _key_from_file(args.token_file) if stored is None and args.token_file is not None else None
    backend_name = args.backend
    if backend_name == "auto" and stored is not None:
        backend_name = stored.backend
    settings = AgentSettings(
        state_dir=state_dir,
        controller_url=args.controller,
        token=key.secret if key else None,
        ca_pin=key.ca_pin if key else None,
        ca_file=args.ca_file,
        interface=args.interface,
        hostname=args.hostname or _default_hostname(),
        listen_port=args.listen_port,
        endpoints=tuple(args.endpoint),
        probe_interval_s=args.probe_interval,
        poll_timeout_s=args.poll_timeout,
        down_on_stop=args.down,
    )
    if stored is None and not (args.controller and key):
        raise UsageError(
            f"this host has not enrolled yet ({StatePaths(state_dir).node} is missing): "
            "give --controller URL and --token-file FILE (the pre-auth key)"
        )
    url = args.controller or (stored.controller_url if stored else "")
    if any(u.startswith("http://") for u in split_urls(url)) and not args.insecure:
        raise UsageError(
            f"controller URL {url} is plain http: the pre-auth key and the node credential would cross "
            "the network in clear; use https:// (or pass --insecure)"
        )
    try:
        backend = open_backend(backend_name)
    except ValueError as e:
        raise UsageError(str(e)) from None
    # httpx imports its own command-line tool when click and pygments are installed (they are, next to
    # uvicorn); the daemon never runs it, and it would hold 2 MiB of the daemon's memory for good.
    sys.modules.setdefault("httpx._main", None)  # type: ignore[arg-type]
    from agent.daemon import Agent, AgentEdges
    from agent.probe import IcmpProber

    log = EventLog(sys.stderr)
    notifier = Notifier(os.environ)
    edges = AgentEdges(
        backend=backend,
        host_network=_host_network(backend.name),
        prober=IcmpProber(),
        log=log,
        firewall=None if backend.name == "fake" else SystemNftables(),
        ready=lambda: notifier.ready("serving its network map"),
    )
    agent = Agent(settings, edges)
    listener = _metrics_listener(agent, args.metrics_listen) if args.metrics_listen else None
    try:
        code = asyncio.run(_serve(agent))
    finally:
        if listener is not None:
            listener.close()
    if agent.stopped is not None:
        print(f"wgmesh agent up: {agent.stopped.reason}", file=sys.stderr)
    return code


def _key_from_file(path: Path, stdin: TextIO | None = None) -> PreAuthKey:
    """The pre-auth key in `path` (0600; `-`: one line of standard input) with its CA pin."""
    if str(path) == "-":
        text = (stdin or sys.stdin).readline().strip()
        if not text:
            raise UsageError("--token-file -: expected one line holding the pre-auth key on standard input")
    else:
        try:
            text = read_secret_line(path, "pre-auth key")
        except SecretFileError as e:
            raise UsageError(str(e)) from None
    try:
        return parse_preauth_key(text)
    except PreAuthKeyError as e:
        raise UsageError(f"pre-auth key file {path}: {str(e).removeprefix('pre-auth key: ')}") from None


def _metrics_listener(agent: Agent, address: tuple[str, int]) -> MetricsListener:
    """GET /metrics on `address`, read from the agent's last status and its live device."""
    from agent.metrics import MetricsListener, agent_registry

    def device() -> Device | None:
        return agent.edges.backend.read(agent.ifname) if agent.state is not None else None

    return MetricsListener(*address, agent_registry(lambda: agent.last_status, device))


async def _serve(agent: Agent) -> int:
    stop = asyncio.Event()
    loop = asyncio.get_running_loop()
    for sig in (signal.SIGTERM, signal.SIGINT):
        loop.add_signal_handler(sig, stop.set)
    return await agent.run(stop)


def _host_network(backend_name: str) -> HostNetwork:
    """The fake backend is a dry run: no interface exists, so the host network is not touched."""
    if backend_name == "fake":
        from agent.hostnet.fake import FakeHostNetwork

        return FakeHostNetwork()
    from agent.hostnet.netlink import NetlinkHostNetwork

    return NetlinkHostNetwork()


def _stored_state(state_dir: Path) -> AgentState | None:
    """The stored enrollment, None when there is none; a corrupt node.json is an error."""
    if not StatePaths(state_dir).node.exists():
        return None
    return AgentState.load(state_dir)


def _default_hostname() -> str:
    name = socket.gethostname().split(".")[0]
    try:
        return _hostname(name)
    except argparse.ArgumentTypeError:
        return "host"


# --- down ---------------------------------------------------------------------------------------------


def cmd_down(args: argparse.Namespace) -> int:
    stored = _stored_state(args.state_dir)
    ifname = args.interface or (stored.interface if stored else None)
    backend_name = args.backend or (stored.backend if stored else None)
    if ifname is None or backend_name is None:
        raise UsageError(
            f"{StatePaths(args.state_dir).node} is missing: name the interface with --interface and --backend"
        )
    running = _running_agent_pid(args.state_dir)
    if running is not None:
        raise AgentError(
            f"the agent (pid {running}) still runs and would bring {ifname} back: "
            "stop it first (or run it with --down)"
        )
    backend = open_backend(backend_name)
    if backend.name != "fake":
        try:
            for change in apply_firewall(SystemNftables(), None, ifname):
                print(f"removed the policy firewall ({change})")
        except NftError as e:
            print(f"could not remove the policy firewall: {e}", file=sys.stderr)
    if not backend.exists(ifname):
        print(f"{ifname}: no such interface; nothing to do")
        return 0
    backend.delete(ifname)
    print(f"removed interface {ifname}")
    return 0


def _running_agent_pid(state_dir: Path) -> int | None:
    """The pid of the agent that last wrote status.json, if that process still lives."""
    try:
        status = AgentStatus.load(StatePaths(state_dir).status)
    except StatusError:
        return None
    if not status.running or status.pid is None or status.pid == os.getpid():
        return None
    return status.pid if _alive(status.pid) else None


def _alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    return True


# --- status -------------------------------------------------------------------------------------------


def cmd_status(args: argparse.Namespace) -> int:
    paths = StatePaths(args.state_dir)
    if not paths.node.exists() and paths.wireguard_key.exists():
        raise StateError(
            f"this host has not enrolled yet; its keys are in {paths.root} (made by an `agent up` that "
            "did not enroll: the next `agent up` with a pre-auth key uses them)"
        )
    state = AgentState.load(args.state_dir)
    status = AgentStatus.load(StatePaths(args.state_dir).status)
    if status.running and (status.pid is None or not _alive(status.pid)):
        status = status.model_copy(update={"running": False})
    if state.backend != "fake":  # the fake lives in its agent's memory; the file is all there is
        try:
            device = open_backend(state.backend).read(state.interface)
        except (BackendError, OSError):
            pass  # interface down or unreadable: show what the agent last wrote
        else:
            status = with_live_device(status, device)
    if args.json:
        print(json.dumps(status.model_dump(mode="json"), indent=2))
    else:
        sys.stdout.write(render_table(status, time.time()))
    return 0


# --- export -------------------------------------------------------------------------------------------


def cmd_export(args: argparse.Namespace) -> int:
    """The running interface (keys, port, peers as the device has them) plus this node's address."""
    from agent.wgquick import render_wgquick, write_wgquick

    state = AgentState.load(args.state_dir)
    try:
        device = open_backend(state.backend).read(state.interface)
    except (BackendError, OSError) as e:
        raise AgentError(f"cannot read interface {state.interface}: {e}") from None
    names = {}
    try:
        netmap = load_netmap(args.state_dir)
    except StateError:
        netmap = None
    if netmap is not None:
        names = {p.wg_public_key: p.name for p in netmap.peers}
    address = ip_interface(f"{state.tunnel_address}/{state.mesh_cidr.prefixlen}")
    try:
        text = render_wgquick(device, [address], peer_names=names)
    except ValueError as e:
        raise AgentError(str(e)) from None
    if args.output is None:
        sys.stdout.write(text)
        return 0
    try:
        write_wgquick(args.output, text)
    except OSError as e:
        raise AgentError(f"cannot write {args.output}: {e.strerror}") from None
    print(f"wrote {args.output} (mode 0600; it holds the private key)", file=sys.stderr)
    return 0
