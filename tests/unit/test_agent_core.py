"""The agent core (agent/core.py) as scenarios with time as an input: each step feeds one input at a
given `now` and checks the actions that come out, the way the driver would see them."""

from __future__ import annotations

from datetime import UTC, datetime
from ipaddress import ip_address, ip_network

import pytest

from agent.actions import (
    Action,
    Applied,
    Apply,
    Crashed,
    ForgetMap,
    Log,
    MapAnswered,
    Measure,
    Measured,
    Poll,
    PollFailed,
    PollRefused,
    Reported,
    ReportLinks,
    ReportRefused,
    Resolve,
    Resolved,
    SaveCache,
    Stop,
    WriteDirectory,
    WriteStatus,
)
from agent.backoff import RetryBackoff
from agent.core import EXIT_REMOVED, AgentCore, CoreSettings
from agent.device import PeerConfig
from agent.links import ProbeResult
from agent.reconcile import PeerAdded
from agent.state import AgentState
from keys.types import IdentityPrivateKey, WireGuardPrivateKey
from wire.delta import netmap_delta
from wire.models import NetMap, Peer, Route, SelfNode

T0 = 1_800_000_000.0
PROBE_S, POLL_S = 10.0, 30.0
KEYS = {n: WireGuardPrivateKey.generate().public_key() for n in range(2, 6)}
NODE = AgentState(
    node_id=1,
    name="h1",
    tunnel_address=ip_address("10.99.0.1"),
    mesh_cidr=ip_network("10.99.0.0/16"),
    controller_url="http://controller",
    interface="wg0",
    backend="fake",
    listen_port=51820,
    enrolled_at=datetime(2026, 11, 24, tzinfo=UTC),
)


def peer(n: int, endpoint: str | None = None) -> Peer:
    return Peer(
        node_id=n,
        name=f"h{n}",
        role="node",
        wg_public_key=KEYS[n],
        identity_public_key=IdentityPrivateKey.generate().public_key(),
        tunnel_address=ip_address(f"10.99.0.{n}"),
        endpoints=[endpoint or f"198.18.0.{n}:51820"],
        allowed_ips=[ip_network(f"10.99.0.{n}/32")],
    )


def netmap(serial: int, *peers: Peer) -> NetMap:
    return NetMap(
        serial=serial,
        node=SelfNode(
            node_id=1,
            name="h1",
            role="node",
            tunnel_address=ip_address("10.99.0.1"),
            mesh_cidr=ip_network("10.99.0.0/16"),
            listen_port=51820,
        ),
        peers=list(peers),
        routes=[
            Route(destination=p.node_id, destination_address=p.tunnel_address, via=p.node_id) for p in peers
        ],
        forward=False,
    )


MAP1 = netmap(1, peer(2))
MAP2 = netmap(2, peer(2), peer(3))
MAP3 = netmap(3, peer(2), peer(3), peer(4))


def make_core(**settings: float) -> AgentCore:
    backoff = RetryBackoff(initial_s=1.0, max_s=8.0, jitter=0.0)
    core_settings = CoreSettings(**{"probe_interval_s": PROBE_S, "poll_timeout_s": POLL_S, **settings})
    return AgentCore(NODE, "fake", WireGuardPrivateKey.generate(), core_settings, backoff, pid=42)


def of(kind: type, actions: list[Action]) -> list:
    return [a for a in actions if isinstance(a, kind)]


def events(actions: list[Action]) -> list[str]:
    return [a.event for a in actions if isinstance(a, Log)]


def only(kind: type, actions: list[Action]):
    found = of(kind, actions)
    assert len(found) == 1, (kind.__name__, actions)
    return found[0]


def served(core: AgentCore, now: float = T0) -> None:
    """Started without a cache and serving: the first full map asked for and applied."""
    core.start(None, now)
    assert of(Poll, core.serve(now)) == [Poll(0, 0.0)]
    apply = only(Apply, core.handle(MapAnswered(MAP1), now))
    core.handle(Applied(device_changes=(PeerAdded(KEYS[2], PeerConfig(KEYS[2])),)), now)
    assert core.netmap == MAP1 and apply.desired.routes == (NODE.mesh_cidr,)


