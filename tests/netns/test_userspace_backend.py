"""The userspace backend's process model against real wireguard-go: start, attach, stop exactly our
process, same interface name in two namespaces, real errors, crash recovery; and kernel-module detection
(on both backends' machines: `auto` picks the kernel module where there is one)."""

from __future__ import annotations

import os
import signal
from pathlib import Path

import pytest

from agent.backends import BackendError, open_backend
from agent.backends.kernel import PROBE_IFNAME, KernelBackend, kernel_module_present, link_kind_supported
from agent.backends.userspace import UserspaceBackend
from agent.device import DeviceConfig, DeviceUpdate, PeerConfig, PeerUpdate
from agent.reconcile import diff
from keys.types import WireGuardPrivateKey
from tests.netns.harness import WG_IF, Namespaces, in_ns, run
from tests.support import wait_until


def links(ns: str) -> set[str]:
    out = in_ns(ns, "ip", "-o", "link", "show").stdout
    return {line.split(":")[1].strip().split("@")[0] for line in out.splitlines()}


def cmdline(pid: int) -> list[str]:
    return Path(f"/proc/{pid}/cmdline").read_bytes().decode().split("\0")[:-1]


def test_create_attach_delete(namespaces: Namespaces) -> None:
    ns = namespaces.add("wgt2u1")
    backend = namespaces.backend(ns)
    assert not backend.exists(WG_IF)

    backend.create(WG_IF)
    pid = backend.pid(WG_IF)
    assert pid is not None
    argv = cmdline(pid)
    assert argv[0].endswith("wireguard-go") and argv[1:] == ["-f", WG_IF]
    assert backend.socket_path(WG_IF) == backend.run_dir / f"{WG_IF}.sock"  # type: ignore[operator]
    assert backend.socket_path(WG_IF).is_socket()
    assert WG_IF in links(ns)
    assert not Path(f"/var/run/wireguard/{WG_IF}.sock").exists()  # private run dir, not the system one

    backend.create(WG_IF)  # attaches: same process
    assert backend.pid(WG_IF) == pid

    backend.delete(WG_IF)
    assert not Path(f"/proc/{pid}").exists()  # ended and reaped
    assert not backend.exists(WG_IF)
    assert not backend.socket_path(WG_IF).exists()
    wait_until("the tun device to go", lambda: WG_IF not in links(ns), 5)
    backend.delete(WG_IF)  # missing: no-op


def test_same_interface_name_in_two_namespaces(namespaces: Namespaces) -> None:
    one, two = namespaces.add("wgt2u2"), namespaces.add("wgt2u3")
    b1, b2 = namespaces.backend(one), namespaces.backend(two)
    b1.create(WG_IF)
    b2.create(WG_IF)
    assert b1.pid(WG_IF) != b2.pid(WG_IF)
    k1, k2 = WireGuardPrivateKey.generate(), WireGuardPrivateKey.generate()
    b1.apply(WG_IF, diff(b1.read(WG_IF), DeviceConfig.build(k1, listen_port=51820)).update)
    b2.apply(WG_IF, diff(b2.read(WG_IF), DeviceConfig.build(k2, listen_port=51820)).update)
    assert b1.read(WG_IF).private_key == k1
    assert b2.read(WG_IF).private_key == k2
    b1.delete(WG_IF)
    assert b2.read(WG_IF).private_key == k2  # deleting one leaves the other running


