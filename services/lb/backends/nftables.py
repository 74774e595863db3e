"""The nftables backend.

A backend gets a router's desired virtual services and makes that router's
kernel equal to them with the fewest changes. It remembers what it last
applied, so a change costs only its own difference; a full sync (at start
and periodically) reads the kernel back first and repairs whatever drifted.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass

from pinet.hostnet import names
from pinet.hostnet.command import KernelError
from pinet.hostnet.nft import Nft, PerNamespace, element_key, is_base_marker
from services.lb import router
from services.lb.backends import nftrules
from services.lb.model import Frontend, RealServer, RouterLb, Scheduler, VirtualService, VsKey


@dataclass
class _Router:
    nft: Nft
    have: nftrules.Layout | None = None  # what the namespace holds, as last read or written

    def close(self) -> None:
        self.nft.close()


class NftablesBackend:
    """Keeps one libnftables context per router namespace: creating and
    freeing one per change would cost more than the change (freeing a
    context whose cache holds a large map's elements takes milliseconds).
    A context's socket keeps its namespace alive, so a context is dropped as
    soon as its router is not wanted, is missing, or is a new namespace of
    the same name."""

    kind = "nftables"

    def __init__(self) -> None:
        self._routers: PerNamespace[_Router] = PerNamespace(lambda netns: _Router(Nft(netns)), _Router.close)

    def _nft(self, netns: str) -> Nft:
        return self._routers.get(netns).nft

    def sync(self, r: RouterLb, full: bool) -> list[str]:
        state = self._routers.get(r.netns)
        nft = state.nft
        changes: list[str] = []
        have = state.have
        if full or have is None:
            changes += router.prepare(r.netns, {r.service_cidr})
            have = read_layout(nft)
        base = nftrules.base_script(r.snat_ip, names.ROUTER_UPLINK)
        want = nftrules.layout(r, base.marker)
        script, applied = nftrules.plan(want, have, base.script)
        self._run(state, script)
        state.have = want
        if full:
            unused = nftrules.unused_chains(want, have)
            if unused:
                nft.run("\n".join(f"delete chain {nftrules.FAMILY_TABLE} {c}" for c in unused))
        return changes + [f"{r.netns}: {c}" for c in applied]

    def update(self, r: RouterLb, changed: Mapping[VsKey, VirtualService | None]) -> list[str]:
        state = self._routers.get(r.netns)  # forgets the layout of a namespace made again
        if state.have is None:
            raise KernelError(f"{r.netns} needs a full sync first")
        script, applied = nftrules.plan_changes(state.have, changed)
        self._run(state, script)
        return [f"{r.netns}: {c}" for c in applied]

    def _run(self, state: _Router, script: str) -> None:
        try:
            state.nft.run(script)
        except KernelError:
            state.have = None  # read the kernel again next time
            raise

    def read(self, r: RouterLb) -> list[VirtualService]:
        layout = read_layout(self._nft(r.netns))
        out = []
        for key, chain in sorted(layout.services.items()):
            slots = sorted((k[3], v) for k, v in layout.backends.items() if k[:3] == key)
            known = r.services.get(key)
            kind, _, rest = chain.partition("-")
            persistence = int(rest.split("-")[1]) if kind == "aff" else 0
            scheduler = Scheduler.SOURCE_HASH if kind == "hash" else Scheduler.ROUND_ROBIN
            servers = tuple(RealServer(ip, port, 1, ip in layout.remote) for _, (ip, port) in slots)
            out.append(
                VirtualService(
                    r.tenant,
                    known.service if known else "",
                    known.frontend if known else _frontend(r, key[0]),
                    key[0],
                    key[1],
                    key[2],
                    scheduler,
                    persistence,
                    servers,
                )
            )
        return out

    def draining(self, netns: str) -> bool:
        return False  # conntrack keeps established flows; nothing to wait for

    def forget(self, netns: str) -> None:
        self._routers.forget(netns)

    def close(self) -> None:
        self._routers.close()


def _frontend(r: RouterLb, vip: str) -> Frontend:
    if vip == r.transit_router:
        return Frontend.NODE_PORT
    return Frontend.CLUSTER_IP


def read_layout(nft: Nft) -> nftrules.Layout:
    have = nftrules.Layout()
    for obj in nft.list_json(f"table {nftrules.FAMILY_TABLE}"):
        if "chain" in obj:
            name = obj["chain"]["name"]
            if is_base_marker(name):
                have.base = name
            elif nftrules.is_lb_chain(name):
                have.chains.add(name)
        elif "map" in obj or "set" in obj:
            s = obj.get("map") or obj["set"]
            for elem in s.get("elem", []):
                _read_element(have, s["name"], elem)
    return have


def _read_element(have: nftrules.Layout, set_name: str, elem: object) -> None:
    if isinstance(elem, dict) and "elem" in elem:  # elements with a timeout or counter
        elem = elem["elem"]["val"]
    if set_name == "services" and isinstance(elem, list):
        vip, proto, port = element_key(elem[0])
        have.services[(vip, proto, int(port))] = elem[1].get("goto", {}).get("target", "")
    elif set_name == "backends" and isinstance(elem, list):
        vip, proto, port, slot = element_key(elem[0])
        ip, target = element_key(elem[1])
        have.backends[(vip, proto, int(port), int(slot, 0) if isinstance(slot, str) else int(slot))] = (
            ip,
            int(target),
        )
    elif set_name == "hairpin":
        have.hairpin.add(element_key(elem)[0])
    elif set_name == "remote":
        have.remote.add(str(elem))
