"""The p2p side of the policy: the directory carries tags and message rights (from the map, through
the file, back), and the policy middleware every node installs refuses what the policy forbids."""

from __future__ import annotations

import dataclasses
from ipaddress import IPv4Address

import pytest

from keys.types import IdentityPrivateKey
from p2p.core.admission import Delivery
from p2p.core.directory import Directory, DirectoryEntry
from p2p.core.message import Message
from p2p.directory import directory_from_netmap, directory_json, parse_directory
from p2p.middleware import Refused, authorize_by_policy, chain
from wire.models import NetMap

KEY = IdentityPrivateKey.generate().public_key()


def entry(node_id: int, tags: set[str]) -> DirectoryEntry:
    return DirectoryEntry(
        node_id, f"n{node_id}", IPv4Address(f"100.64.0.{node_id}"), "node", KEY, tags=frozenset(tags)
    )


def delivery(sender: DirectoryEntry, type_: str) -> Delivery:
    return Delivery(Message(type_, {}, 0.0, sender.node_id, bytes(16), 5), sender, sender.node_id, False)


async def echo(message: Message) -> str:
    return message.type


SUP, WORKER = entry(2, {"supervisor"}), entry(3, {"worker"})


async def test_the_policy_middleware_follows_the_directory():
    current = Directory.of(
        entry(1, {"worker"}), [SUP, WORKER], messages={"task_assignment": ("tag:supervisor",)}
    )
    handle = chain(echo, [authorize_by_policy(lambda: current)])
    assert await handle(delivery(SUP, "task_assignment")) == "task_assignment"
    assert await handle(delivery(WORKER, "result")) == "result"  # an unlisted type is open
    with pytest.raises(Refused) as e:
        await handle(delivery(WORKER, "task_assignment"))
    assert e.value.counter == "unauthorized" and "tag:supervisor" in e.value.reason
    current = dataclasses.replace(current, messages={"task_assignment": ("tag:supervisor", "node:n3")})
    assert await handle(delivery(WORKER, "task_assignment")) == "task_assignment"
    current = dataclasses.replace(current, messages=None)  # no policy: everything open
    assert await handle(delivery(entry(9, set()), "task_assignment")) == "task_assignment"


def test_the_directory_carries_tags_and_rights_from_the_map():
    peer = {
        "node_id": 2,
        "name": "n2",
        "role": "supervisor",
        "wg_public_key": "xTIBA5rboUvnH4htodjb6e697QjLERt1NAB4mZqp8Dg=",
        "identity_public_key": KEY.base64(),
        "tunnel_address": "100.64.0.2",
        "allowed_ips": ["100.64.0.2/32"],
        "tags": ["supervisor"],
    }
    netmap = NetMap.model_validate(
        {
            "serial": 3,
            "node": {
                "node_id": 1,
                "name": "n1",
                "role": "worker",
                "tunnel_address": "100.64.0.1",
                "mesh_cidr": "100.64.0.0/24",
                "listen_port": 51820,
                "tags": ["worker"],
            },
            "peers": [peer],
            "routes": [],
            "forward": False,
            "policy": {
                "version": 4,
                "inbound": [],
                "outbound": [],
                "messages": {"task_assignment": ["tag:supervisor"]},
            },
        }
    )
    directory = directory_from_netmap(netmap, KEY)
    assert directory.own.tags == {"worker"} and directory.peers[2].tags == {"supervisor"}
    assert directory.messages == {"task_assignment": ("tag:supervisor",)}
    again = parse_directory(directory_json(directory))
    assert again == directory
    plain = directory_from_netmap(netmap.model_copy(update={"policy": None}), KEY)
    assert plain.messages is None and "messages" not in directory_json(plain)
