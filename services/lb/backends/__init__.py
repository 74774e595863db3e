"""The kernel load balancers the lb can program: the Backend protocol
(base), nftables maps (nftables, with its rules in nftrules) and IPVS
(ipvs, which keeps its NAT sets in nftables)."""
