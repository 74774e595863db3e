"""The agent's hands: namespaces, links, addresses, routes, FDB and
neighbour entries through pyroute2, and the isolation's nftables tables
through the firewall (firewall.py).

Every method is idempotent and reads the kernel before it changes anything,
so calling it on healthy wiring changes nothing; each returns a list of what
it changed. Calls are synchronous and run on one worker thread.
"""

from __future__ import annotations

import contextlib
import ipaddress
import logging
import shutil
from pathlib import Path
from typing import Any

from pyroute2 import IPRoute, NetlinkError

from pinet.hostnet import names
from pinet.hostnet.command import KernelError
from pinet.hostnet.netns import NETNS_RUN, create_netns, list_netns, open_netlink, remove_netns, write_sysctl
from services.netagent import isolation
from services.netagent.desired import PodWiring, RouterWiring
from services.netagent.firewall import Firewall

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
NETNS_ETC = Path("/etc/netns")
ZERO_MAC = "00:00:00:00:00:00"
# Marks the routes to peer routers as ours (rtnetlink protocol numbers
# above 4 are free for routing daemons; 0x70 is not in iproute2's table).
PEER_ROUTE_PROTO = 0x70


def _attr(msg: Any, name: str) -> Any:
    return msg.get_attr(name)


def _has_route(routes: list[Any], cidr: str, gateway: str) -> bool:
    network = ipaddress.IPv4Network(cidr)
    return any(
        rt["dst_len"] == network.prefixlen
        and _attr(rt, "RTA_DST") == str(network.network_address)
        and _attr(rt, "RTA_GATEWAY") == gateway
        for rt in routes
    )


