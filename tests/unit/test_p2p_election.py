"""Leader election on a simulated network: random delays, drops, partitions and crashes, with time and
randomness as inputs. Safety (at most one leader per term) must hold whatever the network does;
liveness (a leader soon) on a network that works."""

from __future__ import annotations

import heapq
import random

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from p2p.core.election import (
    ElectionState,
    ElectionTiming,
    Heartbeat,
    LeaderChanged,
    PreVoteReply,
    PreVoteRequest,
    Role,
    Send,
    VoteReply,
    VoteRequest,
    decode_message,
    encode_message,
)

TIMING = ElectionTiming(election_timeout_min=0.15, election_timeout_max=0.3, heartbeat_interval=0.05)
DT = 0.005


class Cluster:
    def __init__(self, n: int, seed: int, drop: float = 0.0, max_delay: float = 0.01) -> None:
        self.rng = random.Random(seed)
        self.drop = drop
        self.max_delay = max_delay
        self.now = 0.0
        self.nodes = {
            i: ElectionState(i, range(1, n + 1), now=0.0, rand=self.rng.random, timing=TIMING)
            for i in range(1, n + 1)
        }
        self.down: set[int] = set()
        self.groups: list[set[int]] | None = None  # a partition: who can talk to whom
        self.wire: list[tuple[float, int, int, int, object]] = []
        self.seq = 0
        self.leaders_by_term: dict[int, set[int]] = {}
        self.changes: list[tuple[float, int, LeaderChanged]] = []

    def can_talk(self, a: int, b: int) -> bool:
        if a in self.down or b in self.down:
            return False
        return self.groups is None or any(a in g and b in g for g in self.groups)

    def handle(self, node: int, outputs: list) -> None:
        for out in outputs:
            if isinstance(out, LeaderChanged):
                self.changes.append((self.now, node, out))
                if out.leader == node:
                    self.leaders_by_term.setdefault(out.term, set()).add(node)
            else:
                assert isinstance(out, Send)
                if self.rng.random() < self.drop or not self.can_talk(node, out.to):
                    continue
                # the message goes through the wire format, as it would between real nodes
                message = decode_message(encode_message(out.message))
                self.seq += 1
                at = self.now + self.rng.uniform(0.0005, self.max_delay)
                heapq.heappush(self.wire, (at, self.seq, out.to, node, message))

    def run(self, seconds: float) -> None:
        end = self.now + seconds
        while self.now < end:
            self.now += DT
            while self.wire and self.wire[0][0] <= self.now:
                _, _, to, sender, message = heapq.heappop(self.wire)
                if self.can_talk(sender, to):
                    self.handle(to, self.nodes[to].receive(sender, message, self.now))
            for i, node in self.nodes.items():
                if i not in self.down:
                    self.handle(i, node.tick(self.now))

    def leaders(self) -> set[int]:
        return {i for i, n in self.nodes.items() if n.role is Role.LEADER and i not in self.down}

    def agreed_leader(self, among: set[int] | None = None) -> int | None:
        members = among or set(self.nodes) - self.down
        seen = {self.nodes[i].leader for i in members}
        return seen.pop() if len(seen) == 1 else None

    def assert_safe(self) -> None:
        for term, leaders in self.leaders_by_term.items():
            assert len(leaders) <= 1, f"term {term} had leaders {sorted(leaders)}"


def test_five_nodes_elect_one_leader_that_everyone_knows():
    c = Cluster(5, seed=1)
    c.run(2.0)
    assert len(c.leaders()) == 1
    leader = c.leaders().pop()
    assert c.agreed_leader() == leader
    term = c.nodes[leader].term
    c.run(5.0)  # a healthy leader stays: no new terms
    assert c.leaders() == {leader} and c.nodes[leader].term == term
    c.assert_safe()


def test_a_crashed_leader_is_replaced_by_the_others():
    c = Cluster(5, seed=2)
    c.run(2.0)
    old = c.leaders().pop()
    c.down.add(old)
    c.run(2.0)
    [new] = c.leaders()
    assert new != old and c.agreed_leader() == new
    assert c.nodes[new].term > c.nodes[old].term
    # the old leader comes back and follows
    c.down.discard(old)
    c.run(1.0)
    assert c.leaders() == {new} and c.nodes[old].leader == new and c.nodes[old].role is Role.FOLLOWER
    c.assert_safe()


def test_a_leader_cut_off_in_a_minority_steps_down_and_the_majority_elects_another():
    c = Cluster(5, seed=3)
    c.run(2.0)
    old = c.leaders().pop()
    others = sorted(set(c.nodes) - {old})
    c.groups = [{old, others[0]}, set(others[1:])]
    c.run(2.0)
    assert c.nodes[old].role is not Role.LEADER  # check quorum: it could not reach a majority
    [new] = c.leaders()
    assert new in others[1:] and c.agreed_leader(set(others[1:])) == new
    c.groups = None
    c.run(1.0)
    assert c.leaders() == {new} and c.agreed_leader() == new
    c.assert_safe()


