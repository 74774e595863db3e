#!/bin/sh
# Runs inside the IPVS VM (see scripts/test-ipvs): loads from the cached
# kernel the modules the VM does not load at boot (the guest cannot autoload
# them: /lib/modules is this machine's), then runs the ipvs tests.
for module in br_netfilter nft_chain_nat nft_nat nft_masq nft_numgen nft_hash nft_ct nf_conntrack_netlink; do
  modprobe -d "${PINET_VM_CACHE:-$HOME/.cache/pinet-ipvs-vm}/k" "$module" 2>/dev/null \
    || echo "$module could not be loaded" >&2
done
PINET_IN_IPVS_VM=1 exec .venv/bin/python -m pytest -q -p no:cacheprovider -m ipvs tests/lb/test_ipvs.py "$@"