def test_the_cached_map_is_applied_at_start_and_not_saved_again():
    core = make_core()
    apply = only(Apply, core.start(MAP1, T0))
    assert list(apply.desired.device.peers) == [KEYS[2]]
    actions = core.handle(Applied(), T0)
    assert events(actions) == ["netmap_applied"]
    assert of(SaveCache, actions) == [] and of(WriteDirectory, actions) == [WriteDirectory(MAP1, True)]
    status = only(WriteStatus, actions).status
    assert (status.netmap_source, status.serial, status.controller) == ("cache", 1, "connecting")
    assert core.deadline() is None, "nothing is due before serve"


def test_following_the_controller_long_polls_from_the_map_held():
    core = make_core()
    core.start(None, T0)
    assert core.serve(T0) == [Poll(0, 0.0)]
    actions = core.handle(MapAnswered(MAP1), T0 + 1)
    assert events(actions) == ["controller_connected"]
    assert of(Poll, actions) == [Poll(1, POLL_S)]
    assert len(of(Apply, actions)) == 1
    done = core.handle(Applied(device_changes=(PeerAdded(KEYS[2], PeerConfig(KEYS[2])),)), T0 + 1)
    assert events(done) == ["peer_added", "netmap_applied"]
    assert (
        only(Log, [a for a in done if isinstance(a, Log) and a.event == "peer_added"]).fields["peer"] == "h2"
    )
    assert of(SaveCache, done) == [SaveCache(MAP1)]
    # nothing newer within the wait: poll again from the same map
    assert core.handle(MapAnswered(None), T0 + 31) == [Poll(1, POLL_S)]
    # a delta is turned into the full map it stands for
    actions = core.handle(MapAnswered(netmap_delta(MAP1, MAP2)), T0 + 40)
    assert of(Poll, actions) == [Poll(2, POLL_S)]
    assert set(only(Apply, actions).desired.device.peers) == {KEYS[2], KEYS[3]}


def test_a_delta_for_another_map_is_dropped_and_the_full_map_asked_for():
    core = make_core()
    served(core)
    actions = core.handle(MapAnswered(netmap_delta(MAP2, MAP3)), T0 + 1)
    assert events(actions) == ["netmap_delta_dropped"]
    assert of(Poll, actions) == [Poll(0, 0.0)] and of(Apply, actions) == []


def test_maps_arriving_during_an_apply_are_applied_after_it_newest_first():
    core = make_core()
    served(core)
    first = core.handle(MapAnswered(MAP2), T0 + 1)
    assert len(of(Apply, first)) == 1
    assert of(Apply, core.handle(MapAnswered(netmap_delta(MAP2, MAP3)), T0 + 2)) == []
    after = core.handle(Applied(), T0 + 3)
    assert set(only(Apply, after).desired.device.peers) == {KEYS[2], KEYS[3], KEYS[4]}
    core.handle(Applied(), T0 + 4)
    assert core.netmap == MAP3


def test_a_refused_apply_is_logged_once_and_retried_on_its_own_timer():
    core = make_core(apply_retry_s=5.0)
    served(core)
    core.handle(MapAnswered(MAP2), T0 + 1)
    failed = core.handle(Applied(error="[Errno 1] Operation not permitted"), T0 + 1)
    assert events(failed) == ["apply_failed"]
    assert only(WriteStatus, failed).status.last_error == "[Errno 1] Operation not permitted"
    assert core.deadline() == T0 + 6
    assert of(Apply, core.tick(T0 + 5.9)) == []
    again = core.tick(T0 + 6)
    assert len(of(Apply, again)) == 1
    assert events(core.handle(Applied(error="[Errno 1] Operation not permitted"), T0 + 6)) == []
    core.tick(T0 + 11)
    fixed = core.handle(Applied(), T0 + 11)
    assert events(fixed) == ["netmap_applied"] and core.last_error is None and core.netmap == MAP2
    assert only(WriteStatus, fixed).status.last_error is None


