"""`pi`: the user's command line for pinet, in the manner of kubectl."""

from __future__ import annotations

import argparse
import functools
import json
import os
import sys
from collections.abc import Sequence
from pathlib import Path
from typing import Any

# The CLI says what went wrong in one line of its own; grpc's C core would
# otherwise log each failed TLS handshake to stderr as well.
os.environ.setdefault("GRPC_VERBOSITY", "NONE")

import grpc
import yaml
from google.protobuf.message import Message

from pinet.api.common.v1 import meta_pb2
from pinet.api.network.v1 import network_pb2, objects_pb2
from pinet.cli import kinds, manifests, tables
from pinet.cli.client import Client, CliError, fail, open_channel
from pinet.cli.kinds import Kind
from pinet.objects import protocol as transport

DEFAULT_API = "127.0.0.1:7700"


# ----------------------------------------------------------------- output


def emit(objs: Sequence[Message], output: str, kind: Kind, single: bool) -> None:
    if output in ("yaml", "json"):
        rendered = [manifests.render(o) for o in objs]
        doc: Any = rendered[0] if single else {"apiVersion": "v1", "kind": "List", "items": rendered}
        if output == "json":
            print(json.dumps(doc, indent=2))
        else:
            print(yaml.safe_dump(doc, sort_keys=False).rstrip())
        return
    if output == "name":
        for o in objs:
            print(f"{kind.name}/{kind.name_of(o)}")
        return
    wide = output == "wide"
    if not objs:
        print("No resources found.", file=sys.stderr)
        return
    print(kind.rows(objs, wide))


# --------------------------------------------------------------- commands


def read_manifests(paths: Sequence[str]) -> list[manifests.Document]:
    docs = []
    for path in paths:
        if path == "-":
            text, source = sys.stdin.read(), "<stdin>"
        else:
            try:
                text, source = Path(path).read_text(), path
            except OSError as exc:
                fail(f"cannot read {path}: {exc.strerror}")
        try:
            docs += manifests.load_all(text, source)
        except manifests.ManifestError as exc:
            fail(str(exc))
    return docs


def manifest_kind(c: Client, doc: manifests.Document) -> Kind:
    """The document's kind, its object put in the client's namespace when
    it names none."""
    obj: Any = doc.obj
    if c.namespace and not obj.metadata.namespace and doc.kind != "Namespace":
        obj.metadata.namespace = c.namespace
    return kinds.BY_MANIFEST[doc.kind]


def create_document(c: Client, doc: manifests.Document) -> Message:
    kind = manifest_kind(c, doc)
    assert kind.create is not None
    return kind.create(c, doc.obj)


def cmd_create(c: Client, args: argparse.Namespace) -> None:
    if args.what == "fip":
        fip = c(
            c.api.AllocateFloatingIP,
            network_pb2.AllocateFloatingIPRequest(address=args.address or "", description=args.description or ""),
        )
        print(f"fip/{fip.address}")
        return
    if args.what:
        fail(f"pi create: unknown resource {args.what!r}; use `pi create fip` or `pi create -f FILE`")
    if not args.filename:
        fail("pi create: give -f FILE (or -f - for stdin), or `pi create fip`")
    for doc in read_manifests(args.filename):
        created = create_document(c, doc)
        print(f"{doc.kind.lower()}/{kinds.BY_MANIFEST[doc.kind].name_of(created)}")


def cmd_apply(c: Client, args: argparse.Namespace) -> None:
    for doc in read_manifests(args.filename):
        kind = manifest_kind(c, doc)
        obj: Any = doc.obj
        name, namespace = obj.metadata.name, obj.metadata.namespace
        if not c.found(functools.partial(kind.get, c, name, namespace)):
            created = create_document(c, doc)
            print(f"{doc.kind.lower()}/{kind.name_of(created)} created")
            continue
        assert kind.update is not None
        kind.update(c, obj)
        print(f"{doc.kind.lower()}/{obj.metadata.name} configured")


def cmd_get(c: Client, args: argparse.Namespace) -> None:
    kind = kinds.lookup(args.kind)
    options = meta_pb2.ListOptions(
        namespace="" if args.all_namespaces else (c.namespace or "default"), label_selector=args.selector or ""
    )
    objs = [kind.get(c, name, "") for name in args.names] if args.names else kind.list(c, options)
    emit(objs, args.output or "", kind, single=bool(args.names) and len(args.names) == 1)


def cmd_describe(c: Client, args: argparse.Namespace) -> None:
    kind = kinds.lookup(args.kind)
    for i, name in enumerate(args.names):
        if i:
            print()
        if kind.describe is not None:
            print(kind.describe(c, name))
        else:
            print(yaml.safe_dump(manifests.render(kind.get(c, name, "")), sort_keys=False).rstrip())


