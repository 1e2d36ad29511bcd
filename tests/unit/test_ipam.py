"""IPAM: lowest free host address, never a taken one, names that stay unique and valid, and holds that
keep a removed node's address out of use until every holder has acknowledged."""

from __future__ import annotations

import ipaddress

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st
from pydantic import TypeAdapter

from controller.ipam import (
    AddressHold,
    AddressHolds,
    AddressPool,
    PoolExhausted,
    hosts_in,
    pool_problem,
    unique_name,
)
from wire.fields import Hostname

SMALL = ipaddress.ip_network("10.0.0.0/29")  # 6 host addresses: .1 to .6


def test_the_lowest_host_address_comes_first_skipping_network_and_broadcast():
    pool = AddressPool(SMALL)
    assert pool.first_free([]) == ipaddress.ip_address("10.0.0.1")
    taken = [ipaddress.ip_address(f"10.0.0.{i}") for i in (1, 2, 4)]
    assert pool.first_free(taken) == ipaddress.ip_address("10.0.0.3")
    all_hosts = [ipaddress.ip_address(f"10.0.0.{i}") for i in range(1, 7)]
    with pytest.raises(PoolExhausted, match=r"10\.0\.0\.0/29"):
        pool.first_free(all_hosts)
    assert ipaddress.ip_address("10.0.0.7") not in pool and ipaddress.ip_address("10.0.0.0") not in pool


@settings(max_examples=200)
@given(prefix=st.integers(24, 30), taken_offsets=st.sets(st.integers(0, 300), max_size=80))
def test_an_allocation_is_never_taken_and_always_the_lowest_free(prefix, taken_offsets):
    net = ipaddress.ip_network(f"10.9.0.0/{prefix}")
    pool = AddressPool(net)
    taken = {net.network_address + o for o in taken_offsets}
    free = [a for a in net.hosts() if a not in taken]
    if not free:
        with pytest.raises(PoolExhausted):
            pool.first_free(taken)
        return
    assert pool.first_free(taken) == free[0]


def test_ipv6_pools_work_and_tiny_pools_are_refused():
    pool = AddressPool(ipaddress.ip_network("fd00:1::/120"))
    assert pool.first_free([]) == ipaddress.ip_address("fd00:1::1")
    assert hosts_in(ipaddress.ip_network("10.0.0.0/30")) == 2
    assert pool_problem(ipaddress.ip_network("10.0.0.0/31")) is not None
    with pytest.raises(ValueError, match="too small"):
        AddressPool(ipaddress.ip_network("10.0.0.0/32"))


HOSTNAMES = TypeAdapter(Hostname)


@settings(max_examples=200)
@given(
    hostname=st.from_regex(r"\A[a-z0-9]([a-z0-9-]{0,61}[a-z0-9])?(\.[a-z]{1,10}){0,2}\Z"),
    copies=st.integers(1, 12),
)
def test_duplicate_hostnames_get_unique_valid_names(hostname, copies):
    taken: set[str] = set()
    for _ in range(copies):
        name = unique_name(hostname, taken)
        assert name not in taken
        HOSTNAMES.validate_python(name)
        taken.add(name)
    assert hostname in taken


def test_names_count_up_on_the_first_label():
    assert unique_name("web", set()) == "web"
    assert unique_name("web", {"web"}) == "web-2"
    assert unique_name("web", {"web", "web-2"}) == "web-3"
    assert unique_name("db.example.org", {"db.example.org"}) == "db-2.example.org"
    long = "a" * 63
    assert unique_name(long, {long}) == "a" * 61 + "-2"


def test_a_hold_lasts_until_each_holder_acknowledges_its_serial():
    holds = AddressHolds()
    address = ipaddress.ip_address("10.0.0.5")
    assert holds.hold(address, {1: 7, 2: 4}) == [AddressHold(address, 1, 7), AddressHold(address, 2, 4)]
    assert holds.held() == {address}
    assert not holds.acknowledge(1, 6)
    assert holds.acknowledge(1, 7)
    assert holds.held() == {address}  # node 2 has not seen its map without the address yet
    holds.drop_holder(2)  # node 2 was removed itself
    assert holds.held() == set() and len(holds) == 0
    assert AddressHolds([AddressHold(address, 3, 1)]).held() == {address}