def test_a_newer_map_is_applied_at_once_after_a_failure():
    core = make_core(apply_retry_s=5.0)
    served(core)
    core.handle(MapAnswered(MAP2), T0 + 1)
    core.handle(MapAnswered(netmap_delta(MAP2, MAP3)), T0 + 1.5)
    actions = core.handle(Applied(error="boom"), T0 + 2)
    assert len(of(Apply, actions)) == 1, "the newer map does not wait for the retry timer"


def test_an_unreachable_controller_is_logged_once_and_retried_with_backoff():
    core = make_core(probe_interval_s=1000.0)
    core.start(MAP1, T0)
    core.handle(Applied(), T0)
    core.serve(T0)
    now, delays = T0, []
    for _ in range(4):
        core.handle(PollFailed("cannot reach controller http://controller: Connection refused"), now)
        due = core.deadline()
        assert due is not None
        delays.append(due - now)
        now = due
        assert core.tick(now) == [Poll(0, 0.0)]
    assert delays == [1.0, 2.0, 4.0, 8.0]
    back = core.handle(MapAnswered(MAP1), now + 1)
    assert events(back) == ["controller_reconnected"]
    assert only(Log, back).fields["away_s"] == pytest.approx(now + 1 - T0)
    # one line for the whole outage, and it says the data plane runs from the cache
    first = make_core()
    first.start(MAP1, T0)
    first.handle(Applied(), T0)
    first.serve(T0)
    line = only(Log, first.handle(PollFailed("refused"), T0))
    assert (line.event, line.fields["note"]) == (
        "controller_disconnected",
        "running from the cached map; retrying with backoff",
    )
    first.tick(T0 + 1)
    assert events(first.handle(PollFailed("refused"), T0 + 1)) == []


def test_a_refused_credential_keeps_the_data_plane():
    core = make_core()
    served(core)
    actions = core.handle(PollRefused(401, "unknown node credential"), T0 + 1)
    assert events(actions) == ["controller_rejected"]
    assert of(Apply, actions) == [] and core.netmap == MAP1
    assert only(WriteStatus, actions).status.controller == "rejected"
    assert core.deadline() == T0 + 2


def test_a_removed_node_takes_its_peers_down_says_so_once_and_stops():
    core = make_core()
    served(core)
    actions = core.handle(PollRefused(410, "node 1 was removed from the mesh"), T0 + 1)
    assert events(actions) == ["node_removed"]
    down = only(Apply, actions).desired
    assert (dict(down.device.peers), down.addresses, down.routes, down.forward) == ({}, (), (), False)
    assert only(WriteStatus, actions).status.controller == "removed"
    assert core.deadline() is None, "no more polls, probes or retries"
    assert events(core.handle(ReportRefused(410, "removed"), T0 + 1.5)) == []
    done = core.handle(Applied(), T0 + 2)
    assert of(ForgetMap, done) == [ForgetMap()]
    stop = only(Stop, done)
    assert stop.exit_code == EXIT_REMOVED and "removed this node from the mesh" in stop.reason
    assert only(WriteStatus, done).status.peers == []


def test_a_removal_during_an_apply_takes_the_peers_down_after_it():
    core = make_core()
    served(core)
    core.handle(MapAnswered(MAP2), T0 + 1)
    assert of(Apply, core.handle(PollRefused(410, "removed"), T0 + 1)) == []
    down = only(Apply, core.handle(Applied(), T0 + 2)).desired
    assert dict(down.device.peers) == {}
    assert len(of(Stop, core.handle(Applied(), T0 + 3))) == 1


