"""A controller runs for months: every membership change makes a new directory of node cards, and each
must be freed once no kept map uses it. They used to chain through the cache of matches a delta is
rendered from (each directory held the older ones it was diffed against), so every directory ever made
stayed: ~4 MB a change at 5,000 nodes (bench.push's RSS column grew every round)."""

from __future__ import annotations

import gc
import weakref

from controller.mesh import MAP_HISTORY, Mesh
from controller.netmap import NodeCards
from controller.topology import LinkPolicy
from tests.support import MESH_CIDR, card


def test_a_directory_no_kept_map_uses_is_freed_after_many_joins_and_deltas():
    mesh = Mesh(MESH_CIDR, LinkPolicy(), 25, [card(n) for n in range(1, 6)])
    held = {n: mesh.serial(n) for n in range(1, 6)}  # agents holding their maps
    made: list[weakref.ref[NodeCards]] = []
    for n in range(6, 46):
        mesh.version += 1
        mesh.upsert(card(n))
        made.append(weakref.ref(mesh._directory))
        for node, serial in held.items():
            assert mesh.render_update(node, serial).startswith(b'{"kind":"delta"')  # diffed: a match
        held = {node: mesh.serial(node) for node in held}
        held[n] = mesh.serial(n)
    gc.collect()
    alive = [ref for ref in made if ref() is not None]
    assert len(alive) <= MAP_HISTORY + 1, f"{len(alive)} of {len(made)} directories still alive"
    assert made[-1]() is not None  # the current one, in use