def test_a_node_that_was_cut_off_does_not_depose_a_healthy_leader_when_it_returns():
    c = Cluster(5, seed=4)
    c.run(2.0)
    leader = c.leaders().pop()
    term = c.nodes[leader].term
    loner = next(i for i in c.nodes if i != leader)
    c.groups = [{loner}, set(c.nodes) - {loner}]
    c.run(5.0)  # its election timer fires again and again; pre-votes go nowhere
    assert c.nodes[loner].term == term  # pre-vote: its term never moved
    c.groups = None
    c.run(1.0)
    assert c.leaders() == {leader} and c.nodes[leader].term == term
    assert c.nodes[loner].leader == leader


def test_a_single_node_leads_itself_and_two_nodes_need_both():
    solo = Cluster(1, seed=5)
    solo.run(0.5)
    assert solo.leaders() == {1}
    pair = Cluster(2, seed=6)
    pair.run(1.0)
    assert len(pair.leaders()) == 1
    pair.down.add(pair.leaders().pop())
    pair.run(2.0)
    assert pair.leaders() == set()  # one of two is not a majority


@settings(max_examples=40, deadline=None)
@given(
    n=st.integers(2, 6),
    seed=st.integers(0, 2**32),
    drop=st.floats(0, 0.4),
    max_delay=st.floats(0.001, 0.2),
    events=st.lists(
        st.tuples(st.sampled_from(["crash", "heal", "split", "join"]), st.integers(0, 10)), max_size=6
    ),
)
def test_never_two_leaders_in_one_term_whatever_the_network_does(n, seed, drop, max_delay, events):
    c = Cluster(n, seed=seed, drop=drop, max_delay=max_delay)
    for kind, k in events:
        c.run(0.4)
        node = 1 + k % n
        if kind == "crash":
            c.down.add(node)
        elif kind == "heal":
            c.down.discard(node)
        elif kind == "split":
            cut = set(c.rng.sample(sorted(c.nodes), k % n + 1))
            c.groups = [cut, set(c.nodes) - cut]
        else:
            c.groups = None
        c.assert_safe()
    c.run(1.0)
    c.assert_safe()


@given(seed=st.integers(0, 2**32), n=st.integers(3, 7))
@settings(max_examples=20, deadline=None)
def test_a_working_network_elects_a_leader_quickly(seed, n):
    c = Cluster(n, seed=seed, max_delay=0.02)
    c.run(3.0)
    assert len(c.leaders()) == 1 and c.agreed_leader() in c.leaders()


def test_messages_from_non_voters_are_ignored_and_voters_can_change():
    node = ElectionState(1, [1, 2, 3], now=0.0, rand=lambda: 0.5, timing=TIMING)
    assert node.receive(9, Heartbeat(5), 0.1) == []
    assert node.term == 0
    node.set_voters([1, 2, 3, 4, 5])
    assert node.majority == 3
    assert node.receive(5, VoteRequest(1), 0.1) == [Send(5, VoteReply(1, True))]
    assert node.receive(4, VoteRequest(1), 0.1) == [Send(4, VoteReply(1, False))]  # one vote per term


def test_pre_votes_never_move_a_term():
    node = ElectionState(1, [1, 2, 3], now=0.0, rand=lambda: 0.5, timing=TIMING)
    assert node.receive(2, PreVoteRequest(7), 0.1) == [Send(2, PreVoteReply(7, True))]
    assert node.term == 0 and node.voted_for is None


@pytest.mark.parametrize(
    "value",
    [
        None,
        [],
        ["nope", 1],
        ["vote"],
        ["vote", -1],
        ["vote", "1"],
        ["vote-reply", 1],
        ["vote-reply", 1, "yes"],
    ],
)
def test_malformed_election_messages_are_refused(value):
    with pytest.raises(ValueError):
        decode_message(value)


def test_timing_must_leave_room_for_heartbeats():
    with pytest.raises(ValueError):
        ElectionTiming(election_timeout_min=0.1, election_timeout_max=0.2, heartbeat_interval=0.1)


def test_leaders_by_term_collects_every_views_leaders_so_a_split_shows():
    from p2p.core.election import LeaderChanged, leaders_by_term

    views = [
        [LeaderChanged(1, 1), LeaderChanged(None, 1), LeaderChanged(2, 2)],
        [LeaderChanged(1, 1), LeaderChanged(3, 2)],
    ]
    assert leaders_by_term(views) == {1: {1}, 2: {2, 3}}
