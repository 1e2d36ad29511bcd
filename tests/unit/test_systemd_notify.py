"""sd_notify without libsystemd: READY=1 reaches $NOTIFY_SOCKET once; without it nothing happens."""

from __future__ import annotations

import socket

from wgmesh.systemd import Notifier, under_systemd


def test_ready_is_sent_once_to_the_notify_socket(tmp_path):
    path = tmp_path / "notify"
    with socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM) as server:
        server.bind(str(path))
        server.settimeout(5)
        notifier = Notifier({"NOTIFY_SOCKET": str(path)})
        notifier.ready("listening")
        notifier.ready("again")
        notifier.stopping()
        assert server.recv(4096) == b"READY=1\nSTATUS=listening"
        assert server.recv(4096) == b"STOPPING=1"


def test_abstract_socket_names_are_understood():
    name = f"wgmesh-test-{id(object())}"
    with socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM) as server:
        server.bind("\0" + name)
        server.settimeout(5)
        assert Notifier({"NOTIFY_SOCKET": "@" + name}).send("READY=1")
        assert server.recv(4096) == b"READY=1"


def test_outside_systemd_nothing_is_sent(tmp_path):
    assert not Notifier({}).send("READY=1")
    assert not Notifier({"NOTIFY_SOCKET": str(tmp_path / "gone")}).send("READY=1")
    assert under_systemd({"INVOCATION_ID": "abc"}) and not under_systemd({})