def test_real_errors_are_clear_and_change_nothing(namespaces: Namespaces) -> None:
    ns = namespaces.add("wgt2u4")
    backend = namespaces.backend(ns)
    backend.create(WG_IF)
    backend.create("wgt2wg2")
    try:
        key = WireGuardPrivateKey.generate()
        backend.apply(WG_IF, diff(None, DeviceConfig.build(key, listen_port=51820)).update)
        with pytest.raises(BackendError, match=r"errno 98 \(EADDRINUSE.*listen port is already in use"):
            backend.apply("wgt2wg2", DeviceUpdate(listen_port=51820))

        peer = WireGuardPrivateKey.generate().public_key()
        named = DeviceUpdate(upsert=(PeerUpdate(PeerConfig(peer, (), endpoint="peer.example:51820")),))
        with pytest.raises(BackendError, match="host name; resolve it"):
            backend.apply(WG_IF, named)
        assert backend.read(WG_IF).peers == {}
    finally:
        backend.delete("wgt2wg2")

    with pytest.raises(BackendError, match="invalid interface name"):
        backend.create("a/b")
    with pytest.raises(BackendError, match="invalid interface name"):
        backend.create("much-too-long-name")


def test_a_missing_namespace_is_a_clear_start_error(tmp_path: Path) -> None:
    backend = UserspaceBackend(netns="wgt2-no-such-ns", run_dir=tmp_path, start_timeout=5)
    with pytest.raises(
        BackendError, match=r"wireguard-go for wgt2wg exited with status \d+: .*wgt2-no-such-ns"
    ):
        backend.create(WG_IF)
    assert not Path("/run/netns/wgt2-no-such-ns").exists()


def test_a_crashed_process_is_restarted_by_create(namespaces: Namespaces) -> None:
    ns = namespaces.add("wgt2u5")
    backend = namespaces.backend(ns)
    backend.create(WG_IF)
    pid = backend.pid(WG_IF)
    assert pid is not None
    os.kill(pid, signal.SIGKILL)  # our own child
    wait_until("the socket to stop answering", lambda: not backend.exists(WG_IF), 5)
    backend.create(WG_IF)
    assert backend.pid(WG_IF) not in (None, pid)
    assert backend.read(WG_IF).peers == {}


def test_delete_without_pidfile_stops_it_through_its_socket(namespaces: Namespaces) -> None:
    ns = namespaces.add("wgt2u6")
    backend = namespaces.backend(ns)
    backend.create(WG_IF)
    pid = backend.pid(WG_IF)
    assert pid is not None
    backend.pidfile(WG_IF).unlink()  # as if someone else had started it
    other = UserspaceBackend(netns=ns, run_dir=backend.run_dir)
    other.delete(WG_IF)
    assert not other.exists(WG_IF)
    wait_until("wireguard-go to remove its interface", lambda: WG_IF not in links(ns), 5)


@pytest.mark.kernel_tier
def test_kernel_module_detection_creates_nothing(namespaces: Namespaces, wg_backend: str) -> None:
    ns = namespaces.add("wgt2k1")
    before = links(ns)
    assert link_kind_supported("veth", netns=ns) is True  # EINVAL: the kind exists
    assert link_kind_supported("wgt2-no-such-kind", netns=ns) is False  # EOPNOTSUPP
    assert links(ns) == before
    assert PROBE_IFNAME not in run("ip", "-o", "link", "show").stdout
    kernel = KernelBackend(netns=ns)
    assert not kernel.exists(WG_IF)
    if wg_backend == "kernel":
        assert kernel_module_present(), "the kernel tier runs on a kernel without the WireGuard module"
    if kernel_module_present():
        assert link_kind_supported("wireguard", netns=ns) is True
        assert links(ns) == before
        assert open_backend("auto").name == "kernel"
        assert open_backend("auto", netns=ns).name == "kernel"
        kernel.create(WG_IF)
        assert kernel.exists(WG_IF) and links(ns) == {*before, WG_IF}
        kernel.delete(WG_IF)
        assert links(ns) == before
        return
    assert link_kind_supported("wireguard", netns=ns) is False
    with pytest.raises(BackendError, match="no WireGuard module: `modprobe wireguard`"):
        kernel.create(WG_IF)
    assert links(ns) == before
    assert open_backend("auto").name == "userspace"
    with pytest.raises(BackendError, match="no WireGuard module"):
        open_backend("kernel")
