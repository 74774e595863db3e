"""The policy table in each tenant router (policy_rules.py lays it out),
through libnftables: made and verified with what it holds read back, or
changed by a handful of elements without reading. Called on the agent's
kernel thread only."""

from __future__ import annotations

import ipaddress
import logging
import socket
from dataclasses import dataclass
from typing import Any

from pinet.hostnet.command import KernelError
from pinet.hostnet.nft import Nft, PerNamespace, is_base_marker
from services.netagent import policy_rules
from services.netagent.policy_engine import Changes, Key, State

log = logging.getLogger(__name__)
TABLE = policy_rules.TABLE


@dataclass
class _Space:
    nft: Nft
    synced: bool = False  # the table holds what this agent last wrote


def _protocol(name: str) -> str:
    try:
        return str(socket.getprotobyname(name))
    except OSError:
        return name


def _part(value: Any) -> str:
    """One field of an element as nft's JSON shows it, in the engine's
    spelling: numbers for protocols, "first-last" for ranges and prefixes."""
    if isinstance(value, dict):
        if "range" in value:
            first, last = (_part(v) for v in value["range"])
            return first if first == last else f"{first}-{last}"
        if "prefix" in value:
            net = ipaddress.IPv4Network(f"{value['prefix']['addr']}/{value['prefix']['len']}")
            low, high = net.network_address, net.broadcast_address
            return str(low) if low == high else f"{low}-{high}"
    if isinstance(value, str) and value and value[0].isalpha():
        return _protocol(value)
    return str(value)


def _key(value: Any) -> Key:
    if isinstance(value, dict) and "concat" in value:
        return tuple(_part(v) for v in value["concat"])
    return (_part(value),)


Counted = dict[tuple[str, Key], int]  # (set, element key) -> packets


def parse(objects: list[dict[str, Any]]) -> tuple[list[str], State, Counted]:
    """Markers, the state (sets' elements valued "") and the packets each
    set element counted, of a listed table."""
    markers, state, packets = [], State(), {}
    for obj in objects:
        if "chain" in obj and is_base_marker(str(obj["chain"].get("name", ""))):
            markers.append(obj["chain"]["name"])
        elif "map" in obj:
            body = obj["map"]
            items = state.maps.setdefault(body["name"], {})
            for key, value in body.get("elem", []):
                items[_key(key)] = str(value)
        elif "set" in obj:
            body = obj["set"]
            items = state.maps.setdefault(policy_rules.unsharded(body["name"]), {})
            for element in body.get("elem", []):
                if isinstance(element, dict) and "elem" in element:  # with its counter
                    key = _key(element["elem"]["val"])
                    packets[(body["name"], key)] = int(element["elem"].get("counter", {}).get("packets", 0))
                else:
                    key = _key(element)
                items[key] = ""
    return markers, state, packets


class PolicyTables:
    def __init__(self) -> None:
        self._spaces: PerNamespace[_Space] = PerNamespace(lambda netns: _Space(Nft(netns)), lambda s: s.nft.close())
        self._base = policy_rules.base()

    def ensure(self, netns: str, want: State) -> list[str]:
        """Reads the table back and makes it hold want."""
        space = self._spaces.get(netns)
        markers, have, _ = parse(space.nft.list_json(f"table {TABLE}"))
        if markers != [self._base.marker]:
            reset = f"add table {TABLE}\ndelete table {TABLE}\n"
            self._run(space, reset + self._base.script + policy_rules.fill_script(want))
            space.synced = True
            return [f"{netns}: policy table ({sum(map(len, want.maps.values()))} elements)"]
        changes = policy_rules.diff(want, have)
        space.synced = True
        if not changes:
            return []
        self._run(space, policy_rules.change_script(changes))
        return [f"{netns}: policy table repaired ({changes.count()} elements)"]

    def update(self, netns: str, changes: Changes) -> bool:
        """Applies changes without reading; False when the table was not
        synced by this agent (a full ensure is due)."""
        space = self._spaces.peek(netns)
        if space is None or not space.synced:
            return False
        if changes:
            self._run(space, policy_rules.change_script(changes))
        return True

    def _run(self, space: _Space, script: str) -> None:
        try:
            space.nft.run(script)
        except KernelError:
            space.synced = False
            raise

    def remove(self, netns: str) -> list[str]:
        space = self._spaces.peek(netns)
        if space is None:
            try:
                space = self._spaces.get(netns)
            except KernelError:
                return []
        changes = []
        if space.nft.list_json(f"table {TABLE}"):
            space.nft.run(f"delete table {TABLE}")
            changes.append(f"{netns}: policy table removed")
        self._spaces.forget(netns)
        return changes

    def forget(self, netns: str) -> None:
        self._spaces.forget(netns)

    def read_counters(self) -> dict[str, Counted]:
        """Packets each counting element counted, per router namespace."""
        out = {}
        for netns, space in self._spaces.items():
            try:
                objects = []
                for name in policy_rules.COUNTING:
                    objects += space.nft.list_json(f"set {TABLE} {name}")
            except KernelError:
                continue
            out[netns] = parse(objects)[2]
        return out

    def close(self) -> None:
        self._spaces.close()
