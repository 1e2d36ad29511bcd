"""`wgmesh lab`: build, inspect, break and remove a mesh of N hosts in network namespaces on this machine.

Exit codes: 0 success; 1 the lab did not reach the asked state (mesh incomplete, a ping failed) or an
error said on one line; 2 bad usage.
"""

from __future__ import annotations

import argparse
import json
import subprocess
import sys
import time
from collections.abc import Callable, Sequence

from lab import render
from lab.command import LabError, LabExists
from lab.controller_admin import read_topology
from lab.impairment import ImpairmentError, parse_delay_ms, parse_loss
from lab.instance import Lab, ProcessState
from lab.layout import (
    LABS_ROOT,
    MAX_HOSTS,
    MAX_REPLICAS,
    LabLayout,
    LayoutError,
    ReplicaLayout,
    check_lab_name,
    replica_index,
)
from lab.observe import MeshView
from lab.record import LabStore, RecordError
from lab.teardown import known_labs, tear_down
from wgmesh.argparser import OneLineParser
from wgmesh.invocation import program
from wire.models import Topology

DEFAULT_NAME = "lab"

DESCRIPTION = f"""\
A real mesh on this machine: an underlay namespace with a bridge on 198.18.0.0/16 (the controller
listens on 198.18.0.1:8420), N host namespaces wgl-NAME-hN (host N on 198.18.1.N), each with a real
agent and wg0 (mesh 198.19.0.0/16). Nothing leaves these namespaces. Lab files (record lab.json,
controller state, per-host state, logs) are under {LABS_ROOT}/NAME/. Needs root.
"""

EPILOG = """\
examples:
  wgmesh lab up -n 3            build a 3-host mesh and wait until every pair has a handshake
  wgmesh lab ping               ping matrix over tunnel addresses
  wgmesh lab metrics            what the controller's and agents' Prometheus metrics say
  wgmesh lab exec h1 -- wg show run a command on host h1 (its own /run/wireguard)
  wgmesh lab admin -- nodes list an admin command against the lab's controller
  wgmesh lab cut h1 h2          drop the underlay between h1 and h2 (heal undoes it)
  wgmesh lab delay h1 h2 80ms   pings between h1 and h2 take 80 ms longer (heal undoes it)
  wgmesh lab down               remove everything the lab created
"""


def default_timeout(hosts: int) -> float:
    return 60.0 + 6.0 * hosts


def _host_count(text: str) -> int:
    try:
        n = int(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"{text!r} is not a number") from None
    if not 1 <= n <= MAX_HOSTS:
        raise argparse.ArgumentTypeError(f"a lab has 1 to {MAX_HOSTS} hosts")
    return n


def _replica_count(text: str) -> int:
    try:
        n = int(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"{text!r} is not a number") from None
    if not 1 <= n <= MAX_REPLICAS:
        raise argparse.ArgumentTypeError(f"a lab has 1 to {MAX_REPLICAS} controller replicas")
    return n


def _impairment_arg(parse: Callable[[str], float]) -> Callable[[str], float]:
    """An argparse type from an impairment parser: its ImpairmentError becomes the one-line refusal."""

    def check(text: str) -> float:
        try:
            return parse(text)
        except ImpairmentError as e:
            raise argparse.ArgumentTypeError(str(e)) from None

    return check


_delay = _impairment_arg(parse_delay_ms)
_loss = _impairment_arg(parse_loss)


def _lab_name(text: str) -> str:
    try:
        return check_lab_name(text)
    except LayoutError as e:
        raise argparse.ArgumentTypeError(str(e)) from None


