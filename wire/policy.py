"""The access policy: its document model (JSON, or TOML with comments), its parser, and rule evaluation.

One document says who may talk to whom on the mesh (`PolicyDocument`, format version 1):

    # policy.toml
    p2p_port = 8421                   # optional: tcp port open between every two peers (p2p messaging)
    relays = ["tag:supervisor"]       # optional, absent: nobody relays for others
    [tags]                            # optional: an admin's tags, replacing those from the pre-auth key
    h5 = ["client", "gpu"]
    [[rules]]
    name = "clients-to-api"           # optional, absent: "rules[N]" (its place in the file)
    from = ["tag:client"]             # selectors: "tag:T", "node:NAME" or "*" (every node)
    to = ["tag:supervisor"]
    ports = ["tcp/8000"]              # optional, absent: all traffic; "tcp/N", "udp/N-M", "tcp", "icmp", "any"
    [messages]                        # optional: who may send a p2p message type; unlisted types: anyone
    task_assignment = ["tag:supervisor"]

Rules (every module that enforces the policy relies on them):
- A rule lets its sources open connections to its destinations on its ports; the answers come back
  (connection tracking). Anything no rule allows is refused: a document is an allow-list.
- Two nodes are peers when some rule lets one of them reach the other, whatever the port.
- A node's tags are the document's `tags` entry for its name when there is one, else the tags its
  pre-auth key gave it or an admin set (`wgmesh nodes tag`), else its role.
- No document at all (none set, or a version that is a clear) means today's full mesh: every pair may talk, everyone may relay, every message
  type is open. `evaluate(None, ...)` says so.
- The first rule in document order that matches decides; `decide` names it.

Pure: no I/O. `parse_policy` turns text into a document or raises `PolicyError` listing every problem,
each naming its place in the file (`rules[2].ports[0]: ...`).
"""

from __future__ import annotations

import json
import re
import tomllib
from collections.abc import Iterable, Sequence
from dataclasses import dataclass
from datetime import datetime
from typing import Annotated, Literal

from pydantic import (
    AfterValidator,
    BaseModel,
    ConfigDict,
    Field,
    ValidationError,
    WithJsonSchema,
    field_validator,
)

from wire.fields import JSON_INT

POLICY_FORMAT = 1
"""Version of the document's format (the `format` field; absent: 1)."""

DEFAULT_P2P_PORT = 8421

Protocol = Literal["tcp", "udp", "icmp", "any"]
TAG_PATTERN = "^[a-z][a-z0-9_-]{0,31}$"  # as wire.fields.ROLE_PATTERN: a role is a node's default tag
_TAG = re.compile(TAG_PATTERN)
_NAME = re.compile(r"^[A-Za-z0-9][A-Za-z0-9.-]{0,252}$")
_MESSAGE_TYPE = re.compile(r"^[A-Za-z0-9_.:-]{1,64}$")
_PORT_SPEC = re.compile(r"^(tcp|udp)(?:/(\d{1,5})(?:-(\d{1,5}))?)?$|^(icmp|any)$")


class PolicyError(ValueError):
    """A document that cannot be used; `problems` holds one line per problem, each naming its place."""

    def __init__(self, problems: Sequence[str]) -> None:
        super().__init__("; ".join(problems))
        self.problems = list(problems)


def _check_selector(value: str) -> str:
    if value == "*":
        return value
    kind, sep, rest = value.partition(":")
    if not sep or kind not in ("tag", "node"):
        raise ValueError(f"{value!r}: a selector is 'tag:NAME', 'node:NAME' or '*'")
    if kind == "tag" and not _TAG.fullmatch(rest):
        raise ValueError(f"{value!r}: a tag is 1-32 of a-z, 0-9, '_' or '-', starting with a letter")
    if kind == "node" and not _NAME.match(rest):
        raise ValueError(f"{value!r}: not a node name")
    return value


