"""The agent's structured log: one key=value line per event, secrets never shown."""

from __future__ import annotations

import io

from agent.eventlog import EventLog
from keys.types import IdentityPrivateKey, WireGuardPrivateKey


def make_log():
    out = io.StringIO()
    return EventLog(out, node="alpha", clock=lambda: 1_800_000_000.25), out


def test_one_line_per_event_with_node_and_quoted_values():
    log, out = make_log()
    log.info(
        "peer_added", peer="beta", detail='allowed_ips 10.99.0.2/32; endpoint "x"', rtt_ms=0.4567, up=True
    )
    log.warning("controller", state="disconnected", error="multi\nline")
    lines = out.getvalue().splitlines()
    assert lines == [
        "ts=2027-01-15T08:00:00.250Z level=info node=alpha event=peer_added peer=beta "
        'detail="allowed_ips 10.99.0.2/32; endpoint \\"x\\"" rtt_ms=0.457 up=true',
        "ts=2027-01-15T08:00:00.250Z level=warning node=alpha event=controller state=disconnected "
        'error="multi\\nline"',
    ]


def test_private_keys_print_redacted_even_when_passed_as_values():
    log, out = make_log()
    wg = WireGuardPrivateKey.generate()
    log.info("oops", key=wg)
    assert "key=<redacted>" in out.getvalue()
    assert wg.base64() not in out.getvalue()


def test_registered_secrets_never_reach_the_log_in_any_form():
    log, out = make_log()
    wg = WireGuardPrivateKey.generate()
    ident = IdentityPrivateKey.generate()
    for secret in (wg, ident, "wgm_node_credential_123", "wgm_pak_abcdef"):
        log.add_secret(secret)
    log.error(
        "apply_failed",
        error=f"uapi said private_key={wg.hex()} bad; {wg.base64()} {ident.base64()}",
        token="wgm_pak_abcdef",
        url="http://c/?cred=wgm_node_credential_123",
    )
    text = out.getvalue()
    for leaked in (
        wg.hex(),
        wg.base64(),
        ident.base64(),
        ident.hex(),
        "wgm_node_credential_123",
        "wgm_pak_abcdef",
    ):
        assert leaked not in text
    assert text.count("<redacted>") == 5


def test_empty_values_and_none_are_visible():
    log, out = make_log()
    log.info("x", a="", b=None)
    assert out.getvalue().rstrip().endswith('event=x a="" b=-')
