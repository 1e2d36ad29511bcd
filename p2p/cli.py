"""`wgmesh p2p`: try the messaging layer from a shell on a mesh host.

    wgmesh p2p listen                      print every message this node receives (and answer requests)
    wgmesh p2p send PEER TYPE JSON         send one message to PEER (node id or name)
    wgmesh p2p send --request PEER TYPE JSON   ... and print the reply
    wgmesh p2p broadcast TYPE JSON         send a signed message to every reachable node
    wgmesh p2p elect                       take part in a leader election with every node; print changes

The node's identity and directory come from the agent's state directory (`--state-dir`; default: the
environment variable WGMESH_STATE_DIR when set, else /var/lib/wgmesh; it holds identity.key and
p2p-directory.json), or from `--directory FILE --identity-key FILE`. A lab host sets WGMESH_STATE_DIR
for every command it runs, so `wgmesh lab exec h1 -- wgmesh p2p listen` finds h1's state.
`send` and `broadcast` only dial out (they do not listen), so they work next to a running program that
listens on the node's p2p port. Exit codes: 0 done, 1 the mesh did not cooperate (peer unreachable,
timeout, refused), 2 bad input (arguments, JSON, unknown peer, unreadable files).
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import json
import logging
import os
import sys
import time
from collections.abc import Sequence
from pathlib import Path
from typing import Any

from keys.store import load_key
from keys.types import IdentityPrivateKey, InvalidKey
from p2p.core.directory import Directory, DirectoryEntry
from p2p.core.message import PRIORITY_DEFAULT, PRIORITY_MAX, PRIORITY_MIN, Message
from p2p.directory import FILE_NAME, DirectoryError, load_directory
from p2p.errors import P2PError
from p2p.events import PeerDown
from wgmesh.argparser import USAGE_EXIT, OneLineParser, UsageError

DEFAULT_STATE_DIR = Path("/var/lib/wgmesh")
# Names the state directory when --state-dir is not given (an empty value counts as unset).
STATE_DIR_ENV = "WGMESH_STATE_DIR"
IDENTITY_FILE = "identity.key"
REFUSALS_EVERY_S = 1.0


def _priority(text: str) -> int:
    try:
        value = int(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"must be an integer {PRIORITY_MIN}-{PRIORITY_MAX}") from None
    if not PRIORITY_MIN <= value <= PRIORITY_MAX:
        raise argparse.ArgumentTypeError(f"must be an integer {PRIORITY_MIN}-{PRIORITY_MAX}")
    return value


def _positive(text: str) -> float:
    try:
        value = float(text)
    except ValueError:
        raise argparse.ArgumentTypeError("must be a number of seconds") from None
    if value <= 0:
        raise argparse.ArgumentTypeError("must be more than 0 seconds")
    return value


def _parser(prog: str, default_state_dir: Path) -> argparse.ArgumentParser:
    parser = OneLineParser(prog=prog, description="Try the p2p messaging layer from a shell.")
    common = OneLineParser(add_help=False)
    where = common.add_argument_group("node identity")
    where.add_argument(
        "--state-dir",
        type=Path,
        default=default_state_dir,
        help=f"the agent's state directory (default: ${STATE_DIR_ENV} or {DEFAULT_STATE_DIR})",
    )
    where.add_argument(
        "--directory", type=Path, help=f"the p2p directory file (default: STATE_DIR/{FILE_NAME})"
    )
    where.add_argument(
        "--identity-key", type=Path, help=f"the identity key (default: STATE_DIR/{IDENTITY_FILE})"
    )
    common.add_argument("-v", "--verbose", action="store_true", help="log connections and drops")
    sub = parser.add_subparsers(dest="cmd", required=True, metavar="COMMAND")

    listen = sub.add_parser("listen", parents=[common], help="print every message this node receives")
    listen.add_argument("--host", help="listen address (default: this node's tunnel address)")
    listen.add_argument("--port", type=int, help="listen port (default: this node's p2p port)")

    send = sub.add_parser("send", parents=[common], help="send one message to a peer")
    send.add_argument("peer", metavar="PEER", help="node id or name")
    send.add_argument("type", metavar="TYPE", help="message type")
    send.add_argument("data", metavar="JSON", help="the payload, as JSON")
    send.add_argument("--priority", type=_priority, default=PRIORITY_DEFAULT, help="1 (low) .. 10 (high)")
    send.add_argument("--request", action="store_true", help="wait for the reply and print it")
    send.add_argument("--timeout", type=_positive, default=5.0, help="seconds to connect, send and reply")

    broadcast = sub.add_parser("broadcast", parents=[common], help="send a signed message to every node")
    broadcast.add_argument("type", metavar="TYPE", help="message type")
    broadcast.add_argument("data", metavar="JSON", help="the payload, as JSON")
    broadcast.add_argument(
        "--priority", type=_priority, default=PRIORITY_DEFAULT, help="1 (low) .. 10 (high)"
    )
    broadcast.add_argument("--timeout", type=_positive, default=5.0, help="seconds to connect and send")

    elect = sub.add_parser(
        "elect", parents=[common], help="take part in a leader election with every node; print each change"
    )
    elect.add_argument(
        "--timeouts",
        type=_timeouts,
        default=(1.5, 3.0),
        metavar="MIN,MAX",
        help="election timeout range in seconds (default 1.5,3; Raft's 0.15,0.3 for a fast mesh)",
    )
    elect.add_argument("--json", action="store_true", help="one JSON object a line (t: monotonic seconds)")
    return parser


def _timeouts(text: str) -> tuple[float, float]:
    try:
        low, high = (float(part) for part in text.split(","))
    except ValueError:
        raise argparse.ArgumentTypeError("must be two numbers of seconds, MIN,MAX (e.g. 0.15,0.3)") from None
    if not 0 < low <= high:
        raise argparse.ArgumentTypeError("needs 0 < MIN <= MAX")
    return low, high


def _load(args: argparse.Namespace) -> tuple[Directory, IdentityPrivateKey]:
    directory_path = args.directory or args.state_dir / FILE_NAME
    key_path = args.identity_key or args.state_dir / IDENTITY_FILE
    try:
        directory = load_directory(directory_path)
    except DirectoryError as e:
        raise UsageError(str(e)) from None
    try:
        key = load_key(key_path, IdentityPrivateKey)
    except InvalidKey as e:
        raise UsageError(str(e)) from None
    except PermissionError:
        raise UsageError(f"{key_path}: permission denied (run as root or the agent's user)") from None
    if key.public_key() != directory.own.identity_public_key:
        raise UsageError(
            f"{key_path} is not the identity of node {directory.own.node_id} in {directory_path}"
        )
    return directory, key


def _json(text: str) -> Any:
    try:
        return json.loads(text)
    except json.JSONDecodeError as e:
        raise UsageError(f"the JSON argument is not valid JSON: {e}") from None


def _peer(directory: Directory, name: str) -> DirectoryEntry:
    for entry in directory:
        if str(entry.node_id) == name or entry.name == name:
            return entry
    known = ", ".join(f"{e.node_id} ({e.name})" for e in sorted(directory, key=lambda e: e.node_id))
    raise UsageError(f"unknown peer {name!r}; the directory has: {known or 'no peers'}")


def _show(data: Any) -> str:
    """Data as one line of JSON; bytes as base64-free hex with a marker."""

    def default(value: object) -> object:
        if isinstance(value, bytes):
            return {"bytes": value.hex()}
        return repr(value)

    return json.dumps(data, default=default, separators=(",", ":"), sort_keys=True)


async def _listen(args: argparse.Namespace, directory: Directory, key: IdentityPrivateKey) -> int:
    from p2p.config import NodeConfig
    from p2p.node import Node

    config = NodeConfig(host=args.host, port=args.port)
    path = args.directory or args.state_dir / FILE_NAME
    node = Node(path, key, config=config)

    async def show(message: Message) -> dict[str, Any]:
        sender = node.directory.get(message.sender)
        name = sender.name if sender else "?"
        when = time.strftime("%H:%M:%S", time.localtime(message.timestamp))
        print(
            f"{when}  from {message.sender} ({name})  {message.type}  priority {message.priority}  {_show(message.data)}",
            flush=True,
        )
        return {"received": message.type, "by": node.node_id}

    node.handle_any(show)
    events = node.peer_events()
    try:
        await node.start()
    except OSError as e:
        host = args.host or directory.own.address
        raise P2PError(f"cannot listen on {host}:{args.port or directory.own.port}: {e.strerror}") from None
    print(
        f"node {node.node_id} ({directory.own.name}) listening on port {node.port}; Ctrl-C stops", flush=True
    )
    reporter = asyncio.create_task(_report_refusals(node))
    try:
        async for event in events:
            state = f"down ({event.reason})" if isinstance(event, PeerDown) else "up"
            print(f"-- {event.peer.describe()} is {state}", flush=True)
    finally:
        reporter.cancel()
        await node.close()
    return 0


async def _elect(args: argparse.Namespace, directory: Directory, key: IdentityPrivateKey) -> int:
    from p2p.config import NodeConfig
    from p2p.core.election import ElectionTiming
    from p2p.election import LeaderElection
    from p2p.node import Node

    low, high = args.timeouts
    timing = ElectionTiming(election_timeout_min=low, election_timeout_max=high, heartbeat_interval=low / 3)
    # connections must notice a dead peer on the election's scale, or a healed link waits for them
    config = NodeConfig(
        heartbeat_interval=min(1.0, low),
        dead_after=min(3.5, max(1.0, low * 6)),
        backoff_max=min(10.0, high * 4),
    )
    node = Node(args.directory or args.state_dir / FILE_NAME, key, config=config)
    try:
        await node.start()
    except OSError as e:
        raise P2PError(
            f"cannot listen on {directory.own.address}:{directory.own.port}: {e.strerror}"
        ) from None
    election = LeaderElection(node, timing=timing)
    election.start()
    print(
        f"node {node.node_id} ({directory.own.name}) in the election, timeouts {low:g}-{high:g} s; Ctrl-C stops",
        flush=True,
    )
    try:
        async for change in election.changes():
            if args.json:
                line = {"t": time.monotonic(), "node": node.node_id, "term": change.term}
                print(json.dumps({**line, "leader": change.leader}), flush=True)
                continue
            entry = node.directory.get(change.leader) if change.leader is not None else None
            who = (
                "none (an election is on)"
                if change.leader is None
                else f"{change.leader} ({entry.name if entry else '?'})"
            )
            if change.leader == node.node_id:
                who = f"{change.leader} ({directory.own.name}, this node)"
            print(f"{time.strftime('%H:%M:%S')}  term {change.term}  leader {who}", flush=True)
    finally:
        await election.close()
        await node.close()
    return 0


async def _report_refusals(node: Any, every_s: float = REFUSALS_EVERY_S) -> None:
    """A line whenever the node refused or displaced handshakes since the last one (at most one per
    `every_s`): one address holding connections open shows up here, with its address."""
    last: tuple[int, int, int] = (0, 0, 0)
    while True:
        await asyncio.sleep(every_s)
        c = node.counters
        now = (c.refused_busy_source, c.refused_all_slots, c.displaced_handshake)
        if now == last:
            continue
        last = now
        busiest = ", ".join(f"{a} {n}" for a, n in node.refused_sources.most_common(3))
        print(
            f"-- handshakes refused: {now[0]} from busy addresses, {now[1]} with every slot held; "
            f"{now[2]} displaced (most refused: {busiest or '-'})",
            flush=True,
        )


async def _send(args: argparse.Namespace, directory: Directory, key: IdentityPrivateKey) -> int:
    from p2p.config import NodeConfig
    from p2p.node import Node

    target = _peer(directory, args.peer)
    data = _json(args.data)
    # Only the target in the directory: the CLI dials it and nobody else.
    only = Directory.of(directory.own, [target], serial=directory.serial)
    config = NodeConfig(listen=False, send_timeout=args.timeout)
    deadline = time.monotonic() + args.timeout
    async with Node(only, key, config=config) as node:
        try:
            await node.wait_connected([target.node_id], timeout=args.timeout)
        except TimeoutError:
            raise P2PError(await _why_unreachable(target, args.timeout)) from None
        remaining = max(0.1, deadline - time.monotonic())
        if args.request:
            reply = await node.request(
                target.node_id, args.type, data, priority=args.priority, timeout=remaining
            )
            print(_show(reply))
        else:
            message_id = await node.send(target.node_id, args.type, data, priority=args.priority)
            await node.drain(timeout=remaining)
            print(f"sent {args.type} to {target.describe()} (id {message_id.hex()})")
    return 0


async def _why_unreachable(target: DirectoryEntry, timeout: float) -> str:
    """Why no connection to `target` came up: nothing listening is told apart from no answer at all."""
    try:
        async with asyncio.timeout(2.0):
            _, writer = await asyncio.open_connection(str(target.address), target.port)
    except ConnectionRefusedError:
        return (
            f"nothing listens on {target.describe()}: start `wgmesh p2p listen` on that host "
            "(in the lab: `wgmesh lab exec HOST -- wgmesh p2p listen`)"
        )
    except (OSError, TimeoutError):
        return f"cannot reach {target.describe()} within {timeout:g} s: no answer over the tunnel"
    writer.close()
    return (
        f"{target.describe()} accepts connections but did not finish the p2p handshake within {timeout:g} s"
    )


async def _broadcast(args: argparse.Namespace, directory: Directory, key: IdentityPrivateKey) -> int:
    from p2p.config import NodeConfig
    from p2p.node import Node

    data = _json(args.data)
    if not len(directory):
        raise UsageError("the directory has no peers to broadcast to")
    config = NodeConfig(listen=False, send_timeout=args.timeout)
    deadline = time.monotonic() + args.timeout
    async with Node(directory, key, config=config) as node:
        # Wait for everyone up to a third of the time; whoever is connected by then gets it and relays it.
        with contextlib.suppress(TimeoutError):
            await node.wait_connected(timeout=args.timeout / 3)
        reached = sorted(node.connected_peers)
        if not reached:
            raise P2PError(f"cannot reach any of the {len(directory)} peers within {args.timeout / 3:.1f} s")
        message_id = await node.broadcast(args.type, data, priority=args.priority)
        await node.drain(timeout=max(0.1, deadline - time.monotonic()))
        names = ", ".join(f"{p} ({node.directory.peers[p].name})" for p in reached)
        print(f"broadcast {args.type} (id {message_id.hex()}) to {names}; they relay it to the rest")
    return 0


def main(argv: Sequence[str], prog: str = "wgmesh p2p") -> int:
    default_state_dir = Path(os.environ.get(STATE_DIR_ENV) or DEFAULT_STATE_DIR)
    args = _parser(prog, default_state_dir).parse_args(argv)
    logging.basicConfig(
        level=logging.INFO if args.verbose else logging.WARNING, format="%(levelname)s %(name)s: %(message)s"
    )
    if not args.verbose:
        logging.getLogger("websockets").setLevel(logging.ERROR)
    run = {"listen": _listen, "send": _send, "broadcast": _broadcast, "elect": _elect}[args.cmd]
    try:
        if args.cmd in ("send", "broadcast"):
            _json(args.data)  # bad JSON is reported before any file is read
        directory, key = _load(args)
        return asyncio.run(run(args, directory, key))
    except UsageError as e:
        print(f"{prog} {args.cmd}: {e}", file=sys.stderr)
        return USAGE_EXIT
    except (P2PError, ValueError) as e:
        print(f"{prog} {args.cmd}: {e}", file=sys.stderr)
        return 1
