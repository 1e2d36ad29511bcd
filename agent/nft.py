"""Running nftables: read a table as JSON (`nft -j list table`) and apply a JSON document in one
transaction (`nft -j -f -`), plus an in-memory fake that keeps tables the same way, and `apply_firewall`,
which reads, diffs (`agent.firewall`) and applies.

No shell: `nft` is run with an argument list and the document on stdin. A failed run raises `NftError`
with nft's first error line; the transaction then changed nothing (nft applies all or none).
"""

from __future__ import annotations

import json
import shutil
import subprocess
from collections.abc import Mapping
from pathlib import Path
from typing import Any, Protocol

from agent.firewall import FAMILY, FirewallChange, desired_ruleset, firewall_plan, parse_listing, table_name
from wire.models import NodePolicy


class NftError(RuntimeError):
    """nftables refused a command or is missing; the message is one line."""


class Nftables(Protocol):
    """Synchronous, like the other host edges: the agent's driver runs applies in a worker thread."""

    def list_table(self, table: str) -> Mapping[str, Any] | None:
        """`nft -j list table inet TABLE` as JSON; None when there is no such table."""
        ...

    def apply(self, document: str) -> None:
        """Run one nftables JSON document as one transaction."""
        ...


class SystemNftables:
    """The host's nftables through the `nft` command."""

    def __init__(self, nft: str | None = None) -> None:
        self.nft = nft or shutil.which("nft") or "/usr/sbin/nft"

    def _run(self, args: list[str], stdin: str | None = None) -> subprocess.CompletedProcess[str]:
        try:
            return subprocess.run(
                [self.nft, *args], input=stdin, capture_output=True, text=True, timeout=30, check=False
            )
        except FileNotFoundError:
            raise NftError(f"{self.nft}: not found (install nftables)") from None
        except subprocess.TimeoutExpired:
            raise NftError(f"{self.nft} {' '.join(args[:3])}: no answer in 30 s") from None

    def list_table(self, table: str) -> Mapping[str, Any] | None:
        if not Path(self.nft).exists():
            return None  # no nftables, no table: a host without a policy needs none
        done = self._run(["-j", "list", "table", FAMILY, table])
        if done.returncode != 0:
            if "No such file or directory" in done.stderr or "does not exist" in done.stderr:
                return None
            raise NftError(f"nft list table {table}: {_first_line(done.stderr)}")
        parsed: Mapping[str, Any] = json.loads(done.stdout)
        return parsed

    def apply(self, document: str) -> None:
        done = self._run(["-j", "-f", "-"], document)
        if done.returncode != 0:
            raise NftError(f"nft -j -f -: {_first_line(done.stderr)}")


def _first_line(text: str) -> str:
    lines = [line.strip() for line in text.splitlines() if line.strip()]
    return lines[0] if lines else "failed"


class FakeNftables:
    """Tables in memory, listed the way `nft -j` lists them (tables, chains, rules with comments)."""

    def __init__(self) -> None:
        self.tables: dict[str, dict[str, list[dict[str, Any]]]] = {}  # table -> chain -> rules
        self.applied = 0

    def list_table(self, table: str) -> Mapping[str, Any] | None:
        chains = self.tables.get(table)
        if chains is None:
            return None
        items: list[dict[str, Any]] = [{"table": {"family": FAMILY, "name": table}}]
        for name, rules in chains.items():
            items.append({"chain": {"family": FAMILY, "table": table, "name": name}})
            items += [{"rule": {"family": FAMILY, "table": table, "chain": name, **r}} for r in rules]
        return {"nftables": items}

    def apply(self, document: str) -> None:
        tables = json.loads(json.dumps(self.tables))  # all or nothing
        for command in json.loads(document)["nftables"]:
            ((verb, body),) = command.items()
            if verb == "metainfo":
                continue
            ((kind, obj),) = body.items()
            if kind == "table":
                if verb == "add":
                    tables.setdefault(obj["name"], {})
                elif verb == "delete":
                    if obj["name"] not in tables:
                        raise NftError(f"no table {obj['name']}")
                    del tables[obj["name"]]
            elif kind == "chain":
                chains = tables[obj["table"]]
                if verb == "add":
                    chains.setdefault(obj["name"], [])
                elif verb == "flush":
                    chains[obj["name"]] = []
            elif kind == "rule" and verb == "add":
                tables[obj["table"]][obj["chain"]].append({"comment": obj["comment"], "expr": obj["expr"]})
            else:
                raise NftError(f"fake nftables: {verb} {kind} not supported")
        self.tables = tables
        self.applied += 1


def apply_firewall(nft: Nftables, policy: NodePolicy | None, ifname: str) -> list[FirewallChange]:
    """Make the interface's table what `policy` asks for (None: no table); the changes made."""
    table = table_name(ifname)
    current = parse_listing(nft.list_table(table), table)
    plan = firewall_plan(current, desired_ruleset(policy, ifname), ifname)
    if plan:
        nft.apply(plan.document())
    return plan.changes