@dataclass(frozen=True, order=True)
class PortSpec:
    """One entry of a rule's `ports`: a protocol and an inclusive port range (0-0: every port)."""

    protocol: Protocol
    first: int = 0
    last: int = 0

    @property
    def all_ports(self) -> bool:
        return self.first == 0

    def matches(self, protocol: str, port: int | None) -> bool:
        if self.protocol == "any":
            return True
        if protocol != self.protocol:
            return False
        return self.all_ports or (port is not None and self.first <= port <= self.last)

    def __str__(self) -> str:
        if self.protocol in ("icmp", "any") or self.all_ports:
            return self.protocol
        return f"{self.protocol}/{self.first}" + (f"-{self.last}" if self.last != self.first else "")


def parse_port_spec(value: str) -> PortSpec:
    """`tcp/8000`, `udp/5000-5010`, `tcp` (every tcp port), `icmp`, `any`; ValueError naming the fault."""
    m = _PORT_SPEC.match(value.strip().lower()) if isinstance(value, str) else None
    if m is None:
        raise ValueError(f"{value!r}: expected 'tcp/PORT', 'udp/FIRST-LAST', 'tcp', 'udp', 'icmp' or 'any'")
    protocol: Protocol = (
        "icmp" if m.group(4) == "icmp" else "any" if m.group(4) else ("tcp" if m.group(1) == "tcp" else "udp")
    )
    if m.group(4):
        return PortSpec(protocol)
    if m.group(2) is None:
        return PortSpec(protocol)
    first = int(m.group(2))
    last = int(m.group(3)) if m.group(3) else first
    if not 1 <= first <= 65535 or not 1 <= last <= 65535:
        raise ValueError(f"{value!r}: ports are 1-65535")
    if last < first:
        raise ValueError(f"{value!r}: the range ends before it starts")
    return PortSpec(protocol, first, last)


def _check_port_text(value: str) -> str:
    parse_port_spec(value)
    return value


def _check_tag(value: str) -> str:
    if not _TAG.fullmatch(value):
        raise ValueError(f"{value!r}: a tag is 1-32 of a-z, 0-9, '_' or '-', starting with a letter")
    return value


Selector = Annotated[str, AfterValidator(_check_selector)]
PortText = Annotated[str, AfterValidator(_check_port_text)]
TagName = Annotated[
    str,
    AfterValidator(_check_tag),
    WithJsonSchema({"type": "string", "pattern": TAG_PATTERN, "examples": ["worker"]}),
]


class _Doc(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True, populate_by_name=True)


class PolicyRule(_Doc):
    name: str | None = Field(
        default=None, max_length=64, description="Shown by `policy test`; absent: 'rules[N]'."
    )
    sources: list[Selector] = Field(alias="from", min_length=1, max_length=256)
    destinations: list[Selector] = Field(alias="to", min_length=1, max_length=256)
    ports: list[PortText] | None = Field(default=None, max_length=64, description="None: all traffic.")

    def port_specs(self) -> tuple[PortSpec, ...]:
        """The ports as specs; ('any',) when the rule names none."""
        if self.ports is None:
            return (PortSpec("any"),)
        return tuple(sorted(set(map(parse_port_spec, self.ports))))


class PolicyDocument(_Doc):
    """The whole policy. Field absent means what `wire.policy`'s module docstring says."""

    format: Literal[1] = 1
    p2p_port: int | None = Field(
        default=DEFAULT_P2P_PORT, ge=1, le=65535, description="tcp port open between peers; None: none."
    )
    relays: list[Selector] = Field(default_factory=list, max_length=256, description="Absent: nobody relays.")
    tags: dict[str, list[TagName]] = Field(default_factory=dict, description="Node name -> its tags.")
    rules: list[PolicyRule] = Field(default_factory=list, max_length=4096)
    messages: dict[str, list[Selector]] = Field(
        default_factory=dict, description="p2p message type -> selectors of who may send it."
    )

    @field_validator("tags")
    @classmethod
    def _names(cls, value: dict[str, list[str]]) -> dict[str, list[str]]:
        for name in value:
            if not _NAME.match(name):
                raise ValueError(f"{name!r}: not a node name")
        return value

    @field_validator("messages")
    @classmethod
    def _types(cls, value: dict[str, list[str]]) -> dict[str, list[str]]:
        for message_type in value:
            if not _MESSAGE_TYPE.match(message_type):
                raise ValueError(f"{message_type!r}: not a message type")
        return value

    def rule_name(self, index: int) -> str:
        return self.rules[index].name or f"rules[{index}]"


