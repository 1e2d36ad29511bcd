"""`lab delay`: the values a person types, and the nftables table each host gets."""

from __future__ import annotations

from ipaddress import IPv4Address

import pytest

from lab.impairment import ImpairmentError, Rewrite, nft_ruleset, parse_delay_ms, parse_loss, relay_ports


@pytest.mark.parametrize(("text", "ms"), [("80ms", 80.0), ("0ms", 0.0), ("0.25s", 250.0), ("1.5ms", 1.5)])
def test_delays(text, ms):
    assert parse_delay_ms(text) == ms


@pytest.mark.parametrize(
    ("text", "message"),
    [
        ("-5ms", "delay '-5ms': must not be negative"),
        ("80", "delay '80': expected a duration like 80ms or 0.2s"),
        ("soon", "delay 'soon': expected a duration like 80ms or 0.2s"),
        ("11s", "delay '11s': at most 10 s"),
    ],
)
def test_bad_delays_are_one_line(text, message):
    with pytest.raises(ImpairmentError) as info:
        parse_delay_ms(text)
    assert str(info.value) == message


@pytest.mark.parametrize(("text", "share"), [("5%", 0.05), ("0%", 0.0), ("100%", 1.0), ("2.5%", 0.025)])
def test_losses(text, share):
    assert parse_loss(text) == pytest.approx(share)


@pytest.mark.parametrize(
    ("text", "message"),
    [
        ("150%", "loss '150%': at most 100%"),
        ("-1%", "loss '-1%': must not be negative"),
        ("0.05", "loss '0.05': expected a percentage like 5%"),
    ],
)
def test_bad_losses_are_one_line(text, message):
    with pytest.raises(ImpairmentError) as info:
        parse_loss(text)
    assert str(info.value) == message


def test_a_host_rewrites_its_peer_to_the_relay_and_back():
    rules = nft_ruleset(
        "wgl_delay", 51820, [Rewrite(IPv4Address("198.18.1.2"), IPv4Address("198.18.0.1"), 40001)]
    )
    assert rules.splitlines()[:2] == ["table ip wgl_delay", "delete table ip wgl_delay"]
    assert "ip daddr 198.18.1.2 udp dport 51820 ip daddr set 198.18.0.1 udp dport set 40001" in rules
    assert "ip saddr 198.18.0.1 udp sport 40001 ip saddr set 198.18.1.2 udp sport set 51820" in rules
    assert "type route hook output" in rules  # rewritten packets are routed again


def test_no_impairment_leaves_no_table():
    assert nft_ruleset("wgl_delay", 51820, []) == "table ip wgl_delay\ndelete table ip wgl_delay\n"


def test_the_relay_ports_are_read_from_its_log():
    assert relay_ports("--- start: ...\n") is None
    assert relay_ports("--- start: ...\nports 40001 40002\n") == (40001, 40002)
