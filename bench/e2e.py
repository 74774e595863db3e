"""bench-e2e: network programming latency on the local stack.

For 200 services created one after another with `pi create -f`, and 200 more
through CreateService (their pod already running), the time from starting
`pi` (or the call) until, in a client pod on the other host, the name resolves
through the pod's own resolv.conf and its ClusterIP answers a TCP connection.
Target: p99 under 250 ms (Kubernetes' SLO for network programming is 30 s).

Two stacks run side by side, the platform as it runs (TLS, mTLS, etcd with
client certificates and RBAC) and `pinet stack --insecure`, and the services
are made in both in turn, one at a time, so that each pair of measurements
meets the same machine (a VM whose speed drifts between runs).
"""

from __future__ import annotations

import argparse
import contextlib
import os
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import grpc

from bench.common import percentile
from pinet.api.network.v1 import network_pb2, network_pb2_grpc, objects_pb2
from pinet.devstack.etcd import free_port

ROOT = Path(__file__).resolve().parents[1]
BIN = Path(sys.executable).parent

# Reads "name ip" lines; for each, from the moment it reads it, polls until the name resolves to ip and
# ip:80 accepts a connection; prints the seconds that took.
PROBE = """
import socket, sys, time
for line in sys.stdin:
    name, ip = line.split()
    start = time.perf_counter()
    while True:
        try:
            if socket.gethostbyname(name) == ip:
                socket.create_connection((ip, 80), timeout=0.2).close()
                break
        except OSError:
            pass
        time.sleep(0.002)
    print(time.perf_counter() - start, flush=True)
"""
SERVICE = """apiVersion: v1
kind: Service
metadata:
  name: {name}
spec:
  clusterIP: {ip}
  selector:
    app: web
  ports:
    - port: 80
      targetPort: 80
"""
POD = """apiVersion: v1
kind: Pod
metadata:
  name: {name}
  labels: {labels}
spec:
  nodeName: {node}
  containers:
    - name: c
      image: busybox
"""


def pct(values: list[float], q: float) -> float:
    """In milliseconds, of values in seconds."""
    return percentile(values, q) * 1000


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--services", type=int, default=200)
    args = parser.parse_args()
    count = args.services
    with tempfile.TemporaryDirectory(prefix="pinet-bench-e2e-") as tmp, contextlib.ExitStack() as labs:
        base = 12_000 + (os.getpid() % 25) * 200  # ports of their own, below the ephemeral range
        tls = labs.enter_context(Lab(Path(tmp) / "tls", base, insecure=False))
        plain = labs.enter_context(Lab(Path(tmp) / "plain", base + 100, insecure=True))
        results: dict[str, tuple[list[float], list[float]]] = {"TLS": ([], []), "plaintext": ([], [])}
        for i in range(2 * count):
            pair = ((tls, "TLS"), (plain, "plaintext"))
            for lab, mode in pair if i % 2 == 0 else reversed(pair):
                via_api = i >= count
                results[mode][1 if via_api else 0].append(lab.create(i, via_api))
    print(f"{count} services created one after another, their pod already running; the time until, in a pod")
    print("on the other host, the name resolves through its resolv.conf and the ClusterIP answers")
    print("(the stack as it runs, TLS and mTLS everywhere with etcd's RBAC, beside `pinet stack --insecure`,")
    print("side by side, one service in each in turn):")
    for label, index in (("from starting `pi create -f`", 0), ("from calling CreateService", 1)):
        secure, insecure = results["TLS"][index], results["plaintext"][index]
        print(f"  {label}:")
        for mode, values in (("TLS", secure), ("plaintext", insecure)):
            print(f"    {mode:9}  p50 {pct(values, 0.5):5.1f} ms, p99 {pct(values, 0.99):5.1f} ms, "
                  f"max {max(values) * 1000:.0f} ms")  # fmt: skip
        print(
            f"    TLS/plaintext: p50 {pct(secure, 0.5) / pct(insecure, 0.5):.2f}, "
            f"p99 {pct(secure, 0.99) / pct(insecure, 0.99):.2f}"
        )
    print("  (a `pi` process takes ~150-400 ms to start)")
    print("  target: p99 under 250 ms from CreateService (Kubernetes' network programming SLO: 30 s);")
    print("  TLS costs at most 15%")