# --- parsing ----------------------------------------------------------------------------------------


def _where(loc: Iterable[object]) -> str:
    out = ""
    for part in loc:
        if isinstance(part, int):
            out += f"[{part}]"
        elif str(part) in ("from", "to", "sources", "destinations") or str(part).isidentifier() or out:
            name = {"sources": "from", "destinations": "to"}.get(str(part), str(part))
            out += ("." if out else "") + name
    return out or "document"


def parse_policy(text: str, source: str = "policy") -> PolicyDocument:
    """The document in `text`: JSON when it starts with `{`, else TOML. Raises PolicyError with every
    problem found, each as `SOURCE: PLACE: what is wrong`."""
    stripped = text.lstrip()
    try:
        raw = json.loads(text) if stripped.startswith("{") else tomllib.loads(text)
    except json.JSONDecodeError as e:
        raise PolicyError([f"{source}: line {e.lineno} column {e.colno}: {e.msg}"]) from None
    except tomllib.TOMLDecodeError as e:
        raise PolicyError([f"{source}: {e}"]) from None
    if not isinstance(raw, dict):
        raise PolicyError([f"{source}: document: must be an object (a table)"])
    try:
        doc = PolicyDocument.model_validate(raw)
    except ValidationError as e:
        problems = []
        for err in e.errors():
            msg = err["msg"].removeprefix("Value error, ")
            problems.append(f"{source}: {_where(err['loc'])}: {msg}")
        raise PolicyError(problems) from None
    problems = []
    seen: dict[str, int] = {}
    for i, rule in enumerate(doc.rules):
        if rule.name is not None:
            if rule.name in seen:
                problems.append(f"{source}: rules[{i}].name: {rule.name!r} is also rules[{seen[rule.name]}]")
            seen.setdefault(rule.name, i)
    if problems:
        raise PolicyError(problems)
    return doc


def policy_text(doc: PolicyDocument) -> str:
    """The document as canonical JSON (what `policy get` shows when the original text is not kept)."""
    return doc.model_dump_json(by_alias=True, indent=2, exclude_none=False) + "\n"


# --- evaluation -------------------------------------------------------------------------------------


@dataclass(frozen=True)
class Subject:
    """A node as the policy sees it: its name and its tags."""

    name: str
    tags: frozenset[str]


def tags_of(doc: PolicyDocument | None, name: str, key_tags: Iterable[str]) -> frozenset[str]:
    """The node's tags: the document's entry for its name, else those from its pre-auth key."""
    if doc is not None and name in doc.tags:
        return frozenset(doc.tags[name])
    return frozenset(key_tags)


def selects(selectors: Iterable[str], subject: Subject) -> bool:
    for s in selectors:
        if s == "*":
            return True
        kind, _, rest = s.partition(":")
        if (kind == "tag" and rest in subject.tags) or (kind == "node" and rest == subject.name):
            return True
    return False


@dataclass(frozen=True)
class Decision:
    """What the policy says about one flow: allowed or not, and the rule (or default) that decided."""

    allowed: bool
    rule: str

    def __str__(self) -> str:
        return f"{'allowed' if self.allowed else 'denied'} by {self.rule}"


NO_POLICY = "no policy (full mesh)"
DEFAULT_DENY = "default deny (no rule matches)"