def test_link_rounds_keep_a_steady_cadence_and_report_what_they_measured():
    core = make_core()
    served(core)
    assert core.deadline() == T0 + PROBE_S
    measure = only(Measure, core.tick(T0 + PROBE_S))
    assert measure.targets == (ip_address("10.99.0.2"),)
    assert core.deadline() == T0 + 2 * PROBE_S
    probes = {ip_address("10.99.0.2"): ProbeResult(sent=3, received=3, rtt_ms=1.5)}
    actions = core.handle(Measured(None, probes), T0 + PROBE_S + 3)
    report = only(ReportLinks, actions).report
    assert [(m.peer_id, m.rtt_ms, m.loss) for m in report.measurements] == [(2, 1.5, 0.0)]
    assert only(WriteStatus, actions).status.peers[0].rtt_ms == 1.5
    assert core.handle(Reported(), T0 + PROBE_S + 3) == []
    # a refusal of the report that is not about the credential is said once
    core.tick(T0 + 2 * PROBE_S)
    core.handle(Measured(None, probes), T0 + 2 * PROBE_S)
    assert events(core.handle(ReportRefused(422, "peer_id: unknown"), T0 + 2 * PROBE_S)) == [
        "link_report_refused"
    ]
    core.tick(T0 + 3 * PROBE_S)
    core.handle(Measured(None, probes), T0 + 3 * PROBE_S)
    assert events(core.handle(ReportRefused(422, "peer_id: unknown"), T0 + 3 * PROBE_S)) == []


def test_a_round_still_running_is_not_started_twice():
    core = make_core()
    served(core)
    assert len(of(Measure, core.tick(T0 + PROBE_S))) == 1
    assert of(Measure, core.tick(T0 + 2 * PROBE_S)) == []


def test_an_unreadable_device_is_said_once_and_the_map_applied_again():
    core = make_core(apply_retry_s=1.0)
    served(core)
    core.tick(T0 + PROBE_S)
    actions = core.handle(Measured(None, {}, device_error="wg0 does not exist"), T0 + PROBE_S)
    assert events(actions) == ["device_unreadable"]
    assert len(of(Apply, core.tick(T0 + PROBE_S + 1))) == 1


def test_a_crashed_part_is_said_once_and_resumes_after_a_pause():
    core = make_core(restart_pause_s=3.0)
    served(core)
    measure = only(Measure, core.tick(T0 + PROBE_S))
    line = only(Log, core.handle(Crashed(measure, "ZeroDivisionError: division by zero"), T0 + PROBE_S))
    assert line.fields == {
        "loop": "links",
        "error": "ZeroDivisionError: division by zero",
        "note": "restarting the loop",
    }
    again = only(Measure, core.tick(T0 + 2 * PROBE_S))
    assert core.handle(Crashed(again, "ZeroDivisionError: division by zero"), T0 + 2 * PROBE_S) == []
    # a crashed poll: the next one asks for the whole map after the pause
    assert events(core.handle(Crashed(Poll(1, POLL_S), "KeyError: 'x'"), T0 + 25)) == ["internal_error"]
    assert core.tick(T0 + 28) == [Poll(0, 0.0)]


def test_host_name_endpoints_are_resolved_before_the_apply():
    core = make_core()
    core.start(None, T0)
    core.serve(T0)
    named = netmap(1, peer(2, endpoint="h2.example:51820"))
    resolve = only(Resolve, core.handle(MapAnswered(named), T0))
    assert resolve.endpoints == ("h2.example:51820",)
    actions = core.handle(Resolved({"h2.example:51820": None}, {"h2.example:51820": "Name not known"}), T0)
    assert events(actions) == ["endpoint_unresolved"]
    assert only(Apply, actions).desired.device.peers[KEYS[2]].endpoint is None


def test_timers_move_back_with_a_clock_that_steps_back():
    core = make_core()
    served(core)
    assert core.deadline() == T0 + PROBE_S
    core.handle(Reported(), T0 - 3600)  # the wall clock was set back an hour
    assert core.deadline() == T0 - 3600 + PROBE_S


def test_rekey_applies_the_current_map_with_the_new_key():
    core = make_core()
    served(core)
    key = WireGuardPrivateKey.generate()
    apply = only(Apply, core.rekey(key, T0 + 1))
    assert apply.desired.device.private_key == key and set(apply.desired.device.peers) == {KEYS[2]}


def test_shutdown_marks_the_status_stopped():
    core = make_core()
    served(core)
    actions = core.shutdown(T0 + 1, interface_kept=True)
    status = only(WriteStatus, actions).status
    assert (status.running, status.pid) == (False, None)
    assert events(actions) == ["stopped"] and core.deadline() is None