def cmd_delete(c: Client, args: argparse.Namespace) -> None:
    targets: list[tuple[Kind, str]] = []
    if args.filename:
        for doc in read_manifests(args.filename):
            targets.append((kinds.BY_MANIFEST[doc.kind], doc.obj.metadata.name))  # type: ignore[attr-defined]
    elif args.kind:
        kind = kinds.lookup(args.kind)
        if not args.names:
            fail(f"pi delete {args.kind}: give the name(s) to delete")
        targets += [(kind, name) for name in args.names]
    else:
        fail("pi delete: give KIND NAME... or -f FILE")
    for kind, name in targets:
        if kind.delete is None:
            fail(f"pi delete: {kind.name} cannot be deleted")
        kind.delete(c, name)
        print(f"{kind.name}/{name} deleted")


def cmd_expose(c: Client, args: argparse.Namespace) -> None:
    kind = kinds.lookup(args.kind)
    if kind.selector is None:
        fail("pi expose: only deployments and pods can be exposed")
    selector = kind.selector(c, args.name)
    types = {"ClusterIP": 1, "NodePort": 2, "LoadBalancer": 3}
    if args.type not in types:
        fail(f"--type must be one of {', '.join(types)}")
    target: dict[str, Any] = {}
    if args.target_port:
        if args.target_port.isdigit():
            target["target_port"] = int(args.target_port)
        else:
            target["target_port_name"] = args.target_port
    svc = objects_pb2.Service(
        metadata=meta_pb2.ObjectMeta(name=args.service_name or args.name, namespace=c.namespace),
        spec=objects_pb2.ServiceSpec(
            type=types[args.type],  # type: ignore[arg-type]
            selector=selector,
            load_balancer_ip=args.load_balancer_ip or "",
            ports=[
                objects_pb2.ServicePort(
                    port=args.port, protocol=transport.from_manifest(args.protocol) or transport.TCP,
                    **target,
                )
            ],
        ),
    )  # fmt: skip
    created = c(c.api.CreateService, network_pb2.CreateServiceRequest(service=svc))
    print(f"service/{created.metadata.name}")


def cmd_scale(c: Client, args: argparse.Namespace) -> None:
    if kinds.lookup(args.kind).name != "deployment":
        fail("pi scale: only deployments can be scaled")
    c(c.api.ScaleDeployment, network_pb2.ScaleDeploymentRequest(ref=c.ref(args.name), replicas=args.replicas))
    print(f"deployment/{args.name} scaled")


def cmd_exec(c: Client, args: argparse.Namespace) -> None:
    """Run a command in the pod's network namespace, on the machine that hosts
    it (the local stack's hosts all live on this one)."""
    command = args.command_line[1:] if args.command_line[:1] == ["--"] else args.command_line
    if not command:
        fail("pi exec POD -- COMMAND [ARG...]: give the command to run")
    pod = c(c.api.GetPod, c.ref(args.pod))
    path = pod.status.netns
    if not pod.status.network_ready or not path:
        fail(f"pod {args.pod} is not wired yet ({pod.status.message or 'pending'})")
    if not Path(path).exists():
        fail(f"pod {args.pod} runs on node {pod.spec.node_name}, whose namespaces are not on this machine")
    if path.startswith("/run/netns/"):
        # `ip netns exec` also puts the pod's resolv.conf in place.
        argv = ["ip", "netns", "exec", Path(path).name, *command]
    else:
        argv = ["nsenter", f"--net={path}", "--", *command]
    sys.stdout.flush()
    try:
        os.execvp(argv[0], argv)
    except OSError as exc:
        fail(f"cannot run {argv[0]}: {exc.strerror}")


def cmd_whoami(c: Client, args: argparse.Namespace) -> None:
    me = c(c.api.WhoAmI, network_pb2.WhoAmIRequest())
    net = me.tenant_info.network
    print(f"tenant {me.tenant}{' (admin)' if me.admin else ''}: network {net.cidr}, services {net.service_cidr}, "
          f"gateway {net.gateway}, DNS {net.dns_ip}, VNI {net.vni}")  # fmt: skip
    print(f"connected to {c.server} over {'TLS, server verified' if c.tls else 'PLAINTEXT (--insecure)'}")