def decide(
    doc: PolicyDocument | None,
    src: Subject,
    dst: Subject,
    protocol: str | None = None,
    port: int | None = None,
) -> Decision:
    """May `src` open a connection to `dst` (on `protocol`/`port`; None: any traffic at all, i.e. are they
    peers in this direction)? The first matching rule decides."""
    if doc is None:
        return Decision(True, NO_POLICY)
    for i, rule in enumerate(doc.rules):
        if not (selects(rule.sources, src) and selects(rule.destinations, dst)):
            continue
        if protocol is None or any(p.matches(protocol, port) for p in rule.port_specs()):
            return Decision(True, doc.rule_name(i))
    return Decision(False, DEFAULT_DENY)


def may_relay(doc: PolicyDocument | None, node: Subject) -> bool:
    return doc is None or selects(doc.relays, node)


def may_send(doc: PolicyDocument | None, message_type: str, sender: Subject) -> Decision:
    """May `sender` send p2p messages of `message_type`?"""
    if doc is None:
        return Decision(True, NO_POLICY)
    selectors = doc.messages.get(message_type)
    if selectors is None:
        return Decision(True, f"messages: {message_type!r} is open to every node")
    if selects(selectors, sender):
        return Decision(True, f"messages.{message_type}")
    return Decision(False, f"messages.{message_type} (allowed: {', '.join(selectors) or 'nobody'})")


# --- the admin API's models -------------------------------------------------------------------------

MAX_POLICY_TEXT = 80_000
"""Characters. A character takes up to 12 bytes in JSON (a surrogate pair written as escapes), so a
request with a text of this length, or one past it (answered 422), stays within the controller's
default body limit of 1 MiB: a client that keeps to the document never meets the 413."""


class _Api(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True)


class _ApiRequest(_Api):
    model_config = ConfigDict(extra="forbid", frozen=True, strict=True)  # as wire.models.REQUEST_CONFIG


class PolicySetRequest(_ApiRequest):
    text: str = Field(max_length=MAX_POLICY_TEXT, description="The document, JSON or TOML.")
    source: str = Field(
        default="policy", max_length=200, description="A name for the text in error messages (its file)."
    )
    author: str = Field(
        default="admin", max_length=200, description="Who makes the change, for the audit trail."
    )


class PolicyRollbackRequest(_ApiRequest):
    version: Annotated[int, Field(ge=0), JSON_INT] = Field(
        description="The version to bring back (it becomes a new version); 0: no policy, the full mesh "
        "(as `wgmesh policy clear`).",
    )
    author: str = Field(default="admin", max_length=200)


class PolicyInfo(_Api):
    """One policy version and its audit entry."""

    version: int
    created_at: datetime
    author: str
    action: Literal["set", "rollback", "clear"] = Field(
        description="'clear': this version is no policy at all (the full mesh)."
    )
    restored: int | None = Field(
        default=None, description="The version a rollback restored (0: none, a clear); None: a set."
    )
    text: str | None = Field(default=None, description="The document; absent in history listings and clears.")


class PolicyState(_Api):
    """The newest policy version: None when none was ever set; no policy is in force (the full mesh)
    then, nor when its action is 'clear'."""

    policy: PolicyInfo | None


class PolicyCheckResult(_Api):
    ok: bool
    problems: list[str] = Field(default_factory=list, description="One per problem, naming its place.")


class PolicyTestRequest(_ApiRequest):
    source: str = Field(max_length=253, description="A node name or id.")
    destination: str = Field(max_length=253, description="A node name or id.")
    port: str | None = Field(
        default=None, max_length=20, description="'8000' (tcp), 'udp/53' or 'icmp'; None: any traffic."
    )


class PolicyTestResult(_Api):
    allowed: bool
    rule: str = Field(description="The rule that decided, or the default.")
    version: int | None = Field(description="The policy version asked; None: no policy.")
