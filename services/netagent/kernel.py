"""The agent's hands on the host and its tenant routers: namespaces, links,
addresses, routes, FDB and neighbour entries through pyroute2, and the
isolation's nftables tables through the firewall (firewall.py). Pods are
plugged in by pods.py.

Every method is idempotent and reads the kernel before it changes anything,
so calling it on healthy wiring changes nothing; each returns a list of what
it changed. Calls are synchronous and run on one worker thread.
"""

from __future__ import annotations

import contextlib
import ipaddress
import logging
from typing import Any

from pyroute2 import NetlinkError

from pinet.hostnet import names
from pinet.hostnet.command import KernelError
from pinet.hostnet.netns import create_netns, list_netns, remove_netns, write_sysctl
from services.netagent import isolation
from services.netagent.desired import RouterWiring
from services.netagent.firewall import Firewall
from services.netagent.netlink import Netlink, attr, link_named
from services.netagent.pods import PodPlumbing
from services.netagent.policy_tables import PolicyTables

log = logging.getLogger(__name__)

# Forwarding on; bridged IPv4 through netfilter, so the guard and the load
# balancer see pod-to-pod traffic on one bridge too; no IPv6 autoconfiguration
# (pods cannot send IPv6 onto the bridge anyway).
ROUTER_SYSCTLS = (
    ("net.ipv4.ip_forward", "1"),
    ("net.bridge.bridge-nf-call-iptables", "1"),
    ("net.ipv6.conf.all.accept_ra", "0"),
    ("net.ipv6.conf.default.accept_ra", "0"),
)
NUD_PERMANENT = 0x80
AF_BRIDGE = 7
ZERO_MAC = "00:00:00:00:00:00"
# Marks the routes to peer routers as ours (rtnetlink protocol numbers
# above 4 are free for routing daemons; 0x70 is not in iproute2's table).
PEER_ROUTE_PROTO = 0x70


