"""A lab as a Python object: builds it, starts and stops its controller and agents, cuts links, and
reads its state. The CLI and the e2e tests both drive labs through this class.

Rules:
- The record is saved BEFORE each step that creates something and right after each process starts,
  so `lab down` (see `lab.teardown`) can always undo what exists.
- Every host runs the real agent with the lab's backend (userspace: wireguard-go; kernel: the module;
  chosen at creation, `auto` picks the module where the kernel has it); the controller runs in the
  underlay namespace, on the bridge address, with its SQLite state in the lab directory.
"""

from __future__ import annotations

import contextlib
import json
import signal
import subprocess
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from ipaddress import IPv4Address
from pathlib import Path

from agent.state import StatePaths
from agent.status import AgentStatus, StatusError
from keys.store import write_file_atomically
from lab import firewall, impairment, netns, processes
from lab.command import LabError, LabExists, check_can_run_lab, run
from lab.layout import (
    AGENT_METRICS_LISTEN,
    BRIDGE_ADDRESS,
    CONTROLLER_METRICS_LISTEN,
    MAX_REPLICAS,
    MESH_CIDR,
    POSTGRES_ADDRESS,
    POSTGRES_PORT,
    UNDERLAY_NET,
    WG_INTERFACE,
    WG_LISTEN_PORT,
    HostLayout,
    LabLayout,
    ReplicaLayout,
    host_index,
    replica_index,
)
from lab.observe import MeshView, PingResult, observe, ping_matrix, ping_once
from lab.record import (
    HostRecord,
    ImpairmentRecord,
    LabBackend,
    LabRecord,
    LabStore,
    ProcessRecord,
    load,
    save,
)
from lab.underlay_http import request
from wgmesh.invocation import program

Progress = Callable[[str], None]
# Deadlines, not delays: a slow machine (the kernel tier's emulated VM) takes a minute to import them.
CONTROLLER_READY_TIMEOUT_S = 120.0
RELAY_READY_TIMEOUT_S = 10.0
# Faster than the agent's default (10 s) so a cut link shows in the measurements within seconds.
AGENT_PROBE_INTERVAL_S = 2.0
NUDGE_EVERY_S = 2.0


def _quiet(_: str) -> None:
    pass


@dataclass(frozen=True)
class ProcessState:
    pid: int | None
    running: bool
    log: Path


def resolve_backend(name: str) -> LabBackend:
    """The lab's backend for `name`: `auto` is the kernel module where this kernel has it."""
    if name == "auto":
        from agent.backends.kernel import kernel_module_present

        return "kernel" if kernel_module_present() else "userspace"
    if name == "kernel":
        from agent.backends.kernel import kernel_module_present

        if not kernel_module_present():
            raise LabError("this kernel has no WireGuard module: use --backend userspace (or auto)")
        return "kernel"
    if name == "userspace":
        return "userspace"
    raise LabError(f"unknown backend {name!r}: choose userspace, kernel or auto")


