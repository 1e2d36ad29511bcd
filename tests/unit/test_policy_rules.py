"""Policy documents: parsing (JSON and TOML, every problem named by its place) and rule evaluation
tables (`decide`, `may_relay`, `may_send`, tags)."""

from __future__ import annotations

import pytest

from wire.policy import (
    DEFAULT_DENY,
    NO_POLICY,
    PolicyError,
    PortSpec,
    Subject,
    decide,
    may_relay,
    may_send,
    parse_policy,
    parse_port_spec,
    tags_of,
)

TOML = """
# supervisors run the API; clients use it; workers talk to supervisors
relays = ["tag:supervisor"]

[tags]
h5 = ["client", "gpu"]

[[rules]]
name = "clients-to-api"
from = ["tag:client"]
to = ["tag:supervisor"]
ports = ["tcp/8000"]

[[rules]]
from = ["tag:worker"]
to = ["tag:supervisor"]

[[rules]]
name = "dns"
from = ["*"]
to = ["node:h1"]
ports = ["udp/53", "tcp/5000-5010"]

[messages]
task_assignment = ["tag:supervisor"]
"""

SUP = Subject("h1", frozenset({"supervisor"}))
WORKER = Subject("h2", frozenset({"worker"}))
CLIENT = Subject("h5", frozenset({"client", "gpu"}))
OTHER = Subject("h9", frozenset())
DOC = parse_policy(TOML, "policy.toml")


@pytest.mark.parametrize(
    ("src", "dst", "protocol", "port", "allowed", "rule"),
    [
        (CLIENT, SUP, "tcp", 8000, True, "clients-to-api"),
        (CLIENT, SUP, "tcp", 8001, False, DEFAULT_DENY),
        (CLIENT, SUP, "udp", 8000, False, DEFAULT_DENY),
        (CLIENT, SUP, "udp", 53, True, "dns"),
        (CLIENT, SUP, "tcp", 5005, True, "dns"),
        (CLIENT, SUP, None, None, True, "clients-to-api"),
        (CLIENT, WORKER, None, None, False, DEFAULT_DENY),
        (CLIENT, WORKER, "tcp", 8000, False, DEFAULT_DENY),
        (WORKER, SUP, "tcp", 1, True, "rules[1]"),
        (WORKER, SUP, "icmp", None, True, "rules[1]"),
        (SUP, WORKER, "tcp", 22, False, DEFAULT_DENY),  # rules are directed: answers come back, no more
        (OTHER, SUP, "udp", 53, True, "dns"),
        (OTHER, WORKER, "udp", 53, False, DEFAULT_DENY),
    ],
)
def test_decide_names_the_deciding_rule(
    src: Subject, dst: Subject, protocol: str | None, port: int | None, allowed: bool, rule: str
) -> None:
    decision = decide(DOC, src, dst, protocol, port)
    assert (decision.allowed, decision.rule) == (allowed, rule)


def test_no_policy_is_the_full_mesh() -> None:
    assert decide(None, CLIENT, WORKER, "tcp", 22).rule == NO_POLICY
    assert decide(None, CLIENT, WORKER).allowed
    assert may_relay(None, CLIENT)
    assert may_send(None, "task_assignment", WORKER).allowed


def test_relay_and_message_rights() -> None:
    assert may_relay(DOC, SUP) and not may_relay(DOC, WORKER)
    assert may_send(DOC, "task_assignment", SUP).allowed
    refused = may_send(DOC, "task_assignment", WORKER)
    assert not refused.allowed and "tag:supervisor" in refused.rule
    assert may_send(DOC, "heartbeat", WORKER).allowed


def test_tags_from_the_document_replace_the_keys() -> None:
    assert tags_of(DOC, "h5", ["node"]) == {"client", "gpu"}
    assert tags_of(DOC, "h2", ["worker"]) == {"worker"}
    assert tags_of(None, "h5", ["node"]) == {"node"}


def test_json_and_toml_are_the_same_document() -> None:
    json_text = """{"relays": ["tag:supervisor"], "tags": {"h5": ["client", "gpu"]},
      "rules": [{"name": "clients-to-api", "from": ["tag:client"], "to": ["tag:supervisor"], "ports": ["tcp/8000"]},
                {"from": ["tag:worker"], "to": ["tag:supervisor"]},
                {"name": "dns", "from": ["*"], "to": ["node:h1"], "ports": ["udp/53", "tcp/5000-5010"]}],
      "messages": {"task_assignment": ["tag:supervisor"]}}"""
    assert parse_policy(json_text) == DOC


@pytest.mark.parametrize(
    ("text", "expected"),
    [
        ('[[rules]]\nfrom = ["tag:a"]\nto = ["group:b"]\n', "policy.toml: rules[0].to[0]: 'group:b'"),
        (
            '[[rules]]\nfrom = ["tag:a"]\nto = ["tag:b"]\nports = ["tcp/70000"]\n',
            "rules[0].ports[0]: 'tcp/70000'",
        ),
        ('[[rules]]\nfrom = ["tag:a"]\nto = ["tag:b"]\nports = ["sctp/1"]\n', "rules[0].ports"),
        ('[[rules]]\nfrom = ["tag:a"]\n', "rules[0].to: Field required"),
        ('relays = ["tag:Bad"]\n', "relays[0]"),
        ('colour = "blue"\n', "colour: Extra inputs are not permitted"),
        ("[[rules]\n", "policy.toml: "),
        ('{"rules": [}', "policy.toml: line 1 column 12"),
        (
            '[[rules]]\nname = "x"\nfrom = ["*"]\nto = ["*"]\n[[rules]]\nname = "x"\nfrom = ["*"]\nto = ["*"]\n',
            "rules[1].name: 'x' is also rules[0]",
        ),
    ],
)
def test_a_bad_document_is_refused_naming_the_place(text: str, expected: str) -> None:
    with pytest.raises(PolicyError) as e:
        parse_policy(text, "policy.toml")
    assert any(expected in p for p in e.value.problems), e.value.problems


def test_every_problem_is_reported_at_once() -> None:
    text = '[[rules]]\nfrom = ["x"]\nto = ["y"]\nports = ["tcp/0"]\n'
    with pytest.raises(PolicyError) as e:
        parse_policy(text, "p")
    assert len(e.value.problems) == 3


@pytest.mark.parametrize(
    ("text", "spec"),
    [
        ("tcp/8000", PortSpec("tcp", 8000, 8000)),
        ("udp/5000-5010", PortSpec("udp", 5000, 5010)),
        ("TCP", PortSpec("tcp")),
        ("icmp", PortSpec("icmp")),
        ("any", PortSpec("any")),
    ],
)
def test_port_specs(text: str, spec: PortSpec) -> None:
    assert parse_port_spec(text) == spec
    assert parse_port_spec(str(spec)) == spec
