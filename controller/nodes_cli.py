"""`wgmesh nodes`: list, show, remove nodes, set their tags and rotate their keys on a running
controller (admin credential).

`tag NODE TAG...` replaces the node's policy tags (`tag NODE` alone: none; `tag NODE --role`: back to
its role as its only tag); the policy document's `tags` entry for the node's name still wins, and
the command says so.

`rotate NODE` asks one node to rotate its WireGuard key and waits until it has (or --no-wait);
`rotate --all` rotates every node, one at a time, and prints a progress table, one row per node as it
finishes. A refusal (unknown node, already rotating, a rotate --all running) is one line, exit 1.

Exit codes: 0 done, 1 the controller refused, could not be reached, or a rotation did not finish,
2 bad usage.
"""

from __future__ import annotations

import argparse
import json
import os
import sys
import time
from collections.abc import Callable, Sequence
from datetime import UTC, datetime

from controller.admin_client import AdminClient, AdminError, add_target_options, resolve_target, when
from wgmesh.argparser import OneLineParser
from wgmesh.table import table
from wire.models import NodeInfo, NodeTagsRequest, RemovedNodeInfo
from wire.rotation import RotationInfo, RotationProgress

POLL_S = 0.2
DEFAULT_WAIT_S = 300.0


def _parser(prog: str) -> argparse.ArgumentParser:
    parser = OneLineParser(prog=prog, description="List, show and remove mesh nodes; rotate their keys.")
    sub = parser.add_subparsers(dest="cmd", required=True, metavar="COMMAND")
    add_target_options(sub.add_parser("list", help="one line per node"))
    show = sub.add_parser("show", help="everything about one node")
    show.add_argument("node", help="node id or name (as `nodes list` shows them)")
    add_target_options(show)
    add_target_options(
        sub.add_parser("removed", help="the removed nodes, whose keys stay refused until `allow`")
    )
    allow = sub.add_parser("allow", help="let a removed node's keys enroll again (as a new node)")
    allow.add_argument("node", help="removed node id or name (as `nodes removed` shows them)")
    add_target_options(allow)
    remove = sub.add_parser(
        "remove",
        help="remove a node from the mesh (every peer's map drops it; its keys stay refused until `allow`)",
    )
    remove.add_argument("node", help="node id or name (as `nodes list` shows them)")
    add_target_options(remove)
    tag = sub.add_parser("tag", help="replace a node's policy tags")
    tag.add_argument("node", help="node id or name (as `nodes list` shows them)")
    tag.add_argument("tags", nargs="*", metavar="TAG", help="its new tags (none: no tag at all)")
    tag.add_argument("--role", action="store_true", help="back to its role as its only tag")
    add_target_options(tag)
    rotate = sub.add_parser("rotate", help="rotate a node's WireGuard key (or --all, one at a time)")
    rotate.add_argument("node", nargs="?", help="node id or name (as `nodes list` shows them)")
    rotate.add_argument("--all", action="store_true", help="every node, one at a time, with a progress table")
    rotate.add_argument("--no-wait", action="store_true", help="ask and return; `nodes list` shows progress")
    rotate.add_argument(
        "--timeout", type=float, default=DEFAULT_WAIT_S, help=f"seconds to wait (default {DEFAULT_WAIT_S:g})"
    )
    add_target_options(rotate)
    return parser


