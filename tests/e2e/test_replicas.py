"""Controller replicas on PostgreSQL, for real: a private PostgreSQL in the lab's underlay, two
replicas each in a namespace of its own (one CA for both, shared through the database), three hosts
whose agents know both URLs.

- `kill -9` of the replica the agents use while admin writes go on: every write acknowledged before,
  during and after is there afterwards, the agents move to the other replica and get the next map
  from it, and not one ping between the hosts is lost.
- A replica cut from PostgreSQL says so on /v1/health (503) and the agents move to the other.

The tests share one lab and run in file order."""

from __future__ import annotations

import json
import threading
import time

import pytest

from lab.controller_admin import read_nodes
from lab.instance import Lab
from lab.postgres import find_bindir
from tests.e2e.harness import logs, ping_counts, running_lab, start_pings
from tests.support import wait_until

pytestmark = [pytest.mark.root, pytest.mark.scenario]
NAME = "e2eha"
HOSTS = ["h1", "h2", "h3"]


@pytest.fixture(scope="module")
def lab():
    if find_bindir() is None:
        pytest.skip("needs PostgreSQL's server binaries: `make test` installs them (apt: postgresql)")
    with running_lab(NAME, 3, store="postgres", replicas=2) as lab:
        yield lab


def replicas_in_use(lab: Lab) -> dict[str, str | None]:
    return {h: lab.replica_in_use(h) for h in HOSTS}


def policy(port: int) -> str:
    """Every node may reach every other on ICMP (the pings) and one TCP port that each write changes,
    so each write gives every host a new map."""
    return f'[[rules]]\nname = "all"\nfrom = ["*"]\nto = ["*"]\nports = ["icmp", "tcp/{port}"]\n'


class AdminWrites(threading.Thread):
    """`wgmesh policy set` in a loop through the admin CLI (given both replicas' URLs), keeping the
    version each acknowledged write made."""

    def __init__(self, lab: Lab) -> None:
        super().__init__(daemon=True)
        self.lab = lab
        self.acknowledged: list[int] = []
        self.refused: list[str] = []
        self.halt = threading.Event()

    def run(self) -> None:
        port = 20000
        while not self.halt.is_set():
            port += 1
            path = self.lab.layout.dir / f"policy-{port}.toml"
            path.write_text(policy(port))
            done = self.lab.exec("underlay", ["wgmesh", "policy", "set", str(path), "--json"], timeout=60)
            if done.returncode == 0:
                self.acknowledged.append(int(json.loads(done.stdout)["version"]))
            else:
                self.refused.append(done.stderr.strip())

    def wait_for(self, count: int, timeout: float) -> None:
        wait_until(f"{count} acknowledged admin writes", lambda: len(self.acknowledged) >= count, timeout)


def current_maps(lab: Lab) -> dict[str, int]:
    """The map serial the controller holds for each host (what it sends), from the replica that
    answers (the admin reads go to the first that does)."""
    return {n.name: n.serial for n in read_nodes(lab) if n.name in HOSTS and n.serial is not None}


def held_maps(lab: Lab) -> dict[str, int | None]:
    return {h: (s.serial if (s := lab.agent_status(h)) else None) for h in HOSTS}


def every_agent_holds(lab: Lab, serials: dict[str, int]) -> bool:
    return held_maps(lab) == serials


def test_a_killed_replica_loses_no_acknowledged_write_and_no_ping(lab: Lab):
    wait_until("every agent to say which replica it uses", lambda: all(replicas_in_use(lab).values()), 30)
    victim = lab.replica_in_use("h1")
    assert victim is not None
    survivor = next(r.name for r in lab.replicas if r.name != victim)
    pings = start_pings(lab, [("h1", "h2"), ("h2", "h3"), ("h3", "h1")], seconds=40, interval=0.2)
    writes = AdminWrites(lab)
    writes.start()
    try:
        writes.wait_for(2, 60)
        killed_at = time.monotonic()
        assert lab.stop_replica(victim, kill=True)
        wait_until(
            f"every agent to move to {survivor}",
            lambda: set(replicas_in_use(lab).values()) == {survivor},
            30,
            show=lambda: f"{replicas_in_use(lab)}\n{logs(lab)}",
        )
        moved = time.monotonic() - killed_at
        before = len(writes.acknowledged)
        writes.wait_for(before + 2, 60)  # writes go on through the survivor
    finally:
        writes.halt.set()
        writes.join(timeout=90)
    # The survivor's maps carry the last write; every agent gets it from there.
    changed_at = time.monotonic()
    wait_until(
        "every agent to hold the survivor's current map",
        lambda: every_agent_holds(lab, current_maps(lab)),
        30,
        show=lambda: f"controller {current_maps(lab)}, agents {held_maps(lab)}",
    )
    print(f"\nagents on {survivor} {moved:.1f} s after kill -9 of {victim}; current maps after "
          f"{time.monotonic() - changed_at:.1f} s; {len(writes.acknowledged)} writes acknowledged, "
          f"{len(writes.refused)} refused")  # fmt: skip
    history = lab.exec("underlay", ["wgmesh", "policy", "history", "--json"])
    assert history.returncode == 0, history.stderr
    kept = {entry["version"] for entry in json.loads(history.stdout)}
    assert set(writes.acknowledged) <= kept, f"acknowledged but lost: {set(writes.acknowledged) - kept}"
    for pair, (sent, received) in ping_counts(pings).items():
        assert sent >= 100 and received == sent, f"{pair}: {sent - received} of {sent} pings lost"
    lab.start_replica(victim)


def test_a_replica_cut_from_postgresql_says_so_and_the_agents_move_away(lab: Lab):
    wait_until("every agent to use one replica", lambda: len(set(replicas_in_use(lab).values())) == 1, 30)
    cut = lab.replica_in_use("h1")
    assert cut is not None
    other = next(r.name for r in lab.replicas if r.name != cut)
    assert lab.replica_health(other) == 200
    lab.cut_from_database(cut)
    try:
        wait_until(f"{cut} to answer 503 on /v1/health", lambda: lab.replica_health(cut) == 503, 60)
        wait_until(
            f"every agent to move to {other}",
            lambda: set(replicas_in_use(lab).values()) == {other},
            60,
            show=lambda: f"{replicas_in_use(lab)}\n{logs(lab)}",
        )
        assert lab.replica_health(other) == 200
    finally:
        lab.heal_database(cut)
    wait_until(f"{cut} to be healthy again", lambda: lab.replica_health(cut) == 200, 60)
