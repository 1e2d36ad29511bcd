"""schemathesis against the live OpenAPI document (issue #8 item 12): every operation, with every check
(`--checks all`), as the admin and as a node, finds nothing the document does not say.

schemathesis loads /openapi.json from the running app and runs its phases as `st run` does: the
document's own examples, coverage (boundaries, missing and wrong values, unsupported methods), fuzzing
and stateful sequences through the links it infers. Each role gets a fresh controller, because the run
changes what it tests (it removes nodes, revokes keys, rotates, sets policies). Seeded and
deterministic, so a failure replays; bounded by `MAX_EXAMPLES`. On failure the test names each failing
check with the request that reproduces it (as curl; credentials filtered).

What the run is told beyond the document, and why (none of it switches a check or an operation off):
- GET /v1/netmap's `timeout` is 0: a long poll holds the request up to `timeout` wall-clock seconds,
  which would make the run wait for minutes; holding is test_controller_longpoll's.
- PUT /v1/policy may answer valid data 422: its `text` is a TOML/JSON policy document whose rules no
  JSON Schema can express (POST /v1/policy/check answers the same problems with 200).
"""

from __future__ import annotations

import asyncio
import os
import time
from collections import Counter
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path

import pytest
import schemathesis
from schemathesis.engine import events, from_schema

from tests.support import ControllerHarness, ManualClock, SyncClient, enroll_request
from wire import api
from wire.preauth import parse_preauth_key

SEED = 8
ACCEPTED = ["2xx", "3xx", 401, 403, 404, 409, 429, "5xx"]  # schemathesis's answers to valid data
MAX_EXAMPLES = 12  # per operation in fuzzing; the run stays well under a minute on a loaded machine


@dataclass
class Report:
    """What one schemathesis run did and found."""

    operations: set[str] = field(default_factory=set)
    cases: Counter[str] = field(default_factory=Counter)  # test cases per phase
    phase_seconds: dict[str, float] = field(default_factory=dict)
    failures: dict[tuple[str, str, str], list[str]] = field(default_factory=dict)
    errors: list[str] = field(default_factory=list)
    seconds: float = 0.0

    def summary(self, role: str) -> str:
        by_check = Counter(check for _, check, _ in self.failures)
        cases = ", ".join(
            f"{phase} {n} in {self.phase_seconds.get(phase, 0):.1f} s"
            for phase, n in sorted(self.cases.items())
        )
        return (
            f"schemathesis as {role}: {len(self.operations)} operations, {sum(self.cases.values())} "
            f"cases ({cases}) in {self.seconds:.1f} s, load {os.getloadavg()[0]:.1f}; "
            f"{len(self.failures)} failures {dict(by_check)}, {len(self.errors)} errors"
        )

    def details(self) -> str:
        lines = []
        for (operation, check, title), repros in sorted(self.failures.items()):
            lines.append(f"- {operation}: {check}: {title} ({len(repros)}x)")
            lines.extend(f"    {line}" for line in repros[0].splitlines())
        lines.extend(f"- error: {e}" for e in self.errors)
        return "\n".join(lines)


def config(credential: str) -> schemathesis.Config:
    return schemathesis.Config.from_dict(
        {
            "seed": SEED,
            "headers": {"Authorization": f"Bearer {credential}"},
            "checks": {"enabled": True},  # all of them, as --checks all
            "generation": {"max-examples": MAX_EXAMPLES, "deterministic": True, "database": "none"},
            "operations": [
                {"include-name": "GET " + api.NETMAP, "parameters": {"timeout": 0}},
                {
                    "include-name": "PUT " + api.POLICY,
                    "checks": {"positive_data_acceptance": {"expected-statuses": [*ACCEPTED, 422]}},
                },
            ],
        }
    )


def run_schemathesis(controller: ControllerHarness, credential: str) -> Report:
    report = Report()
    start = started = time.monotonic()
    schema = schemathesis.openapi.from_asgi("/openapi.json", controller.app, config=config(credential))
    for event in from_schema(schema).execute():
        if isinstance(event, events.ScenarioFinished):
            recorder = event.recorder
            report.cases[event.phase.value] += len(recorder.cases)
            report.operations.update(n.value.operation.label for n in recorder.cases.values())
            for case_id, checks in recorder.checks.items():
                for check in checks:
                    if check.failure_info is None:
                        continue
                    failure = check.failure_info.failure
                    key = (recorder.label, check.name, failure.title)
                    text = f"{failure.message}\n{check.failure_info.code_sample}"
                    answer = recorder.find_response(case_id=case_id)
                    if answer is not None:
                        text += f"\nanswered {answer.status_code}: {answer.text[:300]}"
                    report.failures.setdefault(key, []).append(text)
        elif isinstance(event, events.PhaseStarted):
            started = time.monotonic()
        elif isinstance(event, events.PhaseFinished):
            report.phase_seconds[event.phase.name.value] = time.monotonic() - started
        elif isinstance(event, events.NonFatalError):
            report.errors.append(f"{event.label}: {event.info.format()}")
        elif isinstance(event, events.FatalError):
            report.errors.append(f"fatal: {event.exception!r}")
    report.seconds = time.monotonic() - start
    return report


@pytest.fixture
def fresh_controller(tmp_path: Path) -> Iterator[ControllerHarness]:
    # SQLite only: the document and the answers are the routes' and the models', whatever the store.
    harness = ControllerHarness(
        tmp_path / "controller", ManualClock(), managed_ca=True, db_url=f"sqlite:///{tmp_path / 'c.db'}"
    )
    try:
        yield harness
    finally:
        asyncio.run(harness.close())


def enrolled_node(controller: ControllerHarness) -> str:
    """A node's credential (the harness's host 1), enrolled through the API."""
    client = SyncClient(controller.app)
    key = client.post(api.PREAUTH_KEYS, json={}, headers=controller.admin).json()["key"]
    nonce = client.post(api.ENROLL_NONCE).json()["nonce"]
    body = enroll_request(controller.new_host(), parse_preauth_key(key).secret, nonce).model_dump_json()
    r = client.post(api.ENROLL, content=body, headers={"Content-Type": "application/json"})
    client.close()
    assert r.status_code == 200, r.text
    return str(r.json()["node_credential"])


@pytest.mark.parametrize("role", ["admin", "node"])
def test_schemathesis_finds_nothing_the_document_does_not_say(fresh_controller: ControllerHarness, role):
    node = enrolled_node(fresh_controller)  # the admin's run has a node to show, tag, rotate and remove
    credential = fresh_controller.admin["Authorization"].removeprefix("Bearer ") if role == "admin" else node
    report = run_schemathesis(fresh_controller, credential)
    print(report.summary(role))
    assert not report.failures and not report.errors, f"{report.summary(role)}\n{report.details()}"
    paths = fresh_controller.app.openapi()["paths"].items()
    documented = {f"{m.upper()} {p}" for p, ops in paths for m in ops}
    assert documented <= report.operations, sorted(documented - report.operations)
