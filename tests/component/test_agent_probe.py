"""Link probes over real ICMP sockets, inside a network namespace of our own (prefix wga4)."""

from __future__ import annotations

import json
import os
import subprocess
import sys
import textwrap

import pytest

pytestmark = pytest.mark.root

PROBE_SCRIPT = textwrap.dedent(
    """
    import asyncio, json, sys
    from agent.probe import IcmpProber

    async def main():
        prober = IcmpProber(count=4, interval_s=0.05, timeout_s=0.6)
        results = await prober.probe(sys.argv[1:])
        print(json.dumps({str(k): [v.sent, v.received, v.rtt_ms, v.loss] for k, v in results.items()}))

    asyncio.run(main())
    """
)


def ip(*args: str) -> None:
    subprocess.run(["ip", *args], check=True, capture_output=True)


@pytest.fixture
def netns():
    name = f"wga4-probe-{os.getpid()}"
    ip("netns", "add", name)
    try:
        ip("-n", name, "link", "set", "lo", "up")
        # a veth pair whose far end has no address: nothing on that link answers
        ip("-n", name, "link", "add", "wga4v0", "type", "veth", "peer", "name", "wga4v1")
        ip("-n", name, "addr", "add", "198.18.77.1/24", "dev", "wga4v0")
        ip("-n", name, "link", "set", "wga4v0", "up")
        ip("-n", name, "link", "set", "wga4v1", "up")
        yield name
    finally:
        subprocess.run(["ip", "netns", "del", name], check=False, capture_output=True)


def probe_in(netns: str, *targets: str) -> dict[str, list]:
    out = subprocess.run(
        ["ip", "netns", "exec", netns, sys.executable, "-c", PROBE_SCRIPT, *targets],
        check=True,
        capture_output=True,
        text=True,
        timeout=30,
    )
    return json.loads(out.stdout)


def test_replies_give_rtt_and_silence_gives_full_loss(netns):
    results = probe_in(netns, "127.0.0.1", "198.18.77.1", "::1", "198.18.77.2")
    for answering in ("127.0.0.1", "198.18.77.1", "::1"):
        sent, received, rtt, loss = results[answering]
        assert (sent, received, loss) == (4, 4, 0.0), answering
        assert rtt is not None and 0 <= rtt < 600
    # 198.18.77.2 would be on the veth link, where nobody answers: no reply, no RTT
    assert results["198.18.77.2"] == [4, 0, None, 1.0]


def test_no_route_counts_as_lost_not_as_an_error(netns):
    results = probe_in(netns, "10.250.0.1")
    assert results["10.250.0.1"] == [4, 0, None, 1.0]
