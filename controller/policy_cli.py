"""`wgmesh policy`: the access policy on a running controller (admin credential).

    wgmesh policy get                    the document in force (nothing: no policy, the full mesh)
    wgmesh policy set FILE               put FILE (JSON or TOML) in force as a new version
    wgmesh policy check FILE             say what is wrong with FILE, change nothing
    wgmesh policy test SRC DST [PORT]    may node SRC reach DST (on PORT: 8000, udp/53, icmp)? which rule?
    wgmesh policy history                every version: who, when, what
    wgmesh policy rollback VERSION       bring VERSION back, as a new version (0: no policy)
    wgmesh policy clear                  no policy any more: the full mesh, as a new version
    wgmesh policy status                 per node: its tags and whether its agent enforces its rules

A bad document is refused whole; each problem is printed on its own line naming its place in FILE.
Exit codes: 0 done (for `check`: no problem), 1 refused, a problem found, or no controller, 2 bad usage.
"""

from __future__ import annotations

import argparse
import json
import os
import sys
from collections.abc import Sequence
from pathlib import Path

from controller.admin_client import (
    AdminClient,
    AdminError,
    add_target_options,
    admin_user,
    resolve_target,
    when,
)
from wgmesh.argparser import OneLineParser
from wgmesh.table import table
from wire.models import NodeInfo
from wire.policy import (
    MAX_POLICY_TEXT,
    PolicyError,
    PolicyInfo,
    PolicyRollbackRequest,
    PolicySetRequest,
    PolicyTestRequest,
    parse_policy,
)


def _parser(prog: str) -> argparse.ArgumentParser:
    parser = OneLineParser(prog=prog, description="The mesh's access policy.")
    sub = parser.add_subparsers(dest="cmd", required=True, metavar="COMMAND")
    add_target_options(sub.add_parser("get", help="print the policy in force"))
    for name, text in (
        ("set", "put FILE in force as a new version"),
        ("check", "check FILE, change nothing"),
    ):
        p = sub.add_parser(name, help=text)
        p.add_argument("file", help="the policy document, JSON or TOML ('-': standard input)")
        if name == "set":
            p.add_argument("--author", help="who makes the change (default: USER@HOST)")
        add_target_options(p)
    test = sub.add_parser("test", help="may SRC reach DST (on PORT)? names the deciding rule")
    test.add_argument("source", help="node name or id")
    test.add_argument("destination", help="node name or id")
    test.add_argument("port", nargs="?", help="8000 (tcp), udp/53 or icmp; absent: any traffic")
    add_target_options(test)
    add_target_options(sub.add_parser("history", help="every version with who and when"))
    add_target_options(
        sub.add_parser(
            "status", help="per node: tags, the rules' version in its map, what its agent enforces"
        )
    )
    rollback = sub.add_parser("rollback", help="bring an earlier version back")
    rollback.add_argument("version", type=_version, help="the version to restore; 0: no policy (full mesh)")
    rollback.add_argument("--author", help="who makes the change (default: USER@HOST)")
    add_target_options(rollback)
    clear = sub.add_parser("clear", help="no policy: every node reaches every other (a new version)")
    clear.add_argument("--author", help="who makes the change (default: USER@HOST)")
    add_target_options(clear)
    return parser


def _version(text: str) -> int:
    if not text.isdigit():
        raise argparse.ArgumentTypeError(f"expected a version number (0: no policy), got {text!r}")
    return int(text)


def _read(path: str) -> tuple[str, str]:
    if path == "-":
        return sys.stdin.read(MAX_POLICY_TEXT + 1), "<stdin>"
    try:
        return Path(path).read_text(encoding="utf-8"), path
    except OSError as e:
        raise AdminError(f"cannot read {path}: {e.strerror}") from None
    except UnicodeDecodeError:
        raise AdminError(f"{path}: not UTF-8 text") from None


def main(argv: Sequence[str], prog: str = "wgmesh policy") -> int:
    args = _parser(prog).parse_args(argv)
    cmd = f"{prog} {args.cmd}"
    try:
        client = AdminClient(resolve_target(args, os.environ))
    except AdminError as e:
        print(f"{cmd}: {e}", file=sys.stderr)
        return 2
    try:
        return _run(args, client, cmd)
    except AdminError as e:
        print(f"{cmd}: {e}", file=sys.stderr)
        return 1
    finally:
        client.close()


