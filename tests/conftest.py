"""Test tiers: tests marked `root` need root, network namespaces and wireguard-go; where those are
missing they are skipped with the reason, never silently passed."""

from __future__ import annotations

import os
import shutil

import pytest
from hypothesis import settings

# Property tests judge correctness, not speed: a slow example on a loaded 2-core machine is not a bug.
settings.register_profile("wgmesh", deadline=None)
settings.load_profile("wgmesh")

ROOT_TOOLS = ("ip", "wireguard-go", "wg", "nft", "ping", "nsenter", "unshare")


def root_tier_missing() -> str | None:
    """Why the root tier cannot run here, or None when it can."""
    if os.geteuid() != 0:
        return "needs root (network namespaces and TUN devices); run `make test` as root"
    missing = [
        tool
        for tool in ROOT_TOOLS
        if shutil.which(tool, path=os.environ.get("PATH", "") + ":/usr/sbin:/sbin") is None
    ]
    if missing:
        return f"needs {', '.join(missing)}: `make test` installs them (apt: wireguard-go wireguard-tools iproute2 iputils-ping nftables)"
    if not os.path.exists("/dev/net/tun"):
        return "needs /dev/net/tun for wireguard-go"
    return None


@pytest.hookimpl(trylast=True)  # after tier conftests have marked their tests `root`
def pytest_collection_modifyitems(config: pytest.Config, items: list[pytest.Item]) -> None:
    reason = root_tier_missing()
    if reason is None:
        return
    skip = pytest.mark.skip(reason=reason)
    for item in items:
        if item.get_closest_marker("root"):
            item.add_marker(skip)
