"""What `vagrant up` gives an operator, on booted Debian systems: deploy/install.sh installs the units,
every pair of hosts pings over the tunnel, `wgmesh agent status` agrees with `wg show`, restarts keep
sessions, the controller may go away, a host powered off comes back from its cache, nothing secret
reaches the journal, and `install.sh --uninstall` leaves nothing behind.

The tests run in file order on one mesh (tests/machines/conftest.py); each leaves it whole.
"""

from __future__ import annotations

import threading

from tests.machines.mesh import (
    CONTROLLER,
    HOSTS,
    USERSPACE_HOST,
    Mesh,
    full_mesh,
    loss,
    lossless,
    pings,
    status,
    tunnel_addresses,
)
from tests.machines.nspawn import Machine
from tests.support import wait_until

UNITS = {"wgmesh-controller": CONTROLLER, "wgmesh-agent": HOSTS[0]}


def handshakes(machine: Machine) -> dict[str, int]:
    """`wg show wg0 latest-handshakes`: public key -> unix time."""
    out = machine.sh("wg show wg0 latest-handshakes").stdout
    return {key: int(when) for key, when in (line.split() for line in out.splitlines())}


def test_every_pair_of_hosts_pings_over_the_tunnel(mesh: Mesh):
    assert full_mesh(mesh)  # the fixture waited for it
    assert status(mesh.fleet[USERSPACE_HOST])["backend"] == "userspace"


def test_agent_status_agrees_with_wg_show(mesh: Mesh):
    for host in mesh.hosts():
        view = status(host)
        dump = host.sh("wg show wg0 dump").stdout.splitlines()
        device = {line.split("\t")[0]: line.split("\t") for line in dump[1:]}
        assert view["running"] and view["controller"] == "connected" and view["netmap_source"] == "controller"
        assert {p["wg_public_key"] for p in view["peers"]} == set(device)
        assert {p["name"] for p in view["peers"]} == set(HOSTS) - {host.name}
        for peer in view["peers"]:
            assert peer["endpoint"] == device[peer["wg_public_key"]][2]
            assert f"{peer['tunnel_address']}/32" in device[peer["wg_public_key"]][3].split(",")
        table = host.sh("wgmesh agent status").stdout
        assert all(name in table for name in set(HOSTS) - {host.name}), table


def test_install_twice_changes_nothing_and_a_bad_flag_changes_nothing(mesh: Mesh):
    host = mesh.fleet[HOSTS[0]]
    before = host.sh("sha256sum /etc/wgmesh/* /etc/systemd/system/wgmesh-agent.service; "
                     "systemctl show -p MainPID --value wgmesh-agent").stdout  # fmt: skip
    again = mesh.install(host, *mesh.agent_args(host))
    assert "nothing changed" in again, again
    bad = host.sh("/mnt/wgmesh-deploy/install.sh agent --controller ftp://x --token-file /root/preauth-key",
                  check=False)  # fmt: skip
    assert bad.returncode == 2
    assert bad.stderr.strip() == "install.sh: --controller 'ftp://x': expected http(s)://HOST[:PORT]"
    unknown = host.sh("/mnt/wgmesh-deploy/install.sh agent --colour red", check=False)
    assert unknown.returncode == 2 and "unknown option '--colour'" in unknown.stderr
    after = host.sh("sha256sum /etc/wgmesh/* /etc/systemd/system/wgmesh-agent.service; "
                    "systemctl show -p MainPID --value wgmesh-agent").stdout  # fmt: skip
    assert after == before


def ready_seconds(machine: Machine, unit: str) -> float:
    """From the unit's main process start to systemd seeing READY=1 (Type=notify), its last start."""
    props = dict(
        line.split("=", 1)
        for line in machine.sh(
            f"systemctl show -p ExecMainStartTimestampMonotonic -p ActiveEnterTimestampMonotonic {unit}"
        ).stdout.splitlines()
    )
    return (int(props["ActiveEnterTimestampMonotonic"]) - int(props["ExecMainStartTimestampMonotonic"])) / 1e6


def test_units_verify_clean_and_their_figures(mesh: Mesh):
    for unit, name in UNITS.items():
        machine = mesh.fleet[name]
        verify = machine.sh(f"systemd-analyze verify /etc/systemd/system/{unit}.service", check=False)
        assert verify.returncode == 0 and not verify.stderr.strip(), verify.stderr
        exposure = machine.sh(f"systemd-analyze security {unit}.service --no-pager | tail -1").stdout.strip()
        mesh.record(f"{unit} systemd-analyze security", exposure.split("exposure level for")[-1].strip())
        ready_s = ready_seconds(machine, unit)
        pid = machine.sh(f"systemctl show -p MainPID --value {unit}").stdout.strip()
        rss = machine.sh(f"grep VmRSS /proc/{pid}/status").stdout.split()[1]
        mesh.record(f"{unit} start to ready (first start)", f"{ready_s:.2f} s")
        mesh.record(f"{unit} resident memory", f"{int(rss) / 1024:.0f} MiB")


def test_the_agent_sandbox_lets_it_switch_forwarding_on_its_interface_only(mesh: Mesh):
    """ProtectKernelTunables with the per-interface forwarding keys writable (a relay needs them)."""
    h1 = mesh.fleet["h1"]
    inside = "nsenter -t $(systemctl show -p MainPID --value wgmesh-agent) -m"
    key = "/proc/sys/net/ipv4/conf/wg0/forwarding"
    h1.sh(f"{inside} sh -c 'cat {key} > {key}'")
    refused = h1.sh(
        f"{inside} sh -c 'cat /proc/sys/net/ipv4/ip_forward > /proc/sys/net/ipv4/ip_forward'", check=False
    )
    assert refused.returncode != 0 and "Read-only file system" in refused.stderr