def _run(args: argparse.Namespace, client: AdminClient, cmd: str) -> int:
    if args.cmd == "get":
        state = client.policy()
        if args.json:
            print(state.model_dump_json())
        elif state.policy is None:
            print("no policy: every node may reach every other (full mesh)", file=sys.stderr)
        elif state.policy.action == "clear":
            print(
                f"no policy: every node may reach every other (full mesh) since version "
                f"{state.policy.version} ({state.policy.author}, {when(state.policy.created_at)})",
                file=sys.stderr,
            )
        else:
            print(state.policy.text, end="" if (state.policy.text or "").endswith("\n") else "\n")
        return 0
    if args.cmd in ("set", "check"):
        text, source = _read(args.file)
        try:
            parse_policy(text, source)  # the same parser as the controller's: every problem at once
        except PolicyError as e:
            for problem in e.problems:
                print(problem, file=sys.stderr)
            if args.cmd == "set":
                print(f"{cmd}: refused; the policy in force stays", file=sys.stderr)
            return 1
        req = PolicySetRequest(text=text, source=source, author=admin_user(getattr(args, "author", None)))
        if args.cmd == "check":
            result = client.check_policy(req)
            for problem in result.problems:
                print(problem, file=sys.stderr)
            if args.json:
                print(result.model_dump_json())
            elif result.ok:
                print(f"{source}: ok")
            return 0 if result.ok else 1
        info = client.set_policy(req)
        print(info.model_dump_json() if args.json else f"policy version {info.version} in force")
        return 0
    if args.cmd == "test":
        decision = client.test_policy(
            PolicyTestRequest(source=args.source, destination=args.destination, port=args.port)
        )
        if args.json:
            print(decision.model_dump_json())
        else:
            what = f"{args.source} -> {args.destination}" + (f" {args.port}" if args.port else "")
            version = "no policy" if decision.version is None else f"policy version {decision.version}"
            print(f"{what}: {'allowed' if decision.allowed else 'denied'} by {decision.rule} ({version})")
        return 0
    if args.cmd == "status":
        nodes = client.nodes()
        if args.json:
            print(json.dumps([_status_json(n) for n in nodes]))
            return 0
        status_rows: list[tuple[object, ...]] = [
            (
                n.node_id,
                n.name,
                ",".join(n.tags) or "-",
                "-" if n.policy_version_sent is None else n.policy_version_sent,
                "-" if n.policy_version is None else n.policy_version,
                enforcement(n),
            )
            for n in nodes
        ]
        print(table(("ID", "NAME", "TAGS", "IN MAP", "ENFORCED", "STATE"), status_rows))
        current = sum(1 for n in nodes if enforcement(n) in ("current", "full mesh"))
        print(f"{current} of {len(nodes)} nodes enforce the rules in their map", file=sys.stderr)
        return 0
    if args.cmd == "history":
        history = client.policy_history()
        if args.json:
            print(json.dumps([h.model_dump(mode="json") for h in history]))
        elif not history:
            print("no policy was ever set", file=sys.stderr)
        else:
            rows = [
                (
                    h.version,
                    when(h.created_at),
                    h.author,
                    _what(h),
                )
                for h in history
            ]
            print(table(("VERSION", "WHEN", "WHO", "WHAT"), rows))
        return 0
    restore: int = 0 if args.cmd == "clear" else args.version
    info = client.rollback_policy(PolicyRollbackRequest(version=restore, author=admin_user(args.author)))
    if args.json:
        print(info.model_dump_json())
    elif info.action == "clear":
        print(f"no policy in force (version {info.version}): every node may reach every other")
    else:
        print(f"policy version {restore} restored as version {info.version}")
    return 0


def enforcement(n: NodeInfo) -> str:
    """Whether the node's agent enforces the rules in its map: 'full mesh' (no policy in force),
    'current', 'behind' (it reports an older version) or 'not reported' (not since the controller
    started)."""
    if n.policy_version_sent is None:
        return "full mesh"
    if n.policy_version is None:
        return "not reported"
    return "current" if n.policy_version >= n.policy_version_sent else "behind"


def _status_json(n: NodeInfo) -> dict[str, object]:
    return {
        "node_id": n.node_id,
        "name": n.name,
        "tags": n.tags,
        "policy_version_sent": n.policy_version_sent,
        "policy_version": n.policy_version,
        "state": enforcement(n),
    }


def _what(h: PolicyInfo) -> str:
    if h.action == "clear":
        return "clear (no policy)" if not h.restored else f"clear (rollback to {h.restored})"
    return h.action if h.restored is None else f"rollback to {h.restored}"