class Kernel:
    def __init__(
        self, node: str, host_netns: str, underlay_ip: str, underlay_mtu: int = 1500,
        policy: isolation.Policy | None = None,
    ) -> None:  # fmt: skip
        self.node = node
        self.host_netns = host_netns
        self.underlay_ip = underlay_ip
        self.mtu = names.pod_mtu(underlay_mtu)
        self.policy = policy or isolation.Policy()
        self.firewall = Firewall(host_netns)
        self.policies = PolicyTables()
        self.netlink = Netlink(host_netns)
        self._router_checked: dict[str, tuple[int, str, str]] = {}
        self._host_ready = False
        self.prefix = names.netns_prefix(node)
        self.pods = PodPlumbing(
            self.netlink, self.firewall, self.policy, self.mtu, lambda netns: self._router_checked.pop(netns, None)
        )

    def close(self) -> None:
        self.netlink.close()
        self.firewall.close()
        self.policies.close()

    # ------------------------------------------------------------ reading

    def owned_netns(self) -> set[str]:
        return {n for n in list_netns() if n.startswith(self.prefix)}

    # ------------------------------------------------------------- host

    def ensure_host(self, hosts: isolation.HostSets) -> list[str]:
        """The host's NAT and guard: before any router (and so any VXLAN
        socket) exists, and kept while one does."""
        write_sysctl(self.host_netns, "net.ipv4.ip_forward", "1")
        want = isolation.host_elements(hosts) if self.policy.enabled else {}
        changes = self.firewall.ensure("", isolation.host_base(self.policy), want)
        self._host_ready = True
        return changes

    def host_addresses(self) -> list[str]:
        """The host's IPv4 addresses that other hosts must fence too (what
        pinet itself puts there, and loopback and link-local, are fenced by
        every host anyway)."""
        fenced = (ipaddress.IPv4Network("127.0.0.0/8"), *isolation.ALWAYS_PROTECTED)
        found = set()
        for msg in self.netlink.ns("").get_addr(family=2):
            address = ipaddress.IPv4Address(attr(msg, "IFA_ADDRESS"))
            if not any(address in net for net in fenced):
                found.add(str(address))
        return sorted(found)

    def remove_host(self) -> list[str]:
        self._host_ready = False
        return self.firewall.remove("", (isolation.HOST_TABLE,))

    def sync_peers(self, vni: int, vteps: frozenset[str], hosts: isolation.HostSets) -> list[str]:
        """The hosts VXLAN of vni is accepted from: this VNI's elements only."""
        if not self.policy.enabled:
            return []
        path = f"{isolation.HOST_TABLE} vxlan-peers"
        have = {e for e in self.firewall.elements("", path) if e[1] == str(vni)}  # a copy: update changes the view
        want: set[tuple[str, ...]] = {(vtep, str(vni)) for vtep in vteps}
        if want == have:
            return []
        if not self.firewall.update("", {path: want - have}, {path: have - want}):
            return self.ensure_host(hosts)
        return [f"host: VXLAN {vni} from {sorted(vteps) or 'nobody'}"]

    # ----------------------------------------------------------- routers

    def ensure_router_for_pod(self, r: RouterWiring, hosts: isolation.HostSets) -> list[str]:
        """The pod path: a router verified moments ago by this agent is taken
        as it is (the router's own reconcile and the periodic full pass keep
        verifying it); otherwise it is verified now."""
        checked = self._router_checked.get(r.netns)
        if checked is not None and checked == (r.vni, r.cidr, r.gateway) and r.netns in list_netns():
            return []
        return self.ensure_router(r, hosts)

    def ensure_router(self, r: RouterWiring, hosts: isolation.HostSets) -> list[str]:
        changes: list[str] = [] if self._host_ready else self.ensure_host(hosts)
        if r.netns not in list_netns():
            create_netns(r.netns)
            changes.append(f"{r.netns}: created")
            self.netlink.drop(r.netns)
        ns = self.netlink.ns(r.netns)
        lo = link_named(ns, "lo")
        if lo is not None and not lo["flags"] & 1:
            ns.link("set", index=lo["index"], state="up")
        for name, value in ROUTER_SYSCTLS:
            write_sysctl(r.netns, name, value)
        # The guard first: the router's ports and VXLAN pass nothing unfenced.
        changes += self.ensure_router_guard(r)
        changes += self.sync_peers(r.vni, r.vteps, hosts)
        changes += self._ensure_bridge(ns, r)
        changes += self._ensure_uplink(ns, r)
        changes += self._ensure_vxlan(ns, r)
        changes += self.sync_forwarding(r)
        self._router_checked[r.netns] = (r.vni, r.cidr, r.gateway)
        return changes

    def refresh_counters(self) -> dict[str, dict[str, int]]:
        """The guard's drop counters, per namespace key ("" = the host)."""
        if self.policy.enabled:
            for key in self.firewall.namespaces():
                tables = (isolation.HOST_TABLE,) if not key else (isolation.ROUTER_TABLE, isolation.BRIDGE_TABLE)
                with contextlib.suppress(KernelError):
                    self.firewall.refresh_counters(key, tables)
        return self.firewall.counters()

    def ensure_router_guard(self, r: RouterWiring) -> list[str]:
        base = isolation.router_base(r.cidr, r.gateway, self.policy)
        want = isolation.router_elements(isolation.RouterSets(r.ports)) if self.policy.enabled else {}
        return self.firewall.ensure(r.netns, base, want)

    def _ensure_bridge(self, ns: Any, r: RouterWiring) -> list[str]:
        changes: list[str] = []
        br = link_named(ns, names.ROUTER_BRIDGE)
        if br is None:
            ns.link("add", ifname=names.ROUTER_BRIDGE, kind="bridge", address=r.mac, mtu=self.mtu)
            br = link_named(ns, names.ROUTER_BRIDGE)
            changes.append(f"{r.netns}: bridge")
        index = br["index"]
        if not br["flags"] & 1:
            ns.link("set", index=index, state="up")
        have = {(attr(a, "IFA_ADDRESS"), a["prefixlen"]) for a in ns.get_addr(index=index)}
        for address in (r.gateway, r.dns_ip):
            if (address, r.prefix_len) not in have:
                ns.addr("add", index=index, address=address, prefixlen=r.prefix_len)
                changes.append(f"{r.netns}: {address}/{r.prefix_len} on {names.ROUTER_BRIDGE}")
        return changes

    def _ensure_uplink(self, ns: Any, r: RouterWiring) -> list[str]:
        changes: list[str] = []
        host = self.netlink.ns("")
        host_side = names.uplink_host_ifname(r.vni)
        up = link_named(ns, names.ROUTER_UPLINK)
        if up is None:
            stale = link_named(host, host_side)
            if stale is not None:
                host.link("del", index=stale["index"])
            host.link(
                "add", ifname=host_side, kind="veth", mtu=self.mtu,
                peer={"ifname": names.ROUTER_UPLINK, "net_ns_fd": r.netns, "mtu": self.mtu},
            )  # fmt: skip
            changes.append(f"{r.netns}: uplink")
            up = link_named(ns, names.ROUTER_UPLINK)
        hs = link_named(host, host_side)
        if hs is None:
            raise KernelError(f"{host_side} vanished while being created")
        for sock, link, address in ((host, hs, r.transit_host), (ns, up, r.transit_router)):
            if not link["flags"] & 1:
                sock.link("set", index=link["index"], state="up")
            if address not in {attr(a, "IFA_ADDRESS") for a in sock.get_addr(index=link["index"])}:
                sock.addr("add", index=link["index"], address=address, prefixlen=30)
                changes.append(f"{r.netns}: transit {address}")
        routes = ns.get_routes(family=2, table=254)
        if not any(rt["dst_len"] == 0 and attr(rt, "RTA_GATEWAY") == r.transit_host for rt in routes):
            ns.route("replace", dst="0.0.0.0/0", gateway=r.transit_host)
            changes.append(f"{r.netns}: default route")
        return changes

    def _ensure_vxlan(self, ns: Any, r: RouterWiring) -> list[str]:
        changes: list[str] = []
        vx = link_named(ns, names.ROUTER_VXLAN)
        if vx is None:
            host = self.netlink.ns("")
            staging = names.vxlan_staging_ifname(r.vni)
            stale = link_named(host, staging)
            if stale is not None:
                host.link("del", index=stale["index"])
            # Created in the host namespace so that its UDP socket lives on
            # the underlay, then moved into the router.
            host.link(
                "add", ifname=staging, kind="vxlan", vxlan_id=r.vni, vxlan_local=self.underlay_ip,
                vxlan_port=names.VXLAN_PORT, vxlan_learning=0, mtu=self.mtu,
            )  # fmt: skip
            idx = host.link_lookup(ifname=staging)[0]
            host.link("set", index=idx, net_ns_fd=r.netns)
            idx = ns.link_lookup(ifname=staging)[0]
            ns.link("set", index=idx, ifname=names.ROUTER_VXLAN)
            vx = link_named(ns, names.ROUTER_VXLAN)
            changes.append(f"{r.netns}: vxlan {r.vni}")
        br = ns.link_lookup(ifname=names.ROUTER_BRIDGE)[0]
        if attr(vx, "IFLA_MASTER") != br or not vx["flags"] & 1:
            ns.link("set", index=vx["index"], master=br, state="up")
        return changes

    def sync_forwarding(self, r: RouterWiring) -> list[str]:
        """FDB entries on the VXLAN device (flood to every remote VTEP of the
        tenant, unicast per remote pod MAC) and permanent neighbour entries
        for remote pods on the router's bridge."""
        changes: list[str] = []
        ns = self.netlink.ns(r.netns)
        vx = ns.link_lookup(ifname=names.ROUTER_VXLAN)
        br = ns.link_lookup(ifname=names.ROUTER_BRIDGE)
        if not vx or not br:
            return changes
        have: set[tuple[str, str]] = set()
        for entry in ns.fdb("dump", ifindex=vx[0]):
            dst = attr(entry, "NDA_DST")
            if dst:
                have.add((attr(entry, "NDA_LLADDR"), dst))
        neighbours_of = r.peers | r.peer_routers
        want = {(ZERO_MAC, vtep) for vtep in r.vteps} | {(p.mac, p.vtep) for p in neighbours_of}
        for mac, dst in want - have:
            ns.fdb("append", ifindex=vx[0], lladdr=mac, dst=dst)
            changes.append(f"{r.netns}: fdb {mac} -> {dst}")
        for mac, dst in have - want:
            ns.fdb("del", ifindex=vx[0], lladdr=mac, dst=dst)
            changes.append(f"{r.netns}: fdb -{mac} -> {dst}")
        neighbours = {
            (attr(n, "NDA_DST"), attr(n, "NDA_LLADDR"))
            for n in ns.get_neighbours(ifindex=br[0], family=2)
            if n["state"] & NUD_PERMANENT
        }
        wanted_neigh = {(p.ip, p.mac) for p in neighbours_of}
        for ip, mac in wanted_neigh - neighbours:
            ns.neigh("replace", dst=ip, lladdr=mac, ifindex=br[0], state=NUD_PERMANENT)
        for ip, mac in neighbours - wanted_neigh:
            with contextlib.suppress(NetlinkError):
                ns.neigh("del", dst=ip, lladdr=mac, ifindex=br[0])
        routes = {
            attr(rt, "RTA_DST")
            for rt in ns.get_routes(family=2, table=254)
            if rt["proto"] == PEER_ROUTE_PROTO and rt["dst_len"] == 32
        }
        wanted_routes = {p.ip for p in r.peer_routers}
        for ip in wanted_routes - routes:
            ns.route("replace", dst=f"{ip}/32", oif=br[0], scope=253, proto=PEER_ROUTE_PROTO)
            changes.append(f"{r.netns}: route to the router at {ip}")
        for ip in routes - wanted_routes:
            with contextlib.suppress(NetlinkError):
                ns.route("del", dst=f"{ip}/32", oif=br[0], proto=PEER_ROUTE_PROTO)
            changes.append(f"{r.netns}: route -{ip}")
        return changes

    def remove_router(self, netns: str, hosts: isolation.HostSets) -> list[str]:
        self._router_checked.pop(netns, None)
        self.firewall.forget(netns)
        self.policies.forget(netns)
        vni = names.router_vni(self.node, netns)
        if vni is None:
            raise KernelError(f"{netns} is not one of {self.node}'s router namespaces")
        changes = self.sync_peers(vni, frozenset(), hosts) if self._host_ready else []
        host = self.netlink.ns("")
        for ifname in (names.uplink_host_ifname(vni), names.vxlan_staging_ifname(vni)):
            link = link_named(host, ifname)
            if link is not None:
                host.link("del", index=link["index"])
        self.netlink.drop(netns)
        if netns in list_netns():
            remove_netns(netns)
        return [*changes, f"{netns}: removed"]