def test_restarting_the_agent_keeps_every_session(mesh: Mesh):
    h1, h2 = mesh.fleet["h1"], mesh.fleet["h2"]
    addresses = tunnel_addresses(mesh)
    before = handshakes(h1)
    result: dict[str, str] = {}
    pinger = threading.Thread(
        target=lambda: result.update(out=pings(h2, addresses["h1"], count=40, interval=0.1))
    )
    pinger.start()
    h1.sh("systemctl restart wgmesh-agent")
    pinger.join(timeout=60)
    assert not pinger.is_alive(), "the pings during the restart did not end within 60 s"
    assert lossless(result["out"]), f"h2 -> h1 during the restart: {loss(result['out'])}"
    assert handshakes(h1) == before  # the same sessions: no new handshake was needed
    assert status(h1)["running"]
    mesh.record("wgmesh-agent restart to ready", f"{ready_seconds(h1, 'wgmesh-agent'):.2f} s")


def test_controller_away_loses_no_ping_and_a_rebooted_host_rejoins_from_cache(mesh: Mesh):
    c, h1, h3 = (mesh.fleet[n] for n in (CONTROLLER, "h1", USERSPACE_HOST))
    addresses = tunnel_addresses(mesh)
    c.sh("systemctl stop wgmesh-controller")
    try:
        result: dict[str, str] = {}
        pinger = threading.Thread(
            target=lambda: result.update(out=pings(h1, addresses["h2"], count=60, interval=0.5))
        )
        pinger.start()
        h3.power_off()
        h3.boot()
        wait_until("h3's agent to be ready from its cache",
                   lambda: h3.sh("systemctl is-active wgmesh-agent", check=False).stdout.strip() == "active", 60)  # fmt: skip
        view = status(h3)
        assert view["netmap_source"] == "cache" and view["controller"] != "connected"
        wait_until("h3 to ping h1 and h2 again with the controller away",
                   lambda: all(lossless(pings(h3, addresses[o])) for o in ("h1", "h2")), 60)  # fmt: skip
        pinger.join(timeout=90)
        assert not pinger.is_alive(), "the pings with the controller away did not end within 90 s"
        assert lossless(result["out"]), f"h1 -> h2 with the controller stopped 30 s: {loss(result['out'])}"
    finally:
        c.sh("systemctl start wgmesh-controller")
    wait_until("h3 to catch up with the controller",
               lambda: status(h3)["controller"] == "connected" and status(h3)["netmap_source"] == "controller", 90)  # fmt: skip
    wait_until("the whole mesh again", lambda: full_mesh(mesh), 60)
    mesh.record("wgmesh-controller restart to ready", f"{ready_seconds(c, 'wgmesh-controller'):.2f} s")
    mesh.record("wgmesh-agent boot (from cache) to ready", f"{ready_seconds(h3, 'wgmesh-agent'):.2f} s")


def test_the_journal_holds_no_secret_and_key_files_are_private(mesh: Mesh):
    c = mesh.controller
    secrets = [c.sh("cat /var/lib/wgmesh/controller/admin-credential").stdout.strip()]
    secrets.append(mesh.fleet["h1"].sh("cat /root/preauth-key").stdout.strip())
    for host in mesh.hosts():
        files = host.sh("find /var/lib/wgmesh /etc/wgmesh -type f").stdout.split()
        for path in files:
            mode = host.sh(f"stat -c %a {path}").stdout.strip()
            if path.endswith((".key", "credential", "preauth-key", ".toml")):
                assert mode == "600", f"{host.name}:{path} has mode {mode}"
        secrets += [
            host.sh(f"cat {path}").stdout.strip()
            for path in files
            if path.endswith((".key", "credential")) and not path.endswith(".pub")
        ]
        secrets.append(host.sh("wg show wg0 private-key").stdout.strip())
    secrets = [s for s in secrets if s]
    assert len(secrets) >= 2 + 2 * len(HOSTS), secrets and len(secrets)
    for machine in mesh.fleet.machines.values():
        journal = machine.sh(
            "journalctl -b --no-pager -o cat; journalctl --no-pager -o cat", timeout=60
        ).stdout
        assert "wgmesh" in journal
        leaked = [s[:6] + "…" for s in secrets if s in journal]
        assert not leaked, f"{machine.name}'s journal holds secrets starting {leaked}"


def test_uninstall_leaves_no_unit_interface_or_process(mesh: Mesh):
    host = mesh.fleet[USERSPACE_HOST]
    out = host.sh("/mnt/wgmesh-deploy/install.sh --uninstall").stdout
    assert "kept /var/lib/wgmesh" in out, out
    left = host.sh(
        "ls /etc/systemd/system | grep wgmesh; ip -br link | grep wg0; ls /opt/wgmesh /etc/wgmesh 2>/dev/null; "
        "ps -eo comm | grep -E 'wgmesh|wireguard-go'; systemctl list-unit-files --no-legend 'wgmesh*'; "
        "systemctl list-units --no-legend --plain 'wgmesh*' | grep -v not-found",
        check=False,
    ).stdout
    assert left == "", left
    assert host.sh("ls /var/lib/wgmesh").stdout.strip()  # kept without --purge
    again = host.sh("/mnt/wgmesh-deploy/install.sh --uninstall").stdout
    assert "nothing to remove" in again