def main(argv: Sequence[str], prog: str = "wgmesh nodes") -> int:
    parser = _parser(prog)
    args = parser.parse_args(argv)
    cmd = f"{prog} {args.cmd}"
    if args.cmd == "rotate" and (args.node is None) == (not args.all):
        parser.error("rotate: give a node id or --all, not both")
    if args.cmd == "tag":
        if args.role and args.tags:
            parser.error("tag: give tags or --role, not both")
        try:
            tags = NodeTagsRequest(tags=None if args.role else args.tags)
        except ValueError as e:
            parser.error(f"tag: {_tag_problem(e)}")
    try:
        client = AdminClient(resolve_target(args, os.environ))
    except AdminError as e:
        print(f"{cmd}: {e}", file=sys.stderr)
        return 2
    try:
        if args.cmd == "list":
            nodes = client.nodes()
            if args.json:
                print(json.dumps([n.model_dump(mode="json") for n in nodes]))
            else:
                print(render_list(nodes))
        elif args.cmd == "show":
            node = find_node(client, args.node)
            print(node.model_dump_json() if args.json else render_node(node))
        elif args.cmd == "rotate":
            return rotate(client, args, print)
        elif args.cmd == "removed":
            gone = client.removed_nodes()
            if args.json:
                print(json.dumps([n.model_dump(mode="json") for n in gone]))
            else:
                print(render_removed(gone))
        elif args.cmd == "allow":
            node_id = find_removed(client, args.node)
            client.allow_node(node_id)
            if args.json:
                print(json.dumps({"allowed": node_id}))
            else:
                print(f"node {node_id}'s keys may enroll again (it will come back as a new node)")
        elif args.cmd == "tag":
            node = client.set_tags(find_node(client, args.node).node_id, tags)
            if args.json:
                print(node.model_dump_json())
            else:
                print(f"node {node.node_id} ({node.name}): tags {', '.join(node.tags) or 'none'}")
            overridden = client.policy_tags_entry(node.name)
            if overridden is not None:
                print(
                    f"{cmd}: note: the policy's [tags] entry for {node.name} ({', '.join(overridden) or 'none'}) "
                    "decides its tags while it is there",
                    file=sys.stderr,
                )
        else:
            node = find_node(client, args.node)
            client.remove_node(node.node_id)
            if args.json:
                print(json.dumps({"removed": node.node_id}))
            else:
                print(f"removed node {node.node_id} ({node.name}, {node.tunnel_address})")
    except AdminError as e:
        print(f"{cmd}: {e}", file=sys.stderr)
        return 1
    finally:
        client.close()
    return 0


def _tag_problem(e: ValueError) -> str:
    errors = getattr(e, "errors", None)
    if callable(errors):
        return str(errors()[0].get("msg", e)).removeprefix("Value error, ")
    return str(e)


def find_removed(client: AdminClient, ref: str) -> int:
    """The id of the removed node `ref` names (an id or a name). AdminError when there is none."""
    gone = client.removed_nodes()
    is_id = ref.isascii() and ref.isdigit()
    matches = [n.node_id for n in gone if (is_id and n.node_id == int(ref)) or n.name == ref]
    if not matches:
        raise AdminError(f"no removed node {ref!r} (`wgmesh nodes removed` lists them)")
    if len(matches) > 1:
        raise AdminError(f"{len(matches)} removed nodes are named {ref!r}: give the id ({matches})")
    return matches[0]


def render_removed(gone: list[RemovedNodeInfo]) -> str:
    if not gone:
        return "no removed node: nothing is refused"
    return table(
        ["ID", "NAME", "REMOVED", "WIREGUARD KEY"],
        [[n.node_id, n.name, when(n.removed_at), n.wg_public_key.base64()] for n in gone],
    )


def find_node(client: AdminClient, ref: str) -> NodeInfo:
    """The node `ref` names: a node id (digits) or a node name. AdminError when there is none."""
    if ref.isascii() and ref.isdigit():
        return client.node(int(ref))
    matches = [n for n in client.nodes() if n.name == ref]
    if not matches:
        raise AdminError(f"no node named {ref!r} (`wgmesh nodes list` shows the nodes)")
    if len(matches) > 1:
        ids = ", ".join(str(n.node_id) for n in matches)
        raise AdminError(f"{len(matches)} nodes are named {ref!r} (ids {ids}): give the id")
    return matches[0]