def cmd_admin(c: Client, args: argparse.Namespace) -> None:
    if args.admin_command == "token":
        resp = c(c.admin.IssueToken, network_pb2.IssueTokenRequest(tenant=args.tenant, admin=args.admin))
        print(resp.token)
    elif args.admin_command == "tenants":
        resp = c(c.admin.ListTenants, network_pb2.ListTenantsRequest())
        rows = [[t.name, t.network.cidr, str(t.network.vni), tables.age(t.creation_timestamp)] for t in resp.tenants]
        print(tables.table(["NAME", "NETWORK", "VNI", "AGE"], rows))
    else:
        fail("pi admin: token TENANT [--admin] | tenants")


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="pi", description="Use the pinet network API.")
    parser.add_argument(
        "--server", default=os.environ.get("PINET_API", DEFAULT_API), help="API address [env PINET_API]"
    )
    parser.add_argument("--token", default="", help="bearer token [env PINET_TOKEN, PINET_TOKEN_FILE, .pinet/token]")
    parser.add_argument(
        "--as", dest="as_tenant", default=os.environ.get("PINET_TENANT", ""), help="(admin) act as TENANT"
    )
    parser.add_argument("-n", "--namespace", default="", help="namespace (default: default)")
    parser.add_argument(
        "--ca", default="", help="CA certificate to verify the API with [env PINET_CA, .pinet/pki/ca.crt, system]"
    )
    parser.add_argument("--server-name", default="", help="the name the API's certificate must carry")
    parser.add_argument(
        "--insecure", action="store_true", help="plaintext to a loopback API run with --insecure (benchmarks)"
    )
    sub = parser.add_subparsers(dest="command", metavar="COMMAND")

    p = sub.add_parser("create", help="create a floating IP (create fip) or objects from manifests (-f)")
    p.add_argument("what", nargs="?", default="", help="fip")
    p.add_argument("-f", "--filename", action="append", help="manifest file, - for stdin")
    p.add_argument("--address", help="(fip) a specific address of the pool")
    p.add_argument("--description", help="(fip) a note kept with it")
    p.set_defaults(func=cmd_create)

    p = sub.add_parser("apply", help="create or update objects from manifests")
    p.add_argument("-f", "--filename", action="append", required=True, help="manifest file, - for stdin")
    p.set_defaults(func=cmd_apply)

    for name, func, help_text in (
        ("get", cmd_get, "list objects"),
        ("describe", cmd_describe, "show objects in detail"),
    ):
        p = sub.add_parser(name, help=help_text)
        p.add_argument("kind", help="pods, svc, ep, fip, nodes, deploy")
        p.add_argument("names", nargs="*" if name == "get" else "+", help="names")
        if name == "get":
            p.add_argument("-o", "--output", choices=["wide", "yaml", "json", "name"], help="output format")
            p.add_argument("-l", "--selector", help="label selector, e.g. app=nginx")
            p.add_argument("-A", "--all-namespaces", action="store_true", help="every namespace")
        p.set_defaults(func=func)

    p = sub.add_parser("delete", help="delete objects or release a floating IP")
    p.add_argument("kind", nargs="?", help="pod, svc, deploy, fip")
    p.add_argument("names", nargs="*", help="names (addresses for fip)")
    p.add_argument("-f", "--filename", action="append", help="delete what a manifest describes")
    p.set_defaults(func=cmd_delete)

    p = sub.add_parser("expose", help="create a service selecting a deployment's or pod's pods")
    p.add_argument("kind", help="deployment or pod")
    p.add_argument("name")
    p.add_argument("--port", type=int, required=True, help="service port")
    p.add_argument("--target-port", default="", help="pod port (number or name); default: --port")
    p.add_argument("--type", default="ClusterIP", help="ClusterIP, NodePort or LoadBalancer")
    p.add_argument("--name", dest="service_name", default="", help="service name (default: the exposed object's)")
    p.add_argument("--protocol", default="TCP", choices=["TCP", "UDP"])
    p.add_argument("--load-balancer-ip", default="", help="floating IP for --type LoadBalancer")
    p.set_defaults(func=cmd_expose)

    p = sub.add_parser("scale", help="set a deployment's replicas")
    p.add_argument("kind")
    p.add_argument("name")
    p.add_argument("--replicas", type=int, required=True)
    p.set_defaults(func=cmd_scale)

    p = sub.add_parser("exec", help="run a command in a pod's network namespace (on the pod's machine)")
    p.add_argument("pod")
    p.add_argument("command_line", nargs=argparse.REMAINDER, help="-- COMMAND [ARG...]")
    p.set_defaults(func=cmd_exec)

    p = sub.add_parser("whoami", help="show the tenant of your token and its network")
    p.set_defaults(func=cmd_whoami)

    p = sub.add_parser("admin", help="administration (needs an admin token)")
    p.add_argument("admin_command", choices=["token", "tenants"])
    p.add_argument("tenant", nargs="?", default="")
    p.add_argument("--admin", action="store_true", help="(token) issue an admin token")
    p.set_defaults(func=cmd_admin)

    sub.add_parser("status", help="check that the network API answers")
    sub.add_parser("version", help="print the version")
    return parser


def main(argv: list[str] | None = None) -> None:
    parser = build_parser()
    args = parser.parse_args(argv)
    try:
        if args.command == "version":
            from pinet import __version__

            print(f"pi {__version__}")
            return
        if args.command == "status":
            from grpc_health.v1 import health_pb2, health_pb2_grpc

            try:
                with open_channel(args) as channel:
                    resp = health_pb2_grpc.HealthStub(channel).Check(health_pb2.HealthCheckRequest(), timeout=5)
                status = health_pb2.HealthCheckResponse.ServingStatus.Name(resp.status)
            except grpc.RpcError:
                status = "UNREACHABLE"
            print(f"{args.server}: {status}")
            sys.exit(0 if status == "SERVING" else 1)
        if args.command is None:
            parser.print_help()
            sys.exit(2)
        args.func(Client(args), args)
    except CliError as exc:
        print(f"error: {exc}" if not str(exc).startswith("Error from server") else str(exc), file=sys.stderr)
        sys.exit(1)
    except KeyboardInterrupt:
        sys.exit(130)
