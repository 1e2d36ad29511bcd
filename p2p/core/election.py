"""Raft-style leader election as a sans-I/O state machine: messages and `now` in, messages and leader
changes out. There is no log to replicate: the terms, votes and timers of Raft section 5.2, plus two
rules from its section 9.6 so a flapping node cannot depose a healthy leader:

- Pre-vote: a node whose election timer fires first asks the voters whether they WOULD vote for it in
  the next term. Only with a majority of yes does it raise its term and run a real election. A voter
  says yes only if it has not heard from a live leader within the minimum election timeout, so a node
  that was cut off and comes back cannot push the cluster into a new term.
- Check quorum: a leader that has not heard back from a majority within the minimum election timeout
  steps down, so a leader cut off in a minority partition stops claiming leadership.

Safety: a voter grants at most one vote per term and a leader needs a majority, so there is at most one
leader per term (checked by a randomized simulation in the tests). Randomness (the election timeout
jitter) is an input: `rand` returns a float in [0, 1).
"""

from __future__ import annotations

from collections.abc import Callable, Iterable
from dataclasses import dataclass
from enum import Enum
from typing import Any


class Role(Enum):
    FOLLOWER = "follower"
    PRE_CANDIDATE = "pre-candidate"
    CANDIDATE = "candidate"
    LEADER = "leader"


# --- messages (term is the sender's term, or the proposed term for pre-votes) ------------------------------


@dataclass(frozen=True, slots=True)
class PreVoteRequest:
    term: int  # the term the sender would stand in: its own term + 1


@dataclass(frozen=True, slots=True)
class PreVoteReply:
    term: int  # the proposed term this answers
    granted: bool


@dataclass(frozen=True, slots=True)
class VoteRequest:
    term: int


@dataclass(frozen=True, slots=True)
class VoteReply:
    term: int
    granted: bool


@dataclass(frozen=True, slots=True)
class Heartbeat:
    term: int


@dataclass(frozen=True, slots=True)
class HeartbeatReply:
    term: int


ElectionMessage = PreVoteRequest | PreVoteReply | VoteRequest | VoteReply | Heartbeat | HeartbeatReply
_KINDS: dict[str, type[Any]] = {
    "prevote": PreVoteRequest,
    "prevote-reply": PreVoteReply,
    "vote": VoteRequest,
    "vote-reply": VoteReply,
    "heartbeat": Heartbeat,
    "heartbeat-reply": HeartbeatReply,
}
_NAMES = {cls: name for name, cls in _KINDS.items()}


def encode_message(message: ElectionMessage) -> list[Any]:
    """The message as a msgpack/JSON-friendly list: [kind, term] or [kind, term, granted]."""
    if isinstance(message, PreVoteReply | VoteReply):
        return [_NAMES[type(message)], message.term, message.granted]
    return [_NAMES[type(message)], message.term]


def decode_message(value: object) -> ElectionMessage:
    """The message in `value`; ValueError naming what is wrong."""
    if not isinstance(value, list) or not value or value[0] not in _KINDS:
        raise ValueError("election message must be [kind, term, ...] with a known kind")
    cls = _KINDS[value[0]]
    with_grant = cls in (PreVoteReply, VoteReply)
    if len(value) != (3 if with_grant else 2):
        raise ValueError(f"election message {value[0]!r} has {len(value)} fields")
    term = value[1]
    if type(term) is not int or term < 0:
        raise ValueError("election term must be a non-negative integer")
    if with_grant:
        if type(value[2]) is not bool:
            raise ValueError("election reply must say granted true or false")
        result: ElectionMessage = cls(term, value[2])
        return result
    single: ElectionMessage = cls(term)
    return single


# --- outputs ------------------------------------------------------------------------------------------------


@dataclass(frozen=True, slots=True)
class Send:
    to: int
    message: ElectionMessage


@dataclass(frozen=True, slots=True)
class LeaderChanged:
    leader: int | None  # None: no known leader (an election is on)
    term: int


Output = Send | LeaderChanged


