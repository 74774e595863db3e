"""The agent's firewall against the kernel, in a namespace of the test's
own: tables made once, repaired when edited by hand, elements changed one
at a time, and a change by anyone seen through the nftables generation."""

from __future__ import annotations

import subprocess
import uuid
from collections.abc import Iterator

import pytest

from services.netagent import isolation
from services.netagent.firewall import Firewall

ROUTER = ("10.244.0.0/16", "10.244.0.1")
PORT = ("pv0123456789ab", "02:70:0a:f4:00:0a", "10.244.0.10")
OTHER = ("pv0123456789cd", "02:70:0a:f4:00:0b", "10.244.0.11")


@pytest.fixture
def netns() -> Iterator[str]:
    name = f"pinet-fw-{uuid.uuid4().hex[:6]}"
    subprocess.run(["ip", "netns", "add", name], check=True)
    try:
        yield name
    finally:
        subprocess.run(["ip", "netns", "del", name], check=False)


def nft(netns: str, *args: str) -> str:
    return subprocess.run(
        ["ip", "netns", "exec", netns, "nft", *args], capture_output=True, text=True, check=False
    ).stdout


def elements(ports: set[tuple[str, str, str]]) -> isolation.Elements:
    return isolation.router_elements(isolation.RouterSets(frozenset(ports)))


def test_tables_are_made_once_and_repaired_after_a_hand_edit(netns: str) -> None:
    fw = Firewall(host_netns="")
    base = isolation.router_base(*ROUTER, isolation.Policy())
    try:
        assert fw.ensure(netns, base, elements({PORT})) == [f"{netns}: rule set"]
        assert fw.ensure(netns, base, elements({PORT})) == [], "nothing changes twice"
        assert fw.changed() == [], "reading changes nothing"
        nft(netns, "flush", "chain", "bridge", "pinet", "from-ports")
        assert fw.changed() == [netns], "a hand edit moves the generation"
        assert fw.ensure(netns, base, elements({PORT})) == [f"{netns}: rule set"]
        assert "ether saddr != @macs" in nft(netns, "list", "chain", "bridge", "pinet", "from-ports")
        assert "0a:f4:00:0a" in nft(netns, "list", "set", "bridge", "pinet", "ports"), "elements made with the tables"
        # An element removed by hand is put back without remaking the tables.
        fw.changed()
        fw.ensure(netns, base, elements({PORT}))
        nft(netns, "flush", "set", "bridge", "pinet", "macs")
        assert fw.ensure(netns, base, elements({PORT})) == [f"{netns}: 1 guard elements"]
    finally:
        fw.close()


def test_elements_change_one_at_a_time_and_the_tables_go(netns: str) -> None:
    fw = Firewall(host_netns="")
    base = isolation.router_base(*ROUTER, isolation.Policy())
    try:
        assert not fw.update(netns, elements({PORT}), {}), "no update before the tables are synced"
        fw.ensure(netns, base, elements({PORT}))
        assert fw.update(netns, elements({OTHER}), elements({PORT}))
        listed = nft(netns, "list", "set", "bridge", "pinet", "ports")
        assert "0a:f4:00:0b" in listed and "0a:f4:00:0a" not in listed
        assert fw.elements(netns, f"{isolation.BRIDGE_TABLE} ports") == {OTHER}
        assert fw.ensure(netns, base, elements({OTHER})) == []
        assert fw.remove(netns, base.tables) == [f"{netns}: {t} removed" for t in base.tables]
        assert nft(netns, "list", "tables") == ""
    finally:
        fw.close()


def test_tables_of_others_are_left_alone(netns: str) -> None:
    nft(netns, "add", "table", "ip", "theirs")
    fw = Firewall(host_netns="")
    base = isolation.router_base(*ROUTER, isolation.Policy())
    try:
        fw.ensure(netns, base, elements({PORT}))
        fw.remove(netns, base.tables)
        assert "table ip theirs" in nft(netns, "list", "tables")
    finally:
        fw.close()
