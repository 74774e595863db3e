"""The IPVS backend: one IPVS table per tenant router namespace, NAT
(masquerading) forwarding, programmed through pyroute2's generic netlink.

IPVS only balances traffic addressed to the host itself, so the service
range and the floating IPs are made local to the router (a local route, no
device needed). A real server that leaves is first given weight 0, so it
gets no new connections while its established ones finish, and is removed
once IPVS counts none. Hairpin and external-to-other-host source NAT come
from the same small nftables table the nftables backend uses.
"""

from __future__ import annotations

import dataclasses
import socket
from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any

from pyroute2 import IPVS, IPVSDest, IPVSService, NetlinkError

from pinet.hostnet import names
from pinet.hostnet.command import KernelError
from pinet.hostnet.netns import entered, netns_identity, write_sysctl
from pinet.hostnet.nft import Nft
from services.lb import router
from services.lb.backends import nftrules
from services.lb.backends.nftables import read_layout
from services.lb.model import Frontend, RealServer, RouterLb, Scheduler, VirtualService, VsKey

IP_VS_SVC_F_PERSISTENT = 0x1
FWD_MASQ = 0
PROTO_NUMBERS = {"tcp": socket.IPPROTO_TCP, "udp": socket.IPPROTO_UDP}
PROTO_NAMES = {v: k for k, v in PROTO_NUMBERS.items()}
SCHED_NAMES = {Scheduler.ROUND_ROBIN: "rr", Scheduler.LEAST_CONNECTION: "lc", Scheduler.SOURCE_HASH: "sh"}


@dataclass(frozen=True)
class KernelDest:
    ip: str
    port: int
    weight: int
    connections: int  # active + inactive


def _attr(msg: Any, nla: str, name: str) -> Any:
    return msg.get_attr(nla).get_attr(name)


def persistence_of(svc: Any) -> int:
    """A dumped service's persistence timeout (0: not persistent). pyroute2
    0.9's IPVSService.from_message keeps its own defaults under "flags" and
    "timeout" (always 0) and the kernel's values under the attribute names."""
    flags = svc.get("IPVS_SVC_ATTR_FLAGS") or {}
    if not flags.get("flags", 0) & IP_VS_SVC_F_PERSISTENT:
        return 0
    return int(svc.get("IPVS_SVC_ATTR_TIMEOUT") or 0)