def _hairpin(link: Any) -> bool:
    info = _attr(link, "IFLA_LINKINFO")
    data = info.get_attr("IFLA_INFO_SLAVE_DATA") if info is not None else None
    return bool(data is not None and data.get_attr("IFLA_BRPORT_MODE"))


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
        self._sockets: dict[str, Any] = {}
        self._router_checked: dict[str, tuple[int, str, str]] = {}
        self._host_ready = False
        self.prefix = names.netns_prefix(node)

    # ------------------------------------------------------------ sockets

    def _ns(self, name: str) -> Any:
        """A netlink socket inside namespace name ("" = the host namespace)."""
        key = name or self.host_netns or "<root>"
        sock = self._sockets.get(key)
        if sock is None:
            target = name or self.host_netns
            sock = open_netlink(target) if target else IPRoute()
            self._sockets[key] = sock
        return sock

    def _drop(self, name: str) -> None:
        sock = self._sockets.pop(name, None)
        if sock is not None:
            with contextlib.suppress(Exception):
                sock.close()

    def close(self) -> None:
        for name in list(self._sockets):
            self._drop(name)
        self.firewall.close()

    # ------------------------------------------------------------ reading

    def owned_netns(self) -> set[str]:
        return {n for n in list_netns() if n.startswith(self.prefix)}

    def _link(self, ns: Any, ifname: str) -> Any:
        found = ns.link_lookup(ifname=ifname)
        return ns.get_links(found[0])[0] if found else None

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
        for msg in self._ns("").get_addr(family=2):
            address = ipaddress.IPv4Address(_attr(msg, "IFA_ADDRESS"))
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
            self._drop(r.netns)
        ns = self._ns(r.netns)
        lo = self._link(ns, "lo")
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
        br = self._link(ns, names.ROUTER_BRIDGE)
        if br is None:
            ns.link("add", ifname=names.ROUTER_BRIDGE, kind="bridge", address=r.mac, mtu=self.mtu)
            br = self._link(ns, names.ROUTER_BRIDGE)
            changes.append(f"{r.netns}: bridge")
        index = br["index"]
        if not br["flags"] & 1:
            ns.link("set", index=index, state="up")
        have = {(_attr(a, "IFA_ADDRESS"), a["prefixlen"]) for a in ns.get_addr(index=index)}
        for address in (r.gateway, r.dns_ip):
            if (address, r.prefix_len) not in have:
                ns.addr("add", index=index, address=address, prefixlen=r.prefix_len)
                changes.append(f"{r.netns}: {address}/{r.prefix_len} on {names.ROUTER_BRIDGE}")
        return changes

    def _ensure_uplink(self, ns: Any, r: RouterWiring) -> list[str]:
        changes: list[str] = []
        host = self._ns("")
        host_side = names.uplink_host_ifname(r.vni)
        up = self._link(ns, names.ROUTER_UPLINK)
        if up is None:
            stale = self._link(host, host_side)
            if stale is not None:
                host.link("del", index=stale["index"])
            host.link(
                "add", ifname=host_side, kind="veth", mtu=self.mtu,
                peer={"ifname": names.ROUTER_UPLINK, "net_ns_fd": r.netns, "mtu": self.mtu},
            )  # fmt: skip
            changes.append(f"{r.netns}: uplink")
            up = self._link(ns, names.ROUTER_UPLINK)
        hs = self._link(host, host_side)
        if hs is None:
            raise KernelError(f"{host_side} vanished while being created")
        for sock, link, address in ((host, hs, r.transit_host), (ns, up, r.transit_router)):
            if not link["flags"] & 1:
                sock.link("set", index=link["index"], state="up")
            if address not in {_attr(a, "IFA_ADDRESS") for a in sock.get_addr(index=link["index"])}:
                sock.addr("add", index=link["index"], address=address, prefixlen=30)
                changes.append(f"{r.netns}: transit {address}")
        routes = ns.get_routes(family=2, table=254)
        if not any(rt["dst_len"] == 0 and _attr(rt, "RTA_GATEWAY") == r.transit_host for rt in routes):
            ns.route("replace", dst="0.0.0.0/0", gateway=r.transit_host)
            changes.append(f"{r.netns}: default route")
        return changes

    def _ensure_vxlan(self, ns: Any, r: RouterWiring) -> list[str]:
        changes: list[str] = []
        vx = self._link(ns, names.ROUTER_VXLAN)
        if vx is None:
            host = self._ns("")
            staging = names.vxlan_staging_ifname(r.vni)
            stale = self._link(host, staging)
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
            vx = self._link(ns, names.ROUTER_VXLAN)
            changes.append(f"{r.netns}: vxlan {r.vni}")
        br = ns.link_lookup(ifname=names.ROUTER_BRIDGE)[0]
        if _attr(vx, "IFLA_MASTER") != br or not vx["flags"] & 1:
            ns.link("set", index=vx["index"], master=br, state="up")
        return changes

    def sync_forwarding(self, r: RouterWiring) -> list[str]:
        """FDB entries on the VXLAN device (flood to every remote VTEP of the
        tenant, unicast per remote pod MAC) and permanent neighbour entries
        for remote pods on the router's bridge."""
        changes: list[str] = []
        ns = self._ns(r.netns)
        vx = ns.link_lookup(ifname=names.ROUTER_VXLAN)
        br = ns.link_lookup(ifname=names.ROUTER_BRIDGE)
        if not vx or not br:
            return changes
        have: set[tuple[str, str]] = set()
        for entry in ns.fdb("dump", ifindex=vx[0]):
            dst = _attr(entry, "NDA_DST")
            if dst:
                have.add((_attr(entry, "NDA_LLADDR"), dst))
        neighbours_of = r.peers | r.peer_routers
        want = {(ZERO_MAC, vtep) for vtep in r.vteps} | {(p.mac, p.vtep) for p in neighbours_of}
        for mac, dst in want - have:
            ns.fdb("append", ifindex=vx[0], lladdr=mac, dst=dst)
            changes.append(f"{r.netns}: fdb {mac} -> {dst}")
        for mac, dst in have - want:
            ns.fdb("del", ifindex=vx[0], lladdr=mac, dst=dst)
            changes.append(f"{r.netns}: fdb -{mac} -> {dst}")
        neighbours = {
            (_attr(n, "NDA_DST"), _attr(n, "NDA_LLADDR"))
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
            _attr(rt, "RTA_DST")
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
        vni = names.router_vni(self.node, netns)
        if vni is None:
            raise KernelError(f"{netns} is not one of {self.node}'s router namespaces")
        changes = self.sync_peers(vni, frozenset(), hosts) if self._host_ready else []
        host = self._ns("")
        for ifname in (names.uplink_host_ifname(vni), names.vxlan_staging_ifname(vni)):
            link = self._link(host, ifname)
            if link is not None:
                host.link("del", index=link["index"])
        self._drop(netns)
        if netns in list_netns():
            remove_netns(netns)
        return [*changes, f"{netns}: removed"]

    def router_pod_links(self, netns: str) -> dict[str, str]:
        """pod uid (the link's alias) -> router-side link name."""
        ns = self._ns(netns)
        out = {}
        for link in ns.get_links():
            name = _attr(link, "IFLA_IFNAME")
            alias = _attr(link, "IFLA_IFALIAS")
            if name.startswith("pv") and alias:
                out[alias] = name
        return out

    # -------------------------------------------------------------- pods

    def _pod_ns_name(self, p: PodWiring) -> str:
        return p.netns.removeprefix(str(NETNS_RUN) + "/")

    def ensure_pod(self, p: PodWiring, router_netns: str) -> list[str]:
        changes: list[str] = []
        pod_ns_name = self._pod_ns_name(p)
        if p.agent_owned and pod_ns_name not in list_netns():
            create_netns(pod_ns_name)
            changes.append(f"{pod_ns_name}: created")
        elif not (NETNS_RUN / pod_ns_name).exists():
            raise KernelError(f"namespace {p.netns} does not exist")
        changes += self._guard_port(p, router_netns)
        router = self._ns(router_netns)
        with open_netlink(pod_ns_name) as pod:
            lo = self._link(pod, "lo")
            if lo is not None and not lo["flags"] & 1:
                pod.link("set", index=lo["index"], state="up")
            outer = self._link(router, p.host_ifname)
            inner = self._link(pod, "eth0")
            if outer is None or inner is None or _attr(outer, "IFLA_IFALIAS") != p.uid:
                for sock, link in ((router, outer), (pod, inner)):
                    if link is not None:
                        sock.link("del", index=link["index"])
                router.link(
                    "add", ifname=p.host_ifname, kind="veth", mtu=self.mtu,
                    peer={"ifname": "eth0", "net_ns_fd": pod_ns_name, "mtu": self.mtu, "address": p.mac},
                )  # fmt: skip
                changes.append(f"{p.name}: veth")
                outer = self._link(router, p.host_ifname)
                inner = self._link(pod, "eth0")
            br = router.link_lookup(ifname=names.ROUTER_BRIDGE)[0]
            if _attr(outer, "IFLA_MASTER") != br or not outer["flags"] & 1 or _attr(outer, "IFLA_IFALIAS") != p.uid:
                router.link("set", index=outer["index"], master=br, state="up", ifalias=p.uid)
                changes.append(f"{p.name}: plugged into {router_netns}")
                outer = self._link(router, p.host_ifname)
            if not _hairpin(outer):
                # A pod reaching itself through its service: the bridge must
                # send the translated frame back out of the port it came in by.
                router.brport("set", index=outer["index"], mode=1)
                changes.append(f"{p.name}: hairpin")
            if _attr(inner, "IFLA_ADDRESS") != p.mac or _attr(inner, "IFLA_MTU") != self.mtu or not inner["flags"] & 1:
                pod.link("set", index=inner["index"], address=p.mac, mtu=self.mtu, state="up")
                changes.append(f"{p.name}: eth0 up")
            addrs = {(_attr(a, "IFA_ADDRESS"), a["prefixlen"]) for a in pod.get_addr(index=inner["index"])}
            if (p.ip, p.prefix_len) not in addrs:
                for address, prefixlen in addrs:
                    pod.addr("del", index=inner["index"], address=address, prefixlen=prefixlen)
                pod.addr("add", index=inner["index"], address=p.ip, prefixlen=p.prefix_len)
                changes.append(f"{p.name}: {p.address_cidr}")
            routes = pod.get_routes(family=2, table=254)
            if not any(rt["dst_len"] == 0 and _attr(rt, "RTA_GATEWAY") == p.gateway for rt in routes):
                pod.route("replace", dst="0.0.0.0/0", gateway=p.gateway)
                changes.append(f"{p.name}: default route")
            if p.service_cidr and not _has_route(routes, p.service_cidr, p.gateway):
                pod.route("replace", dst=p.service_cidr, gateway=p.gateway)
                changes.append(f"{p.name}: route to services via {p.gateway}")
        # Router advertisements cannot cross the bridge; and none are taken.
        write_sysctl(pod_ns_name, "net.ipv6.conf.eth0.accept_ra", "0")
        if p.agent_owned:
            changes += self._write_resolv_conf(pod_ns_name, p)
        return changes

    def _guard_port(self, p: PodWiring, router_netns: str) -> list[str]:
        """The pod's port passes its own MAC and address only: allowed
        before the port exists, so that its first frame is not dropped."""
        if not self.policy.enabled:
            return []
        port = (p.host_ifname, p.mac, p.ip)
        want = isolation.router_elements(isolation.RouterSets(frozenset([port])))
        if all(items <= self.firewall.elements(router_netns, path) for path, items in want.items()):
            return []
        # Whatever else this port was allowed (an address the pod had before).
        stale = {
            path: {e for e in self.firewall.elements(router_netns, path) if e[0] == p.host_ifname} - items
            for path, items in want.items()
        }
        if not self.firewall.update(router_netns, want, stale):
            self._router_checked.pop(router_netns, None)
            raise KernelError(f"the guard of {router_netns} is not synced yet")
        return [f"{p.name}: port guard"]

    def _write_resolv_conf(self, pod_ns_name: str, p: PodWiring) -> list[str]:
        path = NETNS_ETC / pod_ns_name / "resolv.conf"
        content = names.resolv_conf(p.dns_ip, p.namespace)
        if path.exists() and path.read_text() == content:
            return []
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_text(content)
        return [f"{p.name}: resolv.conf"]

    def check_pod(self, p: PodWiring, router_netns: str) -> list[str]:
        problems: list[str] = []
        pod_ns_name = self._pod_ns_name(p)
        if pod_ns_name not in list_netns():
            return [f"namespace {pod_ns_name} is missing"]
        if router_netns not in list_netns():
            return [f"router namespace {router_netns} is missing"]
        router = self._ns(router_netns)
        outer = self._link(router, p.host_ifname)
        if outer is None or _attr(outer, "IFLA_IFALIAS") != p.uid:
            problems.append(f"router side {p.host_ifname} is missing")
        if self.policy.enabled:
            ports = self.firewall.read_set(router_netns, f"{isolation.BRIDGE_TABLE} ports")
            if (p.host_ifname, p.mac, p.ip) not in ports:
                problems.append(f"the bridge does not pass {p.ip} from {p.host_ifname} (port guard missing)")
        with open_netlink(pod_ns_name) as pod:
            inner = self._link(pod, "eth0")
            if inner is None:
                return [*problems, "eth0 is missing"]
            if _attr(inner, "IFLA_ADDRESS") != p.mac:
                problems.append(f"eth0 has MAC {_attr(inner, 'IFLA_ADDRESS')}, not {p.mac}")
            addrs = {(_attr(a, "IFA_ADDRESS"), a["prefixlen"]) for a in pod.get_addr(index=inner["index"])}
            if (p.ip, p.prefix_len) not in addrs:
                problems.append(f"eth0 lacks {p.address_cidr}")
            routes = pod.get_routes(family=2, table=254)
            if not any(rt["dst_len"] == 0 and _attr(rt, "RTA_GATEWAY") == p.gateway for rt in routes):
                problems.append(f"no default route via {p.gateway}")
            if p.service_cidr and not _has_route(routes, p.service_cidr, p.gateway):
                problems.append(f"no route to {p.service_cidr} via {p.gateway}")
        return problems

    def remove_pod(self, uid: str, router_netns: str, host_ifname: str, netns: str, agent_owned: bool) -> list[str]:
        changes: list[str] = []
        if router_netns in list_netns():
            router = self._ns(router_netns)
            link = self._link(router, host_ifname)
            if link is not None and _attr(link, "IFLA_IFALIAS") in (uid, None):
                router.link("del", index=link["index"])
                changes.append(f"{uid[:8]}: veth removed")
            # The port's allowance goes with it (a stale one is also removed
            # by the router's next sync, from what the kernel holds).
            paths = isolation.router_elements(isolation.RouterSets())
            stale = {p: {e for e in self.firewall.elements(router_netns, p) if e[0] == host_ifname} for p in paths}
            if any(stale.values()):
                self.firewall.update(router_netns, {}, stale)
        name = netns.removeprefix(str(NETNS_RUN) + "/")
        if agent_owned:
            if name in list_netns():
                remove_netns(name)
                changes.append(f"{name}: removed")
            shutil.rmtree(NETNS_ETC / name, ignore_errors=True)
        elif name in list_netns():
            # A runtime's namespace stays; only our interface leaves it.
            with open_netlink(name) as pod:
                link = self._link(pod, "eth0")
                if link is not None:
                    pod.link("del", index=link["index"])
                    changes.append(f"{name}: eth0 removed")
        return changes

    def remove_orphan_netns(self, name: str) -> list[str]:
        self._drop(name)
        remove_netns(name)
        shutil.rmtree(NETNS_ETC / name, ignore_errors=True)
        return [f"{name}: removed (no pod)"]