def build_parser(prog: str) -> argparse.ArgumentParser:
    parser = OneLineParser(
        prog=prog,
        description=DESCRIPTION,
        epilog=EPILOG,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    common = OneLineParser(add_help=False)
    common.add_argument(
        "--name",
        type=_lab_name,
        default=DEFAULT_NAME,
        help=f"lab name, 1-8 of [a-z0-9] (default {DEFAULT_NAME})",
    )
    mesh = OneLineParser(add_help=False)
    mesh.add_argument(
        "--backend",
        choices=("auto", "userspace", "kernel"),
        default="userspace",
        help="the agents' WireGuard backend (default userspace; auto: the kernel module where present)",
    )
    sub = parser.add_subparsers(dest="cmd", required=True, metavar="COMMAND")

    up = sub.add_parser("up", parents=[common, mesh], help="build the lab and wait for a complete mesh")
    up.add_argument("-n", "--hosts", type=_host_count, default=3, help="number of hosts (default 3)")
    up.add_argument("--timeout", type=float, help="seconds to wait for the mesh (default 60 + 6 per host)")
    up.add_argument(
        "--store",
        choices=("sqlite", "postgres"),
        default="sqlite",
        help="the controller's database (default sqlite; postgres: a private cluster in the underlay)",
    )
    up.add_argument(
        "--replicas",
        type=_replica_count,
        default=1,
        help=f"controller replicas c1..cN on the one PostgreSQL (1 to {MAX_REPLICAS}, default 1; "
        "more than one needs --store postgres)",
    )
    up.add_argument(
        "--underlay-only",
        action="store_true",
        help="only the namespaces and the underlay: no controller, no agents",
    )

    status = sub.add_parser("status", parents=[common], help="hosts, processes, handshakes and log files")
    status.add_argument("--json", action="store_true", help="print JSON for scripts")
    metrics = sub.add_parser(
        "metrics", parents=[common], help="scrape the controller's and every agent's Prometheus metrics"
    )
    metrics.add_argument("--json", action="store_true", help="print every sample as JSON for scripts")
    ping = sub.add_parser(
        "ping", parents=[common], help="ping matrix over tunnel addresses (exit 0: all answer)"
    )
    ping.add_argument("--wait", type=float, default=1.0, help="seconds to wait for each echo (default 1)")

    ex = sub.add_parser("exec", parents=[common], help="run a command on a host: lab exec h1 -- wg show")
    ex.add_argument("host", help="h1, h2, ... or `underlay` (where the controller runs)")
    ex.add_argument("command", nargs=argparse.REMAINDER, help="the command, after --")

    adm = sub.add_parser(
        "admin",
        parents=[common],
        help="an admin command against the lab's controller: lab admin -- nodes list",
        description="Runs `wgmesh ARGS` in the underlay with the lab's controller URL and admin "
        "credential (WGMESH_CONTROLLER, WGMESH_STATE_DIR), e.g. `lab admin -- nodes list` or "
        "`lab admin -- controller token create`. `lab exec underlay -- wgmesh ...` does the same.",
    )
    adm.add_argument("command", nargs=argparse.REMAINDER, help="wgmesh arguments, after --")

    delay = sub.add_parser(
        "delay",
        parents=[common],
        help="add latency (and loss) between two hosts: lab delay h1 h2 80ms --loss 5%%",
        description="Pings between the two hosts take DELAY longer (half each way); --loss drops that "
        "share of packets in each direction. Done in userspace (a UDP relay in the underlay): this "
        "kernel has no netem. `lab heal A B` removes it.",
    )
    delay.add_argument("a")
    delay.add_argument("b")
    delay.add_argument("delay", type=_delay, help="added round-trip time, e.g. 80ms or 0.2s")
    delay.add_argument("--loss", type=_loss, default=0.0, help="share dropped each way, e.g. 5%%")

    for name, text in (
        ("cut", "drop the underlay between two hosts (or `cut c1 db`: a replica from PostgreSQL)"),
        ("heal", "undo `cut` and `delay`"),
    ):
        p = sub.add_parser(name, parents=[common], help=text)
        p.add_argument("a")
        p.add_argument("b")
    for name, text in (
        ("stop", "stop a host's agent (wg0 keeps running)"),
        ("start", "start a host's agent"),
    ):
        p = sub.add_parser(
            name, parents=[common], help=f"{text}; `controller` for the controller, c1.. for one replica"
        )
        p.add_argument("host", help="h1, h2, ..., controller, or c1, c2, ... (a replica)")
        if name == "stop":
            p.add_argument("--kill", action="store_true", help="SIGKILL, as in a crash (default SIGTERM)")

    add = sub.add_parser("add", parents=[common], help="add one host and wait until it reaches every host")
    add.add_argument("--timeout", type=float, default=90.0, help="seconds to wait (default 90)")
    add.add_argument("--no-wait", action="store_true", help="return once the agent has started")

    down = sub.add_parser(
        "down", parents=[common], help="remove every namespace, process and file of the lab"
    )
    down.add_argument("--all", action="store_true", help="remove every lab on this machine")
    sub.add_parser("list", help="labs that exist on this machine")

    demo = sub.add_parser("demo", parents=[common, mesh], help="up, ping matrix, topology, then down")
    demo.add_argument("-n", "--hosts", type=_host_count, default=3, help="number of hosts (default 3)")
    demo.add_argument("--keep", action="store_true", help="leave the lab up and say how to look around")
    demo.add_argument("--timeout", type=float, help="seconds to wait for the mesh")
    return parser


def _negative_value(argv: Sequence[str]) -> str | None:
    """argparse takes `-5ms` for an unknown option and complains about a missing argument; for
    `delay`, name the real problem instead."""
    if not argv or argv[0] != "delay":
        return None
    for token in argv[1:]:
        if len(token) > 1 and token[0] == "-" and token[1].isdigit():
            try:
                (parse_loss if token.endswith("%") else parse_delay_ms)(token)
            except ImpairmentError as e:
                return str(e)
    return None


def main(argv: Sequence[str], prog: str = "wgmesh lab") -> int:
    negative = _negative_value(argv)
    if negative is not None:
        print(f"{prog} delay: {negative}", file=sys.stderr)
        return 2
    args = build_parser(prog).parse_args(argv)
    try:
        return COMMANDS[args.cmd](args)
    except (LabError, LayoutError, RecordError) as e:
        print(f"{prog} {args.cmd}: {e}", file=sys.stderr)
        return 1
    except KeyboardInterrupt:
        if args.cmd not in BUILDING:
            return 130  # e.g. Ctrl-C on a program run with `lab exec`: that program had its say
        name = getattr(args, "name", DEFAULT_NAME)
        print(
            f"\ninterrupted; the lab is left as it is (`{prog} down --name {name}` removes it)",
            file=sys.stderr,
        )
        return 130


# --- commands -----------------------------------------------------------------------------------------


def _wait_for_mesh(
    lab: Lab, timeout: float, names: Sequence[str] | None = None, started: float | None = None
) -> MeshView:
    """Wait for the mesh, showing progress on one line timed from `started` (default: now), so a
    command with several phases shows one clock."""
    line = render.ProgressLine()
    offset = 0.0 if started is None else time.monotonic() - started

    def show(view: MeshView, elapsed: float) -> None:
        text, key = render.mesh_progress(view, offset + elapsed)
        line.update(text, key)

    view = lab.wait_for_mesh(timeout, show, names)
    line.finish()
    return view


def _report_incomplete(lab: Lab, view: MeshView, timeout: float) -> None:
    print(f"the mesh is not complete after {timeout:.0f} s; missing pairs:", file=sys.stderr)
    print(render.missing_pairs(view), file=sys.stderr)
    print(f"logs: {lab.layout.controller_log} and {lab.layout.dir}/hosts/*/agent.log", file=sys.stderr)
    print(
        f"the lab is left up for a look; `{program()} lab down --name {lab.layout.name}` removes it",
        file=sys.stderr,
    )


def _up(
    name: str,
    hosts: int,
    timeout: float | None,
    backend: str = "userspace",
    store: LabStore = "sqlite",
    replicas: int = 1,
) -> tuple[Lab | None, bool]:
    """Build the lab and wait for the mesh. (lab, complete); lab is None when building failed.
    Raises LabExists, touching nothing, when a lab of that name is there already."""
    line = render.ProgressLine()
    started = time.monotonic()
    try:
        lab = Lab.create(
            name,
            hosts,
            lambda text: line.update(f"[{time.monotonic() - started:5.1f}s] {text}"),
            backend=backend,
            store=store,
            replicas=replicas,
        )
    except LabExists:
        line.finish()
        raise  # nothing was touched: the caller must not remove the existing lab either
    except LabError as e:
        line.finish()
        print(f"building the lab failed: {e}", file=sys.stderr)
        if LabLayout(name).dir.exists():
            print(f"what was built is left; `{program()} lab down --name {name}` removes it", file=sys.stderr)
        return None, False
    line.finish()
    wait = timeout if timeout is not None else default_timeout(hosts)
    view = _wait_for_mesh(lab, wait, started=started)
    if not view.complete:
        _report_incomplete(lab, view, wait)
        return lab, False
    pairs = len(view.pairs)
    print(
        f"mesh of {hosts} hosts complete: {pairs} pairs with a handshake after {time.monotonic() - started:.1f} s"
    )
    return lab, True


def cmd_up(args: argparse.Namespace) -> int:
    if args.underlay_only:
        started = time.monotonic()
        bare = Lab.create(args.name, args.hosts, mesh=False)
        print(
            f"underlay of {args.hosts} hosts built in {time.monotonic() - started:.1f} s (no controller, no agents)"
        )
        print(
            render.table(
                ["host", "namespace", "underlay"],
                [[h.name, h.namespace, h.underlay_address] for h in bare.hosts],
            )
        )
        return 0
    if args.replicas > 1 and args.store != "postgres":
        print(
            f"{program()} lab up: --replicas {args.replicas} needs --store postgres (replicas share one database)",
            file=sys.stderr,
        )
        return 2
    lab, complete = _up(args.name, args.hosts, args.timeout, args.backend, args.store, args.replicas)
    if lab is None or not complete:
        return 1
    if args.store == "postgres":
        print(f"controllers: {lab.controller_urls} (PostgreSQL in the underlay)")
    print(_hosts_table(lab, lab.observe()))
    return 0


def _agent_cell(lab: Lab, name: str) -> str:
    state = lab.agent_state(name)
    if state.pid is None:
        return "never started"
    return f"{state.pid} {'running' if state.running else 'STOPPED'}"


def _agent_view(lab: Lab, name: str) -> tuple[str, str, str]:
    """(controller as the agent sees it, applied map, relayed peers) from the agent's status.json."""
    status = lab.agent_status(name)
    if status is None:
        return "-", "-", "-"
    netmap = f"#{status.serial} ({status.netmap_source})" if status.serial is not None else "none"
    if not lab.agent_state(name).running:
        return "-", netmap, "-"  # what a stopped agent last wrote about the controller is stale
    relayed = ",".join(f"{p.name} via {p.via}" for p in status.peers if p.route == "relay") or "-"
    replica = lab.replica_in_use(name)
    return status.controller + (f" ({replica})" if replica else ""), netmap, relayed


HOST_COLUMNS = ["host", "underlay", "tunnel", "agent", "controller", "map", "wg0", "peers", "handshakes"]
HOST_COLUMNS += ["relayed", "cut from", "log"]


def _hosts_table(lab: Lab, view: MeshView) -> str:
    return render.table(HOST_COLUMNS, _host_rows(lab, view))


def _host_rows(lab: Lab, view: MeshView) -> list[list[object]]:
    hosts = {h.name: h for h in lab.hosts}
    rows = []
    for hv in view.hosts:
        host = hosts[hv.name]
        peers = len(hv.device.peers) if hv.device else None
        shaken = sum(
            1 for other in view.hosts if other.name != hv.name and view.handshake_time(hv.name, other.name)
        )
        controller, netmap, relayed = _agent_view(lab, hv.name)
        rows.append(
            [
                hv.name,
                host.underlay_address,
                hv.tunnel_address,
                _agent_cell(lab, hv.name),
                controller,
                netmap,
                "up" if hv.device else "DOWN",
                peers,
                f"{shaken}/{len(view.hosts) - 1}",
                relayed,
                ",".join(lab.cut_from(hv.name)) or "-",
                host.agent_log,
            ]
        )
    return rows


def _controller_line(lab: Lab, replica: ReplicaLayout, state: ProcessState) -> str:
    health = ""
    if state.running:
        code = lab.replica_health(replica.name)
        health = {200: "healthy", 503: "UNHEALTHY (no database)"}.get(code or 0, "NOT ANSWERING")
    if replica.namespace is not None and lab.cut_from_database_now(replica.name):
        health += ", cut from PostgreSQL"
    where = (
        "never started"
        if state.pid is None
        else f"pid {state.pid} {'running' if state.running else 'STOPPED'}"
    )
    name = "controller" if lab.record.store == "sqlite" else f"controller {replica.name}"
    return f"{name} {replica.url}: {where} {health}".rstrip() + f"; log {state.log}"


def cmd_status(args: argparse.Namespace) -> int:
    lab = Lab.open(args.name)
    view = lab.observe()
    ctl = lab.controller_state()
    replicas = [(r, lab.controller_state(r.name)) for r in lab.replicas]
    if args.json:
        keys = [c.replace(" ", "_") for c in HOST_COLUMNS]
        hosts = [
            {k: (v if isinstance(v, int | None) else str(v)) for k, v in zip(keys, row, strict=True)}
            for row in _host_rows(lab, view)
        ]
        delays = [
            {"a": f"h{i.a}", "b": f"h{i.b}", "delay_ms": i.delay_ms, "loss": i.loss}
            for i in lab.impairments()
        ]
        controller = {
            "url": lab.replicas[0].url,
            "pid": ctl.pid,
            "running": ctl.running,
            "log": str(ctl.log),
        }
        controllers = [
            {"name": r.name, "url": r.url, "pid": st.pid, "running": st.running, "health": lab.replica_health(r.name),
             "cut_from_database": r.namespace is not None and lab.cut_from_database_now(r.name), "log": str(st.log)}
            for r, st in replicas
        ]  # fmt: skip
        out: dict[str, object] = {"lab": lab.layout.name, "store": lab.record.store, "controller": controller}
        out.update(controllers=controllers, hosts=hosts, delays=delays)
        print(json.dumps(out, indent=2))
        return 0
    print(f"lab {lab.layout.name!r}: {len(view.hosts)} hosts, files in {lab.layout.dir}")
    for replica, state in replicas:
        print(_controller_line(lab, replica, state))
    print()
    print(_hosts_table(lab, view))
    if lab.impairments():
        print()
        rows = [[f"h{i.a} <-> h{i.b}", f"+{i.delay_ms:g} ms", f"{i.loss:.0%}"] for i in lab.impairments()]
        print(render.table(["delayed pair", "round trip", "loss each way"], rows))
    if len(view.hosts) > 1:
        print()
        print("last handshake, as each host sees each peer")
        print(render.handshake_matrix(view, time.time()))
    return 0


def cmd_metrics(args: argparse.Namespace) -> int:
    from lab import metrics

    lab = Lab.open(args.name)
    controller, agents = metrics.scrape_lab(lab)
    if args.json:
        shown = {"controller": controller.json(), "hosts": {a.where: a.json() for a in agents}}
        print(json.dumps(shown, indent=2))
    else:
        print(metrics.render(controller, agents))
    return 0 if controller.error is None and all(a.error is None for a in agents) else 1


def _ping(lab: Lab, wait: float = 1.0) -> bool:
    names = [h.name for h in lab.hosts]
    results = lab.ping_matrix(timeout_s=wait)
    print(render.ping_matrix(names, results))
    failed = [r for r in results if r.rtt_ms is None]
    if failed:
        print(f"{len(failed)} of {len(results)} pairs did not answer", file=sys.stderr)
    else:
        print(f"all {len(results)} pairs answer")
    return not failed


def cmd_ping(args: argparse.Namespace) -> int:
    return 0 if _ping(Lab.open(args.name), args.wait) else 1


def _after_dashes(command: Sequence[str]) -> list[str]:
    """REMAINDER arguments without the `--` that separates them from the lab's own."""
    return list(command[1:] if command[:1] == ["--"] else command)


def cmd_exec(args: argparse.Namespace) -> int:
    command = _after_dashes(args.command)
    if not command:
        print("usage: wgmesh lab exec HOST -- COMMAND ...", file=sys.stderr)
        return 2
    lab = Lab.open(args.name)
    return subprocess.call(lab.exec_argv(args.host, command))


def cmd_admin(args: argparse.Namespace) -> int:
    command = _after_dashes(args.command)
    if command[:1] == ["wgmesh"]:
        command = command[1:]
    if not command:
        print(f"usage: {program()} lab admin -- nodes list (any `wgmesh` admin command)", file=sys.stderr)
        return 2
    lab = Lab.open(args.name)
    return subprocess.call(lab.exec_argv("underlay", ["wgmesh", *command]))


def _replica_and_db(args: argparse.Namespace) -> str | None:
    """`cut c1 db` / `heal db c1`: the replica named; None for two hosts."""
    pair = {args.a, args.b}
    if "db" not in pair:
        return None
    other = (pair - {"db"}) or {"db"}
    name = str(other.pop())
    if replica_index(name) is None:
        raise LabError(f"`{args.cmd} ... db` takes a controller replica (c1, c2, ...), not {name!r}")
    return name


def cmd_cut(args: argparse.Namespace) -> int:
    replica = _replica_and_db(args)
    if replica is not None:
        Lab.open(args.name).cut_from_database(replica)
        print(f"{replica} cut from PostgreSQL (`{program()} lab heal {replica} db` undoes it)")
        return 0
    Lab.open(args.name).cut(args.a, args.b)
    print(f"underlay between {args.a} and {args.b} cut (`{program()} lab heal {args.a} {args.b}` undoes it)")
    return 0


def cmd_delay(args: argparse.Namespace) -> int:
    Lab.open(args.name).delay(args.a, args.b, args.delay, args.loss)
    loss = f" and {args.loss:.0%} loss each way" if args.loss else ""
    print(
        f"{args.a} <-> {args.b}: +{args.delay:g} ms round trip{loss} "
        f"(`{program()} lab heal {args.a} {args.b}` removes it)"
    )
    return 0


def cmd_heal(args: argparse.Namespace) -> int:
    replica = _replica_and_db(args)
    if replica is not None:
        Lab.open(args.name).heal_database(replica)
        print(f"{replica} reaches PostgreSQL again")
        return 0
    Lab.open(args.name).heal(args.a, args.b)
    print(f"underlay between {args.a} and {args.b} healed")
    return 0


def cmd_stop(args: argparse.Namespace) -> int:
    lab = Lab.open(args.name)
    if args.host == "controller":
        stopped = lab.stop_controller(kill=args.kill)
    elif replica_index(args.host) is not None:
        stopped = lab.stop_replica(args.host, kill=args.kill)
    else:
        stopped = lab.stop_agent(args.host, kill=args.kill)
    print(f"{args.host}: {'stopped' if stopped else 'was not running'}")
    return 0


def cmd_start(args: argparse.Namespace) -> int:
    lab = Lab.open(args.name)
    if args.host == "controller":
        running = all(lab.controller_state(r.name).running for r in lab.replicas)
        lab.start_controller()
        started = not running
        state = lab.controller_state()
    elif replica_index(args.host) is not None:
        started = lab.start_replica(args.host)
        state = lab.controller_state(args.host)
    else:
        started = lab.start_agent(args.host)
        state = lab.agent_state(args.host)
    print(f"{args.host}: {'started' if started else 'already running'} (pid {state.pid}, log {state.log})")
    return 0


def cmd_add(args: argparse.Namespace) -> int:
    lab = Lab.open(args.name)
    started = time.monotonic()
    host = lab.add_host()
    print(f"{host.name} added (underlay {host.underlay_address}, log {host.agent_log})")
    if args.no_wait:
        return 0
    view = _wait_for_mesh(lab, args.timeout)
    if not view.complete:
        _report_incomplete(lab, view, args.timeout)
        return 1
    print(f"{host.name} has a handshake with every host after {time.monotonic() - started:.1f} s")
    return 0


def _down(name: str) -> None:
    line = render.ProgressLine()
    report = tear_down(LabLayout(name), lambda text: line.update(text))
    line.finish()
    if report.found_anything:
        print(
            f"lab {name!r} removed: {report.recorded_processes + report.other_processes} processes, "
            f"{report.namespaces} namespaces, {'its directory' if report.removed_dir else 'no directory'}"
        )
    else:
        print(f"no lab named {name!r} on this machine; nothing to remove")


def cmd_down(args: argparse.Namespace) -> int:
    names = known_labs() if args.all else [args.name]
    for name in names:
        _down(name)
    if args.all and not names:
        print("no labs on this machine")
    return 0


def cmd_list(_: argparse.Namespace) -> int:
    names = known_labs()
    print("\n".join(names) if names else "no labs on this machine")
    return 0


def _measured_topology(lab: Lab, hosts: int, timeout_s: float = 20.0) -> Topology:
    """The topology once every pair's link has a measured RTT (agents report every few seconds), or as
    it is at the deadline."""

    def measured(topo: Topology) -> bool:
        return len(topo.edges) >= hosts * (hosts - 1) // 2 and all(e.rtt_ms is not None for e in topo.edges)

    deadline = time.monotonic() + timeout_s
    topo = read_topology(lab)
    while not measured(topo) and time.monotonic() < deadline:
        time.sleep(0.5)
        topo = read_topology(lab)
    return read_topology(lab, with_routes=True)


def cmd_demo(args: argparse.Namespace) -> int:
    lab, complete = _up(args.name, args.hosts, args.timeout, args.backend)
    ok = False
    try:
        if lab is not None and complete:
            print("\nping matrix (round-trip over the tunnel)")
            ok = _ping(lab)
            print("\ntopology, as the controller sees it")
            print(render.topology(_measured_topology(lab, args.hosts)))
    finally:
        if args.keep and lab is not None:
            print("\nthe lab stays up. Look around:")
            print("\n".join(f"  {line}" for line in look_around(args.name)))
        else:
            print()
            _down(args.name)
            print("(`make demo KEEP=1`, or `lab demo --keep`, leaves the lab up to look around)")
    return 0 if ok else 1


def look_around(name: str) -> list[str]:
    """The commands `demo --keep` suggests, exactly as they run from the shell it was started in."""
    lab = f"{program()} lab"
    flag = "" if name == DEFAULT_NAME else f" --name {name}"
    return [
        f"{lab} status{flag}",
        f"{lab} ping{flag}",
        f"{lab} exec{flag} h1 -- wg show",
        f"{lab} exec{flag} h1 -- wgmesh agent status",
        f"{lab} admin{flag} -- nodes list",
        f"{lab} down{flag}",
    ]


# Commands that build or wait: an interrupt leaves a half-built lab, and the user is told how to remove it.
BUILDING = frozenset({"up", "add", "demo"})

COMMANDS = {
    "up": cmd_up,
    "status": cmd_status,
    "ping": cmd_ping,
    "metrics": cmd_metrics,
    "exec": cmd_exec,
    "admin": cmd_admin,
    "cut": cmd_cut,
    "heal": cmd_heal,
    "delay": cmd_delay,
    "stop": cmd_stop,
    "start": cmd_start,
    "add": cmd_add,
    "down": cmd_down,
    "list": cmd_list,
    "demo": cmd_demo,
}
