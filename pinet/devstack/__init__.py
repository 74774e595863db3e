"""The local development stack: etcd and every service as supervised processes."""
