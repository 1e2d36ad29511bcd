"""`wgmesh audit`: the audit trail of a running controller (admin credential), as an aligned table.

    wgmesh audit [--since 1h|2026-11-24T10:00:00Z] [--node NODE] [--action ACTION] [--limit N] [--json]

One row per admin action or security event, oldest first: when, who, what, the result, the node it
concerns and the source address of the request. `--action policy` shows every policy.* action.
Exit codes: 0 shown (also when nothing matches), 1 the controller refused or could not be reached,
2 bad usage.
"""

from __future__ import annotations

import argparse
import json
import os
import re
import sys
from collections.abc import Sequence
from datetime import UTC, datetime, timedelta

from controller.admin_client import AdminClient, AdminError, add_target_options, resolve_target, when
from wgmesh.argparser import OneLineParser
from wgmesh.table import table
from wire.audit import AUDIT_ACTIONS, AUDIT_MAX_LIMIT, AuditEvent, action_filter_problem

_AGO = re.compile(r"^(\d+)([smhd])$")
_UNIT_S = {"s": 1, "m": 60, "h": 3600, "d": 86400}


def parse_since(text: str, now: datetime | None = None) -> datetime:
    """'30m', '1h', '7d' (that long ago), or an ISO 8601 time or date (UTC when it names no zone)."""
    text = text.strip()
    match = _AGO.match(text.lower())
    if match:
        return (now or datetime.now(UTC)) - timedelta(seconds=int(match.group(1)) * _UNIT_S[match.group(2)])
    try:
        at = datetime.fromisoformat(text)
    except ValueError:
        raise argparse.ArgumentTypeError(
            f"expected a duration ago (30m, 1h, 7d) or a time (2026-11-24T10:00:00Z), got {text!r}"
        ) from None
    return at if at.tzinfo is not None else at.replace(tzinfo=UTC)


def _action(text: str) -> str:
    problem = action_filter_problem(text)
    if problem:
        raise argparse.ArgumentTypeError(problem)
    return text


def _limit(text: str) -> int:
    if not text.isdigit() or not 1 <= int(text) <= AUDIT_MAX_LIMIT:
        raise argparse.ArgumentTypeError(f"expected a number from 1 to {AUDIT_MAX_LIMIT}, got {text!r}")
    return int(text)


def _parser(prog: str) -> argparse.ArgumentParser:
    parser = OneLineParser(
        prog=prog,
        description="The audit trail: admin actions and security events, oldest first.",
        epilog=f"actions: {', '.join(AUDIT_ACTIONS)}",
    )
    parser.add_argument("--since", type=parse_since, metavar="WHEN", help="30m, 1h, 7d ago, or an ISO time")
    parser.add_argument("--node", metavar="NODE", help="only events about this node (id or name)")
    parser.add_argument(
        "--action", type=_action, metavar="ACTION", help="only this action, or a prefix: policy"
    )
    parser.add_argument("--limit", type=_limit, default=1000, metavar="N", help="the newest N (default 1000)")
    add_target_options(parser)
    return parser


def render(events: Sequence[AuditEvent]) -> str:
    rows = [
        (
            when(e.at),
            e.actor,
            e.action,
            e.result,
            "-" if e.node_id is None else f"{e.node_name or '?'} ({e.node_id})",
            e.source or "-",
            e.detail or "-",
        )
        for e in events
    ]
    return table(("WHEN", "WHO", "ACTION", "RESULT", "NODE", "SOURCE", "WHAT"), rows)


def main(argv: Sequence[str], prog: str = "wgmesh audit") -> int:
    args = _parser(prog).parse_args(argv)
    try:
        client = AdminClient(resolve_target(args, os.environ))
    except AdminError as e:
        print(f"{prog}: {e}", file=sys.stderr)
        return 2
    try:
        events = client.audit(since=args.since, node=args.node, action=args.action, limit=args.limit)
    except AdminError as e:
        print(f"{prog}: {e}", file=sys.stderr)
        return 1
    finally:
        client.close()
    if args.json:
        print(json.dumps([e.model_dump(mode="json") for e in events]))
    elif not events:
        print("no audit events match", file=sys.stderr)
    else:
        print(render(events))
    return 0
