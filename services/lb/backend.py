"""The one interface both kernel backends offer, and the nftables one.

A backend gets a router's desired virtual services and makes that router's
kernel equal to them with the fewest changes. It remembers what it last
applied, so a change costs only its own difference; a full sync (at start
and periodically) reads the kernel back first and repairs whatever drifted.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Protocol

from pinet.hostnet.netns import KernelError, netns_identity
from pinet.hostnet.nft import Nft, element_key
from services.lb import nftrules, router
from services.lb.model import Frontend, RealServer, RouterLb, Scheduler, VirtualService, VsKey
from services.netagent import names


class Backend(Protocol):
    kind: str

    def sync(self, r: RouterLb, full: bool) -> list[str]:
        """Program r; full: read the kernel first instead of trusting memory."""

    def update(self, r: RouterLb, changed: Mapping[VsKey, VirtualService | None]) -> list[str]:
        """Apply a few virtual services' changes (None: gone) to a router
        synced before; r carries the router, its services are not looked at.
        Raises KernelError when a full sync is needed first."""

    def read(self, r: RouterLb) -> list[VirtualService]:
        """What the kernel holds in r's namespace (names taken from r)."""

    def draining(self, netns: str) -> bool:
        """Real servers there wait for their connections to finish."""

    def forget(self, netns: str) -> None:
        """The router is gone: drop what is remembered about it."""

    def close(self) -> None: ...


class NftablesBackend:
    """Keeps one libnftables context per router namespace: creating and
    freeing one per change would cost more than the change (freeing a
    context whose cache holds a large map's elements takes milliseconds).
    A context's socket keeps its namespace alive, so a context is dropped as
    soon as its router is not wanted, is missing, or is a new namespace of
    the same name."""

    kind = "nftables"

    def __init__(self) -> None:
        self._ctx: dict[str, tuple[int, Nft]] = {}  # netns -> (identity, context)
        self._have: dict[str, nftrules.Layout] = {}  # what the context's namespace holds

    def _nft(self, netns: str) -> Nft:
        try:
            identity = netns_identity(netns)
        except KernelError:
            self.forget(netns)
            raise
        known = self._ctx.get(netns)
        if known is not None and known[0] == identity:
            return known[1]
        self.forget(netns)
        nft = Nft(netns)
        self._ctx[netns] = (identity, nft)
        return nft

    def sync(self, r: RouterLb, full: bool) -> list[str]:
        nft = self._nft(r.netns)
        changes: list[str] = []
        have = self._have.get(r.netns)
        if full or have is None:
            changes += router.prepare(r.netns, {r.service_cidr})
            have = read_layout(nft)
        marker, base = nftrules.base_script(r.snat_ip, names.ROUTER_UPLINK)
        want = nftrules.layout(r, marker)
        script, applied = nftrules.plan(want, have, base)
        self._run(nft, r.netns, script)
        self._have[r.netns] = want
        if full:
            unused = nftrules.unused_chains(want, have)
            if unused:
                nft.run("\n".join(f"delete chain {nftrules.FAMILY_TABLE} {c}" for c in unused))
        return changes + [f"{r.netns}: {c}" for c in applied]

    def update(self, r: RouterLb, changed: Mapping[VsKey, VirtualService | None]) -> list[str]:
        nft = self._nft(r.netns)  # forgets the layout of a namespace made again
        have = self._have.get(r.netns)
        if have is None:
            raise KernelError(f"{r.netns} needs a full sync first")
        script, applied = nftrules.plan_changes(have, changed)
        self._run(nft, r.netns, script)
        return [f"{r.netns}: {c}" for c in applied]

    def _run(self, nft: Nft, netns: str, script: str) -> None:
        try:
            nft.run(script)
        except KernelError:
            self._have.pop(netns, None)  # read the kernel again next time
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
        self._have.pop(netns, None)
        known = self._ctx.pop(netns, None)
        if known is not None:
            known[1].close()

    def close(self) -> None:
        for netns in list(self._ctx):
            self.forget(netns)


def _frontend(r: RouterLb, vip: str) -> Frontend:
    if vip == r.transit_router:
        return Frontend.NODE_PORT
    return Frontend.CLUSTER_IP


def read_layout(nft: Nft) -> nftrules.Layout:
    have = nftrules.Layout()
    for obj in nft.list_json(f"table {nftrules.FAMILY_TABLE}"):
        if "chain" in obj:
            name = obj["chain"]["name"]
            if name.startswith("base-"):
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
