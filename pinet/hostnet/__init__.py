"""The host-network contract and the one way each kernel job is done here:
the names of namespaces and links (and their parsing), entering a namespace,
the kernel worker thread, running a command and applying nftables. The
netagent, the lb and the dns all use it."""