class Lab:
    """One local stack with a web pod on host 1 and a probing client pod on
    host 2."""

    def __init__(self, state: Path, offset: int, insecure: bool) -> None:
        self.state, self.offset, self.insecure = state, offset, insecure
        self.lab = f"b{os.getpid() % 1000:03d}{int(insecure)}"
        self.plain = ["--insecure"] if insecure else []
        self.env = {**os.environ, "PINET_API": f"127.0.0.1:{7700 + offset}", "PINET_TOKEN_FILE": str(state / "token"),
                    "PINET_CA": str(state / "pki" / "ca.crt")}  # fmt: skip

    def __enter__(self) -> Lab:
        self.state.mkdir(parents=True)
        self.stack = subprocess.Popen(
            [str(BIN / "pinet"), "stack", "--state-dir", str(self.state), "--etcd-port", str(free_port()),
             "--port-offset", str(self.offset), "--lab", self.lab, *self.plain],
            stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True, cwd=ROOT,
        )  # fmt: skip
        try:
            self._setup()
        except BaseException:
            self.__exit__()
            raise
        return self

    def __exit__(self, *exc: object) -> None:
        probe = getattr(self, "probe", None)
        if probe is not None:
            probe.kill()
        channel = getattr(self, "channel", None)
        if channel is not None:
            channel.close()
        self.stack.send_signal(2)
        self.stack.communicate(timeout=60)

    def pi(self, *argv: str) -> str:
        return subprocess.run([str(BIN / "pi"), *self.plain, *argv], capture_output=True, text=True, env=self.env,
                              check=True, cwd=self.state).stdout  # fmt: skip

    def _setup(self) -> None:
        assert self.stack.stdout is not None
        for line in self.stack.stdout:
            if "Press Ctrl-C" in line:
                break
        else:
            raise SystemExit("the stack did not start")
        lab, state = self.lab, self.state
        (state / "web.yml").write_text(POD.format(name="web", labels="{app: web}", node=f"pinet-{lab}-h1"))
        (state / "client.yml").write_text(POD.format(name="client", labels="{role: client}", node=f"pinet-{lab}-h2"))
        self.pi("create", "-f", "web.yml")
        self.pi("create", "-f", "client.yml")
        deadline = time.monotonic() + 60
        while self.pi("get", "pods").count("Running") < 2:
            if time.monotonic() > deadline:
                raise SystemExit("the pods did not start")
            time.sleep(0.2)
        self.pi("exec", "web", "--", str(BIN / "pinet"), "web", "web")
        self.probe = subprocess.Popen(
            [str(BIN / "pi"), *self.plain, "exec", "client", "--", sys.executable, "-c", PROBE],
            stdin=subprocess.PIPE, stdout=subprocess.PIPE, text=True, env=self.env,
        )  # fmt: skip
        address = self.env["PINET_API"]
        self.channel = (
            grpc.insecure_channel(address)
            if self.insecure
            else grpc.secure_channel(address, grpc.ssl_channel_credentials((state / "pki/ca.crt").read_bytes()))
        )
        self.stub = network_pb2_grpc.NetworkServiceStub(self.channel)
        self.token = (state / "token").read_text().strip()

    def create(self, i: int, via_api: bool) -> float:
        """Seconds from asking for service i until the client pod reaches it."""
        assert self.probe.stdin is not None and self.probe.stdout is not None
        name, ip = f"svc-{i}", f"10.244.{250 + i // 250}.{i % 250 + 1}"
        self.probe.stdin.write(f"{name} {ip}\n")
        self.probe.stdin.flush()
        if not via_api:
            (self.state / f"{name}.yml").write_text(SERVICE.format(name=name, ip=ip))
            self.pi("create", "-f", f"{name}.yml")
        else:
            # The same through the API, without the CLI's own start-up.
            svc = objects_pb2.Service()
            svc.metadata.name = name
            svc.spec.cluster_ip = ip
            svc.spec.selector["app"] = "web"
            svc.spec.ports.add(port=80, target_port=80)
            self.stub.CreateService(network_pb2.CreateServiceRequest(service=svc),
                                    metadata=(("authorization", f"Bearer {self.token}"),))  # fmt: skip
        return float(self.probe.stdout.readline())


if __name__ == "__main__":
    main()