@dataclass(frozen=True, slots=True)
class ElectionTiming:
    election_timeout_min: float = 1.5
    election_timeout_max: float = 3.0
    heartbeat_interval: float = 0.5

    def __post_init__(self) -> None:
        if not 0 < self.heartbeat_interval < self.election_timeout_min <= self.election_timeout_max:
            raise ValueError("need 0 < heartbeat_interval < election_timeout_min <= election_timeout_max")


class ElectionState:
    """One voter's view. Call `tick(now)` often (at least every heartbeat interval / 2) and `receive`
    for every election message from a voter; send every `Send` it returns."""

    def __init__(
        self,
        node_id: int,
        voters: Iterable[int],
        *,
        now: float,
        rand: Callable[[], float],
        timing: ElectionTiming | None = None,
    ) -> None:
        self.node_id = node_id
        self.timing = timing or ElectionTiming()
        self._rand = rand
        self.voters: frozenset[int] = frozenset()
        self.set_voters(voters)
        self.role = Role.FOLLOWER
        self.term = 0
        self.voted_for: int | None = None
        self.leader: int | None = None
        self._leader_heard = float("-inf")  # when we last heard from the current leader
        self._votes: set[int] = set()
        self._acks: dict[int, float] = {}
        self._became_leader = 0.0
        self._next_heartbeat = 0.0
        self._deadline = 0.0
        self._reset_deadline(now)

    # --- inputs ---------------------------------------------------------------------------------------

    def set_voters(self, voters: Iterable[int]) -> None:
        """The nodes taking part (this node is always one). Takes effect for the next decisions."""
        self.voters = frozenset(voters) | {self.node_id}

    @property
    def majority(self) -> int:
        return len(self.voters) // 2 + 1

    def tick(self, now: float) -> list[Output]:
        if self.role is Role.LEADER:
            out: list[Output] = []
            if self._lost_quorum(now):
                out += self._become_follower(now, leader=None)
                return out
            if now >= self._next_heartbeat:
                self._next_heartbeat = now + self.timing.heartbeat_interval
                out += self._to_others(Heartbeat(self.term))
            return out
        if now < self._deadline:
            return []
        self._reset_deadline(now)
        if self.majority == 1:
            return self._become_candidate(now)
        # Pre-vote first: would a majority vote for us in the next term?
        self.role = Role.PRE_CANDIDATE
        self._votes = {self.node_id}
        out = self._leader_lost()
        out += self._to_others(PreVoteRequest(self.term + 1))
        return out

    def receive(self, sender: int, message: ElectionMessage, now: float) -> list[Output]:
        if sender not in self.voters or sender == self.node_id:
            return []
        # Pre-votes speak of a hypothetical term: they never move ours.
        if isinstance(message, PreVoteRequest):
            return [Send(sender, PreVoteReply(message.term, self._would_vote(message.term, now)))]
        if isinstance(message, PreVoteReply):
            return self._on_pre_vote_reply(sender, message, now)
        out: list[Output] = []
        if message.term > self.term:
            if isinstance(message, VoteRequest) and self._leader_alive(now):
                # A live leader exists: do not let a disruptive candidate move our term (leader stickiness).
                return [Send(sender, VoteReply(self.term, False))]
            out += self._step_up_term(message.term, now)
        if isinstance(message, VoteRequest):
            out += self._on_vote_request(sender, message, now)
        elif isinstance(message, VoteReply):
            out += self._on_vote_reply(sender, message, now)
        elif isinstance(message, Heartbeat):
            out += self._on_heartbeat(sender, message, now)
        else:
            if self.role is Role.LEADER and message.term == self.term:
                self._acks[sender] = now
        return out

    # --- rules ----------------------------------------------------------------------------------------

    def _would_vote(self, proposed_term: int, now: float) -> bool:
        return proposed_term > self.term and not self._leader_alive(now)

    def _leader_alive(self, now: float) -> bool:
        if self.role is Role.LEADER:
            return True
        return self.leader is not None and now - self._leader_heard < self.timing.election_timeout_min

    def _on_pre_vote_reply(self, sender: int, reply: PreVoteReply, now: float) -> list[Output]:
        if self.role is not Role.PRE_CANDIDATE or reply.term != self.term + 1 or not reply.granted:
            return []
        self._votes.add(sender)
        if len(self._votes) >= self.majority:
            return self._become_candidate(now)
        return []

    def _on_vote_request(self, sender: int, request: VoteRequest, now: float) -> list[Output]:
        granted = (
            request.term == self.term and self.voted_for in (None, sender) and self.role is not Role.LEADER
        )
        if granted:
            self.voted_for = sender
            self._reset_deadline(now)
        return [Send(sender, VoteReply(self.term, granted))]

    def _on_vote_reply(self, sender: int, reply: VoteReply, now: float) -> list[Output]:
        if self.role is not Role.CANDIDATE or reply.term != self.term or not reply.granted:
            return []
        self._votes.add(sender)
        if len(self._votes) >= self.majority:
            return self._become_leader(now)
        return []

    def _on_heartbeat(self, sender: int, heartbeat: Heartbeat, now: float) -> list[Output]:
        if heartbeat.term < self.term:
            return [Send(sender, HeartbeatReply(self.term))]  # tells a stale leader to step down
        out: list[Output] = []
        if self.role is not Role.FOLLOWER:
            self.role = Role.FOLLOWER
        self._leader_heard = now
        self._reset_deadline(now)
        if self.leader != sender:
            self.leader = sender
            out.append(LeaderChanged(sender, self.term))
        out.append(Send(sender, HeartbeatReply(self.term)))
        return out

    # --- transitions ----------------------------------------------------------------------------------

    def _step_up_term(self, term: int, now: float) -> list[Output]:
        self.term = term
        self.voted_for = None
        return self._become_follower(now, leader=None)

    def _become_follower(self, now: float, leader: int | None) -> list[Output]:
        was_leader = self.role is Role.LEADER
        self.role = Role.FOLLOWER
        self._votes = set()
        if was_leader:
            self._reset_deadline(now)
        out = self._leader_lost() if leader is None else []
        return out

    def _leader_lost(self) -> list[Output]:
        if self.leader is None:
            return []
        self.leader = None
        return [LeaderChanged(None, self.term)]

    def _become_candidate(self, now: float) -> list[Output]:
        self.term += 1
        self.role = Role.CANDIDATE
        self.voted_for = self.node_id
        self._votes = {self.node_id}
        self._reset_deadline(now)
        out = self._leader_lost()
        if len(self._votes) >= self.majority:
            return out + self._become_leader(now)
        return out + self._to_others(VoteRequest(self.term))

    def _become_leader(self, now: float) -> list[Output]:
        self.role = Role.LEADER
        self.leader = self.node_id
        self._became_leader = now
        self._acks = {}
        self._next_heartbeat = now + self.timing.heartbeat_interval
        return [LeaderChanged(self.node_id, self.term), *self._to_others(Heartbeat(self.term))]

    def _lost_quorum(self, now: float) -> bool:
        window = self.timing.election_timeout_min
        if now - self._became_leader < window:
            return False
        heard = sum(1 for voter, at in self._acks.items() if voter in self.voters and now - at < window)
        return heard + 1 < self.majority

    def _reset_deadline(self, now: float) -> None:
        t = self.timing
        self._deadline = (
            now + t.election_timeout_min + (t.election_timeout_max - t.election_timeout_min) * self._rand()
        )

    def _to_others(self, message: ElectionMessage) -> list[Output]:
        return [Send(voter, message) for voter in sorted(self.voters) if voter != self.node_id]


def leaders_by_term(views: Iterable[Iterable[LeaderChanged]]) -> dict[int, set[int]]:
    """Every leader any view saw, per term: the safety property is that each set has one member. A
    view is one voter's sequence of leader changes (`LeaderElection.changes()`, `wgmesh p2p elect`)."""
    seen: dict[int, set[int]] = {}
    for view in views:
        for change in view:
            if change.leader is not None:
                seen.setdefault(change.term, set()).add(change.leader)
    return seen
