"""Plugging pods into their tenant's router: the pod namespace (made here,
or a runtime's), the veth pair with the pod's stable MAC, address and
routes, the port guard, resolv.conf; and reading it back for Check.

Every method is idempotent and reads the kernel before it changes anything;
each returns a list of what it changed. Called on the agent's kernel thread.
"""

from __future__ import annotations

import shutil
from collections.abc import Callable
from pathlib import Path

from pinet.hostnet import names
from pinet.hostnet.command import KernelError
from pinet.hostnet.netns import NETNS_RUN, create_netns, list_netns, open_netlink, remove_netns, write_sysctl
from services.netagent import isolation
from services.netagent.desired import PodWiring
from services.netagent.firewall import Firewall
from services.netagent.netlink import Netlink, attr, hairpin, has_route, link_named

NETNS_ETC = Path("/etc/netns")


class PodPlumbing:
    """on_unsynced_guard: told the router namespace whose guard must be
    synced in full before a port can be allowed there."""

    def __init__(
        self, netlink: Netlink, firewall: Firewall, policy: isolation.Policy, mtu: int,
        on_unsynced_guard: Callable[[str], object],
    ) -> None:  # fmt: skip
        self.netlink = netlink
        self.firewall = firewall
        self.policy = policy
        self.mtu = mtu
        self.on_unsynced_guard = on_unsynced_guard

    def links_in(self, netns: str) -> dict[str, str]:
        """pod uid (the link's alias) -> router-side link name."""
        ns = self.netlink.ns(netns)
        out = {}
        for link in ns.get_links():
            name = attr(link, "IFLA_IFNAME")
            alias = attr(link, "IFLA_IFALIAS")
            if name.startswith("pv") and alias:
                out[alias] = name
        return out

    def _netns_name(self, p: PodWiring) -> str:
        return p.netns.removeprefix(str(NETNS_RUN) + "/")

    def ensure(self, p: PodWiring, router_netns: str) -> list[str]:
        changes: list[str] = []
        pod_ns_name = self._netns_name(p)
        if p.agent_owned and pod_ns_name not in list_netns():
            create_netns(pod_ns_name)
            changes.append(f"{pod_ns_name}: created")
        elif not (NETNS_RUN / pod_ns_name).exists():
            raise KernelError(f"namespace {p.netns} does not exist")
        changes += self._guard_port(p, router_netns)
        router = self.netlink.ns(router_netns)
        with open_netlink(pod_ns_name) as pod:
            lo = link_named(pod, "lo")
            if lo is not None and not lo["flags"] & 1:
                pod.link("set", index=lo["index"], state="up")
            outer = link_named(router, p.host_ifname)
            inner = link_named(pod, "eth0")
            if outer is None or inner is None or attr(outer, "IFLA_IFALIAS") != p.uid:
                for sock, link in ((router, outer), (pod, inner)):
                    if link is not None:
                        sock.link("del", index=link["index"])
                router.link(
                    "add", ifname=p.host_ifname, kind="veth", mtu=self.mtu,
                    peer={"ifname": "eth0", "net_ns_fd": pod_ns_name, "mtu": self.mtu, "address": p.mac},
                )  # fmt: skip
                changes.append(f"{p.name}: veth")
                outer = link_named(router, p.host_ifname)
                inner = link_named(pod, "eth0")
            br = router.link_lookup(ifname=names.ROUTER_BRIDGE)[0]
            if attr(outer, "IFLA_MASTER") != br or not outer["flags"] & 1 or attr(outer, "IFLA_IFALIAS") != p.uid:
                router.link("set", index=outer["index"], master=br, state="up", ifalias=p.uid)
                changes.append(f"{p.name}: plugged into {router_netns}")
                outer = link_named(router, p.host_ifname)
            if not hairpin(outer):
                # A pod reaching itself through its service: the bridge must
                # send the translated frame back out of the port it came in by.
                router.brport("set", index=outer["index"], mode=1)
                changes.append(f"{p.name}: hairpin")
            if attr(inner, "IFLA_ADDRESS") != p.mac or attr(inner, "IFLA_MTU") != self.mtu or not inner["flags"] & 1:
                pod.link("set", index=inner["index"], address=p.mac, mtu=self.mtu, state="up")
                changes.append(f"{p.name}: eth0 up")
            addrs = {(attr(a, "IFA_ADDRESS"), a["prefixlen"]) for a in pod.get_addr(index=inner["index"])}
            if (p.ip, p.prefix_len) not in addrs:
                for address, prefixlen in addrs:
                    pod.addr("del", index=inner["index"], address=address, prefixlen=prefixlen)
                pod.addr("add", index=inner["index"], address=p.ip, prefixlen=p.prefix_len)
                changes.append(f"{p.name}: {p.address_cidr}")
            routes = pod.get_routes(family=2, table=254)
            if not any(rt["dst_len"] == 0 and attr(rt, "RTA_GATEWAY") == p.gateway for rt in routes):
                pod.route("replace", dst="0.0.0.0/0", gateway=p.gateway)
                changes.append(f"{p.name}: default route")
            if p.service_cidr and not has_route(routes, p.service_cidr, p.gateway):
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
            self.on_unsynced_guard(router_netns)
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

    def check(self, p: PodWiring, router_netns: str) -> list[str]:
        problems: list[str] = []
        pod_ns_name = self._netns_name(p)
        if pod_ns_name not in list_netns():
            return [f"namespace {pod_ns_name} is missing"]
        if router_netns not in list_netns():
            return [f"router namespace {router_netns} is missing"]
        router = self.netlink.ns(router_netns)
        outer = link_named(router, p.host_ifname)
        if outer is None or attr(outer, "IFLA_IFALIAS") != p.uid:
            problems.append(f"router side {p.host_ifname} is missing")
        if self.policy.enabled:
            ports = self.firewall.read_set(router_netns, f"{isolation.BRIDGE_TABLE} ports")
            if (p.host_ifname, p.mac, p.ip) not in ports:
                problems.append(f"the bridge does not pass {p.ip} from {p.host_ifname} (port guard missing)")
        with open_netlink(pod_ns_name) as pod:
            inner = link_named(pod, "eth0")
            if inner is None:
                return [*problems, "eth0 is missing"]
            if attr(inner, "IFLA_ADDRESS") != p.mac:
                problems.append(f"eth0 has MAC {attr(inner, 'IFLA_ADDRESS')}, not {p.mac}")
            addrs = {(attr(a, "IFA_ADDRESS"), a["prefixlen"]) for a in pod.get_addr(index=inner["index"])}
            if (p.ip, p.prefix_len) not in addrs:
                problems.append(f"eth0 lacks {p.address_cidr}")
            routes = pod.get_routes(family=2, table=254)
            if not any(rt["dst_len"] == 0 and attr(rt, "RTA_GATEWAY") == p.gateway for rt in routes):
                problems.append(f"no default route via {p.gateway}")
            if p.service_cidr and not has_route(routes, p.service_cidr, p.gateway):
                problems.append(f"no route to {p.service_cidr} via {p.gateway}")
        return problems

    def remove(self, uid: str, router_netns: str, host_ifname: str, netns: str, agent_owned: bool) -> list[str]:
        changes: list[str] = []
        if router_netns in list_netns():
            router = self.netlink.ns(router_netns)
            link = link_named(router, host_ifname)
            if link is not None and attr(link, "IFLA_IFALIAS") in (uid, None):
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
                link = link_named(pod, "eth0")
                if link is not None:
                    pod.link("del", index=link["index"])
                    changes.append(f"{name}: eth0 removed")
        return changes

    def remove_orphan(self, name: str) -> list[str]:
        self.netlink.drop(name)
        remove_netns(name)
        shutil.rmtree(NETNS_ETC / name, ignore_errors=True)
        return [f"{name}: removed (no pod)"]
