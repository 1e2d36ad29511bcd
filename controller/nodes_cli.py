"""`wgmesh nodes`: list, show and remove nodes on a running controller (admin credential).

Exit codes: 0 done, 1 the controller refused or could not be reached, 2 bad usage.
"""

from __future__ import annotations

import argparse
import json
import os
import sys
from collections.abc import Sequence

from controller.admin_client import AdminClient, AdminError, add_target_options, resolve_target, table, when
from wgmesh.argparser import OneLineParser
from wire.models import NodeInfo


def _parser(prog: str) -> argparse.ArgumentParser:
    parser = OneLineParser(prog=prog, description="List, show and remove mesh nodes.")
    sub = parser.add_subparsers(dest="cmd", required=True, metavar="COMMAND")
    add_target_options(sub.add_parser("list", help="one line per node"))
    show = sub.add_parser("show", help="everything about one node")
    show.add_argument("node", help="node id or name (as `nodes list` shows them)")
    add_target_options(show)
    remove = sub.add_parser("remove", help="remove a node from the mesh (every peer's map drops it)")
    remove.add_argument("node", help="node id or name (as `nodes list` shows them)")
    add_target_options(remove)
    return parser


def main(argv: Sequence[str], prog: str = "wgmesh nodes") -> int:
    args = _parser(prog).parse_args(argv)
    cmd = f"{prog} {args.cmd}"
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


def find_node(client: AdminClient, ref: str) -> NodeInfo:
    """The node `ref` names: a node id (digits) or a node name. AdminError when there is none."""
    if ref.isdigit():
        return client.node(int(ref))
    matches = [n for n in client.nodes() if n.name == ref]
    if not matches:
        raise AdminError(f"no node named {ref!r} (`wgmesh nodes list` shows the nodes)")
    if len(matches) > 1:
        ids = ", ".join(str(n.node_id) for n in matches)
        raise AdminError(f"{len(matches)} nodes are named {ref!r} (ids {ids}): give the id")
    return matches[0]


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
        )
        for n in nodes
    ]
    return table(("ID", "NAME", "ROLE", "ADDRESS", "ENDPOINTS", "LAST SEEN", "SERIAL"), rows)


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
    ]
    width = max(len(k) for k, _ in rows)
    return "\n".join(f"{k + ':':<{width + 1}} {v}" for k, v in rows)