def rotate(client: AdminClient, args: argparse.Namespace, out: Callable[[str], None]) -> int:
    """`nodes rotate`: ask, then (unless --no-wait) follow the controller's progress until done."""
    started = time.monotonic()
    if args.all:
        progress = client.rotate_all()
        asked = {r.node_id: r.rotation_id for r in progress.nodes}
    else:
        info = client.rotate(find_node(client, args.node).node_id)
        progress = RotationProgress(campaign_running=False, nodes=[info])
        asked = {info.node_id: info.rotation_id}
    if args.no_wait:
        out(progress.model_dump_json() if args.json else render_rotations(progress.nodes))
        return 0
    reported: set[int] = set()
    headers = ("ID", "NAME", "RESULT", "TOOK", "KEY CREATED")
    if args.all and not args.json:
        out(table(headers, []))
    deadline = started + args.timeout
    while True:
        nodes = {r.node_id: r for r in client.rotations().nodes if r.node_id in asked}
        finished = [r for r in nodes.values() if _finished(r, asked[r.node_id])]
        for r in sorted(finished, key=lambda r: r.finished_at or datetime.min.replace(tzinfo=UTC)):
            if r.node_id in reported:
                continue
            reported.add(r.node_id)
            if not args.json:
                row = (
                    r.node_id,
                    r.name,
                    r.outcome,
                    f"{time.monotonic() - started:.1f}s",
                    when(r.key_created_at),
                )
                out(
                    table(headers, [row]).splitlines()[1]
                    if args.all
                    else _one_line(r, time.monotonic() - started)
                )
        if len(reported) == len(nodes) or time.monotonic() > deadline:
            break
        time.sleep(POLL_S)
    if args.json:
        out(json.dumps([r.model_dump(mode="json") for r in nodes.values()]))
    failed = [r for r in nodes.values() if r.outcome != "done" or r.node_id not in reported]
    if args.all and not args.json:
        out(f"rotated {len(nodes) - len(failed)} of {len(nodes)} nodes in {time.monotonic() - started:.1f}s")
    for r in failed:
        why = r.outcome if r.node_id in reported else f"not finished after {args.timeout:g}s ({r.state})"
        print(
            f"wgmesh nodes rotate: node {r.node_id} ({r.name}): {why}",
            file=sys.stderr,
        )
    return 1 if failed else 0


def _finished(r: RotationInfo, asked: int | None) -> bool:
    """Done with the rotation that was asked (a node queued later gets its id when its turn comes)."""
    if r.state != "idle" or r.outcome is None:
        return False
    return asked is None or (r.rotation_id or 0) >= asked


def _one_line(r: RotationInfo, took: float) -> str:
    if r.outcome == "done":
        return f"rotated node {r.node_id} ({r.name}) in {took:.1f}s"
    return f"node {r.node_id} ({r.name}): rotation {r.outcome}"


def key_age(created: datetime | None, now: datetime | None = None) -> str:
    if created is None:
        return "-"
    seconds = max(0, int(((now or datetime.now(UTC)) - created).total_seconds()))
    for unit, size in (("d", 86400), ("h", 3600), ("m", 60)):
        if seconds >= size:
            return f"{seconds // size}{unit}"
    return f"{seconds}s"


def render_rotations(nodes: Sequence[RotationInfo]) -> str:
    rows = [
        (
            r.node_id,
            r.name,
            r.state,
            r.queue_position if r.queue_position is not None else "-",
            key_age(r.key_created_at),
        )
        for r in nodes
    ]
    return table(("ID", "NAME", "ROTATION", "QUEUE", "KEY AGE"), rows)


def render_list(nodes: Sequence[NodeInfo]) -> str:
    rows = [
        (
            n.node_id,
            n.name,
            n.role,
            n.tunnel_address,
            ",".join(n.endpoints) or "-",
            when(n.last_seen),
            n.serial,
            key_age(n.key_created_at),
            n.rotation,
        )
        for n in nodes
    ]
    return table(
        ("ID", "NAME", "ROLE", "ADDRESS", "ENDPOINTS", "LAST SEEN", "SERIAL", "KEY AGE", "ROTATION"), rows
    )


def _policy_version(n: NodeInfo) -> str:
    if n.policy_version_sent is None:
        return "- (no policy in force)"
    if n.policy_version is None:
        return f"- (not reported yet; its map has version {n.policy_version_sent})"
    if n.policy_version >= n.policy_version_sent:
        return f"{n.policy_version} (current)"
    return f"{n.policy_version} (its map has version {n.policy_version_sent})"


def render_node(n: NodeInfo) -> str:
    rows = [
        ("id", n.node_id),
        ("name", n.name),
        ("role", n.role),
        ("tunnel address", n.tunnel_address),
        ("endpoints", ", ".join(n.endpoints) or "- (reachable only outbound)"),
        ("listen port", n.listen_port),
        ("WireGuard key", n.wg_public_key.base64()),
        ("identity key", n.identity_public_key.base64()),
        ("enrolled", when(n.enrolled_at)),
        ("last seen", when(n.last_seen)),
        ("map serial", n.serial),
        ("key created", when(n.key_created_at, never="unknown")),
        ("key rotation", n.rotation),
        ("tags", ", ".join(n.tags) or "- (no policy in force)"),
        ("policy version", _policy_version(n)),
        ("bad link rtts", f"{n.implausible_link_reports} implausible reports"),
    ]
    width = max(len(k) for k, _ in rows)
    return "\n".join(f"{k + ':':<{width + 1}} {v}" for k, v in rows)