class IpvsBackend:
    kind = "ipvs"

    def __init__(self) -> None:
        # Sockets live for one call only (see NftablesBackend).
        self._ipvs: dict[str, IPVS] = {}
        self._applied: dict[str, RouterLb] = {}
        self._identity: dict[str, int] = {}
        self._draining: dict[str, set[VsKey]] = {}

    def _sock(self, netns: str) -> IPVS:
        sock = self._ipvs.get(netns)
        if sock is None:
            with entered(netns):
                sock = self._ipvs[netns] = IPVS()
        return sock

    # ------------------------------------------------------------ reading

    def _services(self, netns: str) -> dict[VsKey, Any]:
        out = {}
        for msg in self._sock(netns).service("dump"):
            svc = IPVSService.from_message(msg)
            if svc.get("fwmark") or svc.get("protocol") not in PROTO_NAMES:
                continue
            out[(svc["addr"], PROTO_NAMES[svc["protocol"]], svc["port"])] = svc
        return out

    def _dests(self, netns: str, key: VsKey) -> dict[tuple[str, int], KernelDest]:
        out = {}
        for msg in self._sock(netns).dest("dump", self._service(key)):
            nla = "IPVS_CMD_ATTR_DEST"
            ip = _attr(msg, nla, "IPVS_DEST_ATTR_ADDR")
            port = _attr(msg, nla, "IPVS_DEST_ATTR_PORT")
            conns = (_attr(msg, nla, "IPVS_DEST_ATTR_ACTIVE_CONNS") or 0) + (
                _attr(msg, nla, "IPVS_DEST_ATTR_INACT_CONNS") or 0
            )
            out[(ip, port)] = KernelDest(ip, port, _attr(msg, nla, "IPVS_DEST_ATTR_WEIGHT") or 0, conns)
        return out

    @staticmethod
    def _service(key: VsKey, vs: VirtualService | None = None) -> IPVSService:
        fields: dict[str, Any] = {"af": socket.AF_INET, "protocol": PROTO_NUMBERS[key[1]], "addr": key[0]}
        fields["port"] = key[2]
        if vs is not None:
            fields["sched_name"] = SCHED_NAMES[vs.scheduler]
            if vs.persistence:
                fields["flags"] = {"flags": IP_VS_SVC_F_PERSISTENT, "mask": 0xFFFF}
                fields["timeout"] = vs.persistence
            else:
                fields["flags"] = {"flags": 0, "mask": 0xFFFF}
                fields["timeout"] = 0
        return IPVSService(**fields)

    # ------------------------------------------------------------ syncing

    def sync(self, r: RouterLb, full: bool) -> list[str]:
        try:
            return self._sync(r, full)
        finally:
            self._close_socket(r.netns)

    def _close_socket(self, netns: str) -> None:
        sock = self._ipvs.pop(netns, None)
        if sock is not None:
            sock.close()

    def _sync(self, r: RouterLb, full: bool) -> list[str]:
        changes: list[str] = []
        identity = netns_identity(r.netns)
        if self._identity.get(r.netns) != identity:
            self._applied.pop(r.netns, None)  # a new namespace of the same name
        self._identity[r.netns] = identity
        before = self._applied.get(r.netns)
        if full or before is None:
            write_sysctl(r.netns, "net.ipv4.vs.conntrack", "1")
            fips = {f"{vs.vip}/32" for vs in r.services.values() if vs.frontend is Frontend.FLOATING_IP}
            changes += router.prepare(r.netns, {r.service_cidr, *fips})
            changes += self._sync_nat(r, full=True)
            keys = set(self._services(r.netns)) | set(r.services)
        else:
            if {k for k, v in before.services.items() if v.frontend is Frontend.FLOATING_IP} != {
                k for k, v in r.services.items() if v.frontend is Frontend.FLOATING_IP
            }:
                fips = {f"{vs.vip}/32" for vs in r.services.values() if vs.frontend is Frontend.FLOATING_IP}
                changes += router.prepare(r.netns, {r.service_cidr, *fips})
            changes += self._sync_nat(r, full=False)
            keys = {k for k in set(before.services) | set(r.services) if before.services.get(k) != r.services.get(k)}
            keys |= self._draining.get(r.netns, set())
        have = self._services(r.netns) if full or len(keys) > 64 else None
        draining: set[VsKey] = set()
        for key in sorted(keys):
            present = have.get(key) if have is not None else self._get(r.netns, key)
            changes += self._sync_service(r.netns, key, r.services.get(key), present, draining)
        self._draining[r.netns] = draining
        self._applied[r.netns] = r
        return changes

    def update(self, r: RouterLb, changed: Mapping[VsKey, VirtualService | None]) -> list[str]:
        before = self._applied.get(r.netns)
        if before is None:
            raise KernelError(f"{r.netns} has not been synced yet")
        services = dict(before.services)
        for key, vs in changed.items():
            if vs is None:
                services.pop(key, None)
            else:
                services[key] = vs
        return self.sync(dataclasses.replace(r, services=services), full=False)

    def draining(self, netns: str) -> bool:
        return bool(self._draining.get(netns))

    def _get(self, netns: str, key: VsKey) -> Any:
        try:
            msgs = self._sock(netns).service("get", self._service(key))
        except NetlinkError:
            return None
        return IPVSService.from_message(msgs[0]) if msgs else None

    def _sync_service(
        self, netns: str, key: VsKey, vs: VirtualService | None, present: Any, draining: set[VsKey]
    ) -> list[str]:
        sock = self._sock(netns)
        label = f"{netns}: {key[0]}:{key[2]}/{key[1]}"
        if vs is None:
            if present is not None:
                sock.service("del", self._service(key))
                return [f"{label} removed"]
            return []
        changes = []
        wanted = self._service(key, vs)
        if present is None:
            sock.service("add", wanted)
            changes.append(f"{label} added")
            dests: dict[tuple[str, int], KernelDest] = {}
        else:
            same = present.get("sched_name") == SCHED_NAMES[vs.scheduler]
            if not same or persistence_of(present) != vs.persistence:
                sock.service("set", wanted)
                changes.append(f"{label} scheduler/persistence")
            dests = self._dests(netns, key)
        want = {(s.ip, s.port): s for s in vs.real_servers}
        for (ip, port), server in want.items():
            dest = IPVSDest(addr=ip, port=port, weight=server.weight, fwd_method=FWD_MASQ)
            have = dests.get((ip, port))
            if have is None:
                sock.dest("add", wanted, dest)
                changes.append(f"{label} +{ip}:{port}")
            elif have.weight != server.weight:
                sock.dest("set", wanted, dest)
                changes.append(f"{label} {ip}:{port} weight {server.weight}")
        for (ip, port), have in dests.items():
            if (ip, port) in want:
                continue
            if have.weight > 0:
                # Draining: no new connections, established ones finish.
                sock.dest("set", wanted, IPVSDest(addr=ip, port=port, weight=0, fwd_method=FWD_MASQ))
                changes.append(f"{label} {ip}:{port} draining")
                draining.add(key)
            elif have.connections == 0:
                sock.dest("del", wanted, IPVSDest(addr=ip, port=port))
                changes.append(f"{label} -{ip}:{port}")
            else:
                draining.add(key)
        return changes

    def _sync_nat(self, r: RouterLb, full: bool) -> list[str]:
        with Nft(r.netns) as nft:
            return self._sync_nat_in(nft, r, full)

    def _sync_nat_in(self, nft: Nft, r: RouterLb, full: bool) -> list[str]:
        base = nftrules.base_script(r.snat_ip, names.ROUTER_UPLINK, with_services=False)
        full_want = nftrules.layout(r, base.marker)
        want = nftrules.Layout(base=base.marker, hairpin=full_want.hairpin, remote=full_want.remote)
        before = self._applied.get(r.netns)
        if full or before is None:
            have = read_layout(nft)
            have.services, have.backends, have.chains = {}, {}, set()
        else:
            old = nftrules.layout(before, base.marker)
            have = nftrules.Layout(base=base.marker, hairpin=old.hairpin, remote=old.remote)
        script, _ = nftrules.plan(want, have, base.script)
        nft.run(script)
        return [f"{r.netns}: nat sets"] if script else []

    def read(self, r: RouterLb) -> list[VirtualService]:
        try:
            return self._read(r)
        finally:
            self._close_socket(r.netns)

    def _read(self, r: RouterLb) -> list[VirtualService]:
        out = []
        for key, svc in sorted(self._services(r.netns).items()):
            known = r.services.get(key)
            scheduler = next((s for s, n in SCHED_NAMES.items() if n == svc.get("sched_name")), Scheduler.ROUND_ROBIN)
            servers = tuple(
                RealServer(d.ip, d.port, d.weight, False) for d in sorted(self._dests(r.netns, key).values(), key=str)
            )
            out.append(
                VirtualService(
                    r.tenant, known.service if known else "", known.frontend if known else Frontend.CLUSTER_IP,
                    key[0], key[1], key[2], scheduler, persistence_of(svc), servers,
                )
            )  # fmt: skip
        return out

    def forget(self, netns: str) -> None:
        self._applied.pop(netns, None)
        self._draining.pop(netns, None)
        self._close_socket(netns)

    def close(self) -> None:
        for netns in list(self._applied):
            self.forget(netns)
