"""API objects beyond their generated messages: metadata helpers, reading
and writing them in etcd, and the pod-network reports that agents write and
the network service copies into pods."""