class Lab:
    def __init__(self, layout: LabLayout, record: LabRecord) -> None:
        self.layout = layout
        self.record = record

    # --- opening and building -----------------------------------------------------------------------

    @classmethod
    def open(cls, name: str) -> Lab:
        layout = LabLayout(name)
        return cls(layout, load(layout))

    @classmethod
    def create(
        cls,
        name: str,
        hosts: int,
        progress: Progress = _quiet,
        *,
        mesh: bool = True,
        backend: str = "userspace",
        store: LabStore = "sqlite",
        replicas: int = 1,
        controller_timeout_s: float = CONTROLLER_READY_TIMEOUT_S,
    ) -> Lab:
        """Build the underlay, `hosts` hosts, the controller and one agent per host; does not wait for
        the mesh (see `wait_for_mesh`). With mesh=False only the namespaces and the underlay are built
        (no controller, no agents). `backend`: the agents' (userspace, kernel or auto). `store`
        postgres: a private PostgreSQL in the underlay and `replicas` controllers on it, each in its
        own namespace; agents and admin commands get every replica's URL. On failure the lab is left
        for `lab down` to remove. `controller_timeout_s`: how long the controller may take to
        answer its health check (longer on a slow machine, e.g. under emulation)."""
        check_can_run_lab()
        chosen = resolve_backend(backend)
        layout = LabLayout(name)
        if hosts < 1:
            raise LabError("a lab needs at least one host")
        if not 1 <= replicas <= MAX_REPLICAS:
            raise LabError(f"a lab has 1 to {MAX_REPLICAS} controller replicas")
        if replicas > 1 and store != "postgres":
            raise LabError("controller replicas share one database: use --store postgres with --replicas")
        host_layouts = [layout.host(i) for i in range(1, hosts + 1)]  # validates the count
        leftovers = [ns for ns in netns.list_namespaces() if layout.owns_namespace(ns)]
        if layout.record_path.exists() or leftovers:
            raise LabExists(
                f"a lab named {name!r} exists already; remove it with `{program()} lab down --name {name}`"
            )
        lab = cls(layout, LabRecord(name=name, backend=chosen, store=store, replicas=replicas))
        lab.save()
        progress("creating the underlay")
        netns.create_underlay(layout)
        for h in host_layouts:
            progress(f"creating host namespaces {h.index}/{hosts}")
            lab._create_host(h)
        if not mesh:
            return lab
        if store == "postgres":
            progress("starting PostgreSQL")
            lab._start_postgres()
            for replica in lab.replicas:
                assert replica.namespace is not None
                netns.create_attached(layout, replica.namespace, replica.bridge_port_ifname, replica.address)
        progress("starting the controller")
        lab.start_controller(controller_timeout_s)
        lab.ensure_preauth_key()
        for h in host_layouts:
            progress(f"starting agents {h.index}/{hosts}")
            lab.start_agent(h.name)
        return lab

    def _start_postgres(self) -> None:
        """A private cluster in the underlay on the bridge address, one database, and the settings
        file that gives the controllers its URL."""
        from lab.postgres import PostgresCluster, PostgresMissing

        try:
            cluster = PostgresCluster(
                prefix=f"wgl-{self.layout.name}-pg-",
                host=str(POSTGRES_ADDRESS),
                port=POSTGRES_PORT,
                netns=self.layout.underlay_namespace,
                clients=str(UNDERLAY_NET),
            )
        except PostgresMissing as e:
            raise LabError(str(e)) from None
        netns.add_bridge_address(self.layout, POSTGRES_ADDRESS)
        self.record.postgres_dir = str(cluster.dir)
        self.save()
        try:
            cluster.start()
            url = cluster.create_database("wgmesh")
        except RuntimeError as e:
            raise LabError(f"PostgreSQL did not start: {e}") from None
        write_file_atomically(self.layout.database_config_path, f"db = {json.dumps(url)}\n", 0o600)

    def _create_host(self, host: HostLayout) -> None:
        self.record.hosts.append(HostRecord(index=host.index))
        self.save()
        for d in (host.dir, host.state_dir, host.run_dir):
            d.mkdir(parents=True, exist_ok=True, mode=0o700)
        netns.create_host(self.layout, host)

    def add_host(self) -> HostLayout:
        """One more host with a running agent (the mesh is not waited for)."""
        host = self.layout.host(self.record.next_index())
        self._create_host(host)
        self.start_agent(host.name)
        return host

    def save(self) -> None:
        save(self.layout, self.record)

    # --- hosts --------------------------------------------------------------------------------------

    @property
    def hosts(self) -> list[HostLayout]:
        return [self.layout.host(h.index) for h in sorted(self.record.hosts, key=lambda h: h.index)]

    def host(self, name: str) -> HostLayout:
        index = host_index(name)
        if not self.record.has_host(index):
            known = ", ".join(h.name for h in self.hosts) or "none"
            raise LabError(f"lab {self.layout.name!r} has no host {name!r} (hosts: {known})")
        return self.layout.host(index)

    # --- processes ----------------------------------------------------------------------------------

    def _state(self, proc: ProcessRecord | None, log: Path) -> ProcessState:
        if proc is None:
            return ProcessState(None, False, log)
        return ProcessState(proc.pid, processes.is_ours(proc, self.layout.dir), log)

    @property
    def replicas(self) -> list[ReplicaLayout]:
        """The controller processes: one (in the underlay), or the replicas of a lab on PostgreSQL."""
        own = self.record.store == "postgres"
        return [self.layout.replica(i, own) for i in range(1, self.record.replicas + 1)]

    def replica(self, name: str) -> ReplicaLayout:
        index = replica_index(name)
        if index is None or index > self.record.replicas:
            known = ", ".join(r.name for r in self.replicas)
            raise LabError(f"lab {self.layout.name!r} has no controller replica {name!r} (replicas: {known})")
        return self.replicas[index - 1]

    @property
    def controller_urls(self) -> str:
        """Every replica's URL, comma-separated, as agents and admin commands take them."""
        return ",".join(r.url for r in self.replicas)

    def _replica_process(self, index: int) -> ProcessRecord | None:
        return self.record.controller if index == 1 else self.record.replica_processes.get(index)

    def controller_state(self, name: str = "c1") -> ProcessState:
        replica = self.replica(name)
        return self._state(self._replica_process(replica.index), replica.log)

    def agent_state(self, name: str) -> ProcessState:
        host = self.host(name)
        return self._state(self.record.host(host.index).agent, host.agent_log)

    def start_controller(self, timeout_s: float = CONTROLLER_READY_TIMEOUT_S) -> None:
        """Start every controller replica that does not run and wait until each answers GET /v1/health
        with 200. Replica c1 first: it makes the admin credential the others are given, and the CA."""
        first, *others = self.replicas
        self.start_replica(first.name, timeout_s)
        for replica in others:
            self.start_replica(replica.name, timeout_s)

    def start_replica(self, name: str, timeout_s: float = CONTROLLER_READY_TIMEOUT_S) -> bool:
        """Start one replica unless it runs, and wait for its health. False when it was running."""
        replica = self.replica(name)
        if self.controller_state(name).running:
            return False
        replica.state_dir.mkdir(parents=True, exist_ok=True, mode=0o700)
        if replica.index > 1:
            # Replicas share the admin credential (the operator gives each the same file).
            credential = self.layout.admin_credential_path.read_text()
            write_file_atomically(replica.state_dir / "admin-credential", credential, 0o600)
        argv = processes.wgmesh_argv(
            "controller", "serve",
            "--listen", replica.listen,
            "--state-dir", str(replica.state_dir),
            "--mesh-cidr", str(MESH_CIDR),
            "--metrics-listen", CONTROLLER_METRICS_LISTEN,
        )  # fmt: skip
        if self.record.store == "postgres":
            argv += ["--config", str(self.layout.database_config_path)]
        namespace = replica.namespace or self.layout.underlay_namespace
        proc = processes.start(processes.in_namespace(namespace, argv), replica.log)
        if replica.index == 1:
            self.record.controller = proc
        else:
            self.record.replica_processes[replica.index] = proc
        self.save()
        deadline = time.monotonic() + timeout_s
        while time.monotonic() < deadline:
            if not processes.is_ours(proc, self.layout.dir):
                raise LabError(
                    f"controller {replica.name} exited during start; last lines of {replica.log}:\n"
                    + processes.log_tail(replica.log)
                )
            if self.replica_health(replica.name) == 200:
                return True
            time.sleep(0.1)
        raise LabError(
            f"controller {replica.name} did not answer /v1/health within {timeout_s:.0f} s; see {replica.log}"
        )

    def replica_health(self, name: str) -> int | None:
        """The status GET /v1/health answers on one replica (200 healthy, 503 without its database);
        None when it does not answer."""
        try:
            reply = request(
                self.layout.underlay_namespace,
                "GET",
                f"{self.replica(name).url}/v1/health",
                timeout=2,
                ca_file=self.layout.controller_ca_path,  # one CA for every replica
            )
        except OSError:
            return None
        return reply.status

    def controller_healthy(self) -> bool:
        """Every replica answers /v1/health with 200."""
        return all(self.replica_health(r.name) == 200 for r in self.replicas)

    def stop_controller(self, *, kill: bool = False) -> bool:
        """End every replica (SIGKILL with kill=True, as in a crash). False when none was running."""
        stopped = [self.stop_replica(r.name, kill=kill) for r in self.replicas]
        return any(stopped)

    def stop_replica(self, name: str, *, kill: bool = False) -> bool:
        """End one replica (SIGKILL with kill=True). False when it was not running."""
        proc = self._replica_process(self.replica(name).index)
        if proc is None:
            return False
        sig = signal.SIGKILL if kill else signal.SIGTERM
        return processes.end_recorded(proc, self.layout.dir, sig=sig)

    def cut_from_database(self, name: str) -> None:
        """Drop every packet between a replica and PostgreSQL (both directions, established flows too)."""
        firewall.block(self._replica_namespace(name), POSTGRES_ADDRESS)

    def heal_database(self, name: str) -> None:
        firewall.unblock(self._replica_namespace(name), POSTGRES_ADDRESS)

    def cut_from_database_now(self, name: str) -> bool:
        return POSTGRES_ADDRESS in firewall.cut_addresses(self._replica_namespace(name))

    def _replica_namespace(self, name: str) -> str:
        replica = self.replica(name)
        if replica.namespace is None:
            raise LabError("only the replicas of a lab on PostgreSQL (--store postgres) reach a database")
        return replica.namespace

    def run_in_underlay(self, argv: Sequence[str], timeout: float = 300.0) -> str:
        """Run a wgmesh admin command (or any command) in the underlay namespace; its stdout."""
        return run(processes.in_namespace(self.layout.underlay_namespace, argv), timeout=timeout).stdout

    def admin_argv(self, *args: str) -> list[str]:
        """`wgmesh <args> --controller URL --state-dir CONTROLLERDIR`, for the admin commands."""
        return processes.wgmesh_argv(
            *args, "--controller", self.controller_urls, "--state-dir", str(self.layout.controller_dir)
        )

    def ensure_preauth_key(self) -> str:
        if self.record.preauth_key is None:
            out = self.run_in_underlay(
                self.admin_argv("controller", "token", "create", "--reusable", "--expires", "never")
            )
            lines = [line.strip() for line in out.splitlines() if line.strip()]
            if not lines:
                raise LabError("`wgmesh controller token create` printed no key")
            self.record.preauth_key = lines[-1]
            self.save()
        return self.record.preauth_key

    def ensure_preauth_key_file(self) -> Path:
        """The lab's pre-auth key in a 0600 file: agents read it there, never from their command line."""
        path = self.layout.preauth_key_path
        key = self.ensure_preauth_key()
        if not path.exists() or path.read_text().strip() != key:
            write_file_atomically(path, key + "\n", 0o600)
        return path

    def agent_argv(self, host: HostLayout) -> list[str]:
        return processes.wgmesh_argv(
            "agent", "up",
            "--controller", self.controller_urls,
            "--token-file", str(self.ensure_preauth_key_file()),
            "--interface", WG_INTERFACE,
            "--backend", self.record.backend,
            "--state-dir", str(host.state_dir),
            "--listen-port", str(WG_LISTEN_PORT),
            "--endpoint", host.endpoint,
            "--hostname", host.name,
            "--probe-interval", f"{AGENT_PROBE_INTERVAL_S:g}",
            "--metrics-listen", AGENT_METRICS_LISTEN,
        )  # fmt: skip

    def start_agent(self, name: str) -> bool:
        """Start the host's agent unless it runs. False when it was running already."""
        host = self.host(name)
        hrec = self.record.host(host.index)
        if hrec.agent is not None and processes.is_ours(hrec.agent, self.layout.dir):
            return False
        hrec.agent = processes.start(processes.in_host(host, self.agent_argv(host)), host.agent_log)
        self.save()
        return True

    def stop_agent(self, name: str, *, kill: bool = False) -> bool:
        """End the host's agent process only (its wireguard-go keeps running). False when not running."""
        host = self.host(name)
        agent = self.record.host(host.index).agent
        if agent is None:
            return False
        sig = signal.SIGKILL if kill else signal.SIGTERM
        return processes.end_recorded(agent, self.layout.dir, sig=sig)

    def enrolled(self, name: str) -> bool:
        """The host's agent has enrolled (its node.json exists)."""
        return StatePaths(self.host(name).state_dir).node.exists()

    def agent_status(self, name: str) -> AgentStatus | None:
        """What the host's agent last wrote to its status.json; None before it wrote one."""
        try:
            return AgentStatus.load(StatePaths(self.host(name).state_dir).status)
        except StatusError:
            return None

    def replica_in_use(self, name: str) -> str | None:
        """The controller replica (c1, c2, ...) host `name`'s agent talks to, as its status says;
        None for a lab with one controller or when the agent has not said."""
        status = self.agent_status(name)
        if self.record.replicas == 1 or status is None or status.controller_in_use is None:
            return None
        return next((r.name for r in self.replicas if r.url == status.controller_in_use), None)

    def delete_interface(self, name: str) -> None:
        """Remove the host's wg0 (its wireguard-go exits with it), as after a reboot."""
        netns.delete_link(self.host(name).namespace, WG_INTERFACE)

    def exec_argv(self, name: str, argv: Sequence[str]) -> list[str]:
        """`argv` wrapped to run on host `name` (or in the underlay for `underlay`)."""
        if name in ("underlay", "u"):
            return processes.in_namespace(
                self.layout.underlay_namespace, processes.with_env(self.admin_env(), argv)
            )
        return processes.in_host(self.host(name), argv)

    def admin_env(self) -> dict[str, str]:
        """What an admin command in the underlay needs to find this lab's controller and credential."""
        return {
            "WGMESH_CONTROLLER": self.controller_urls,
            "WGMESH_STATE_DIR": str(self.layout.controller_dir),
            "PATH": processes.program_path(),
        }

    def exec(self, name: str, argv: Sequence[str], timeout: float = 60.0) -> subprocess.CompletedProcess[str]:
        return run(self.exec_argv(name, argv), timeout=timeout, check=False)

    # --- underlay faults ----------------------------------------------------------------------------

    def cut(self, a: str, b: str) -> None:
        ha, hb = self._two_hosts(a, b)
        firewall.block(ha.namespace, hb.underlay_address)
        firewall.block(hb.namespace, ha.underlay_address)

    def isolate(self, name: str) -> list[str]:
        """Cut host `name` from every other host at once (one rule change on its side), as a host
        whose network failed; `heal` each pair to undo. The names of the hosts it was cut from."""
        host = self.host(name)
        others = [h for h in self.hosts if h != host]
        if others:
            firewall.block(host.namespace, *(h.underlay_address for h in others))
        return [h.name for h in others]

    def heal(self, a: str, b: str) -> None:
        """Undo `cut` and `delay` between the two hosts."""
        ha, hb = self._two_hosts(a, b)
        firewall.unblock(ha.namespace, hb.underlay_address)
        firewall.unblock(hb.namespace, ha.underlay_address)
        self._set_impairment(ha, hb, None)

    def delay(self, a: str, b: str, delay_ms: float, loss: float = 0.0) -> None:
        """Add `delay_ms` of round-trip time and `loss` per direction between two hosts (replacing
        what was set for the pair before). See `lab/impairment.py`."""
        ha, hb = self._two_hosts(a, b)
        self._set_impairment(ha, hb, (delay_ms, loss))

    def impairments(self) -> list[ImpairmentRecord]:
        return list(self.record.impairments)

    def firewall_rules(self, name: str) -> list[str]:
        """The delay rewrites host `name` has installed (empty: none)."""
        return impairment.installed_rules(self.host(name).namespace)

    def _set_impairment(self, ha: HostLayout, hb: HostLayout, value: tuple[float, float] | None) -> None:
        lo, hi = sorted((ha, hb), key=lambda h: h.index)
        kept = []
        for imp in self.record.impairments:
            if (imp.a, imp.b) == (lo.index, hi.index):
                processes.end_recorded(imp.relay, self.layout.dir, grace_s=2.0)
            else:
                kept.append(imp)
        self.record.impairments = kept
        if value is not None:
            self.record.impairments.append(self._start_relay(lo, hi, *value))
        self.save()
        for host in (lo, hi):
            impairment.apply(host.namespace, self._rewrites(host))

    def _start_relay(self, lo: HostLayout, hi: HostLayout, delay_ms: float, loss: float) -> ImpairmentRecord:
        log = self.layout.dir / f"delay-{lo.name}-{hi.name}.log"
        argv = [
            *processes.python_argv("lab.delay_relay"),
            "--listen", str(BRIDGE_ADDRESS),
            "--a", f"{lo.underlay_address}:{WG_LISTEN_PORT}",
            "--b", f"{hi.underlay_address}:{WG_LISTEN_PORT}",
            "--delay-ms", f"{delay_ms / 2:g}",
            "--loss", f"{loss:g}",
            "--lab-dir", str(self.layout.dir),
        ]  # fmt: skip
        proc = processes.start(processes.in_namespace(self.layout.underlay_namespace, argv), log)
        deadline = time.monotonic() + RELAY_READY_TIMEOUT_S
        while time.monotonic() < deadline:
            ports = impairment.relay_ports(log.read_text(errors="replace"))
            if ports is not None:
                return ImpairmentRecord(
                    a=lo.index, b=hi.index, delay_ms=delay_ms, loss=loss, relay=proc,
                    port_a=ports[0], port_b=ports[1],
                )  # fmt: skip
            if not processes.is_ours(proc, self.layout.dir):
                break
            time.sleep(0.05)
        processes.end_recorded(proc, self.layout.dir, grace_s=1.0)
        raise LabError(f"the delay relay did not start; last lines of {log}:\n{processes.log_tail(log)}")

    def _rewrites(self, host: HostLayout) -> list[impairment.Rewrite]:
        """What `host` must rewrite: for each impaired pair it is in, the peer and the relay port this
        host talks to instead of that peer."""
        out = []
        for imp in self.record.impairments:
            if host.index == imp.a:
                out.append(
                    impairment.Rewrite(self.host(f"h{imp.b}").underlay_address, BRIDGE_ADDRESS, imp.port_a)
                )
            elif host.index == imp.b:
                out.append(
                    impairment.Rewrite(self.host(f"h{imp.a}").underlay_address, BRIDGE_ADDRESS, imp.port_b)
                )
        return out

    def cut_from(self, name: str) -> list[str]:
        """Names of the hosts whose underlay `name` cannot reach."""
        by_address = {h.underlay_address: h.name for h in self.hosts}
        return [by_address.get(a, str(a)) for a in firewall.cut_addresses(self.host(name).namespace)]

    def _two_hosts(self, a: str, b: str) -> tuple[HostLayout, HostLayout]:
        ha, hb = self.host(a), self.host(b)
        if ha == hb:
            raise LabError(f"{a} and {b} are the same host")
        return ha, hb

    # --- observing ----------------------------------------------------------------------------------

    def observe(self, names: Sequence[str] | None = None) -> MeshView:
        return observe([self.host(n) for n in names] if names else self.hosts, self.record.backend)

    def tunnel_addresses(self, names: Sequence[str] | None = None) -> dict[str, IPv4Address | None]:
        hosts = [self.host(n) for n in names] if names else self.hosts
        return {h.name: netns.interface_ipv4(h.namespace, WG_INTERFACE) for h in hosts}

    def ping(self, source: str, target: str, *, timeout_s: float = 1.0, attempts: int = 1) -> float | None:
        """RTT in ms of an echo from `source` to `target`'s tunnel address; None: no answer or no address."""
        address = netns.interface_ipv4(self.host(target).namespace, WG_INTERFACE)
        if address is None:
            return None
        return ping_once(self.host(source).namespace, address, timeout_s, attempts)

    def ping_matrix(
        self, names: Sequence[str] | None = None, *, timeout_s: float = 1.0, attempts: int = 2
    ) -> list[PingResult]:
        hosts = [self.host(n) for n in names] if names else self.hosts
        return ping_matrix(hosts, self.tunnel_addresses(names), timeout_s=timeout_s, attempts=attempts)

    def wait_for_mesh(
        self,
        timeout_s: float,
        progress: Callable[[MeshView, float], None] | None = None,
        names: Sequence[str] | None = None,
        *,
        nudge: bool = True,
    ) -> MeshView:
        """Poll until every pair among `names` (default: all hosts) has a handshake, or the deadline.

        Returns the last view either way (check `.complete`). With `nudge`, a pair whose two sides are
        configured but have not handshaken gets one ping every few seconds: WireGuard handshakes only
        when there is something to send.
        """
        start = time.monotonic()
        last_nudge: dict[tuple[str, str], float] = {}
        pinging: list[subprocess.Popen[bytes]] = []
        try:
            while True:
                view = self.observe(names)
                if progress is not None:
                    progress(view, time.monotonic() - start)
                if view.complete or time.monotonic() - start >= timeout_s:
                    return view
                if nudge:
                    pinging = [p for p in pinging if p.poll() is None]
                    pinging += self._nudge(view, last_nudge)
                time.sleep(0.25)
        finally:
            for p in pinging:
                with contextlib.suppress(subprocess.TimeoutExpired):
                    p.wait(timeout=3)

    def _nudge(self, view: MeshView, last: dict[tuple[str, str], float]) -> list[subprocess.Popen[bytes]]:
        now = time.monotonic()
        addresses = {h.name: h.tunnel_address for h in view.hosts}
        started = []
        for pair in view.missing():
            key = (pair.a, pair.b)
            target = addresses.get(pair.b)
            if not pair.configured or target is None or now - last.get(key, 0.0) < NUDGE_EVERY_S:
                continue
            last[key] = now
            argv = [
                "ip",
                "netns",
                "exec",
                self.host(pair.a).namespace,
                "ping",
                "-n",
                "-q",
                "-c",
                "1",
                "-W",
                "1",
                str(target),
            ]
            started.append(subprocess.Popen(argv, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL))
        return started
