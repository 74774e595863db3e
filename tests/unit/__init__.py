"""Fast tests: pure logic in-process, no etcd, no root, no namespaces (scripts/test runs them first, alone)."""
