"""The root dispatcher of the `wgmesh` command.

It owns nothing but the table of subcommand groups. Each group lives in its role package as a module
exposing `main(argv, prog) -> int`; it is imported only when its group runs, so `wgmesh agent` never
imports FastAPI.
"""

from __future__ import annotations

import importlib
import sys
from collections.abc import Sequence

from wgmesh import __version__
from wgmesh.invocation import program

# group name -> (module, one-line help). The module exposes `main(argv, prog) -> int`.
GROUPS: dict[str, tuple[str, str]] = {
    "keys": ("keys.cli", "generate and derive WireGuard keys (like wg genkey/pubkey/genpsk)"),
    "agent": ("agent.cli", "run and inspect the per-host agent"),
    "controller": ("controller.cli", "run the controller and manage pre-auth keys"),
    "nodes": ("controller.nodes_cli", "list, show and remove nodes on a running controller"),
    "policy": ("controller.policy_cli", "the access policy: who may reach whom, relay, send what"),
    "audit": ("controller.audit_cli", "the audit trail: admin actions and security events"),
    "lab": ("lab.cli", "a real mesh of N hosts in network namespaces on this machine"),
    "p2p": ("p2p.cli", "try the p2p messaging layer from a shell"),
}


def _usage() -> str:
    width = max(len(name) for name in GROUPS)
    lines = [f"usage: {program()} [--version] GROUP ...", "", "groups:"]
    lines += [f"  {name:<{width}}  {help_}" for name, (_, help_) in GROUPS.items()]
    lines += ["", f"Run `{program()} GROUP --help` for a group's commands."]
    return "\n".join(lines)


def main(argv: Sequence[str] | None = None) -> int:
    args = list(sys.argv[1:] if argv is None else argv)
    if not args or args[0] in ("-h", "--help"):
        print(_usage())
        return 0 if args else 2
    if args[0] == "--version":
        print(f"wgmesh {__version__}")
        return 0
    group = args[0]
    if group not in GROUPS:
        print(f"{program()}: unknown group {group!r}\n\n{_usage()}", file=sys.stderr)
        return 2
    module = importlib.import_module(GROUPS[group][0])
    try:
        return int(module.main(args[1:], prog=f"{program()} {group}"))
    except KeyboardInterrupt:
        return 130
