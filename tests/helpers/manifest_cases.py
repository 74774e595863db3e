"""Malformed manifests, each with the field its rejection must name: the
table the validation unit tests and the API's end-to-end test share."""

from __future__ import annotations

POD = "apiVersion: v1\nkind: Pod\nmetadata: {{name: {name}{meta}}}\nspec: {spec}\n"
SVC = "apiVersion: v1\nkind: Service\nmetadata: {{name: {name}{meta}}}\nspec: {spec}\n"
DEP = "apiVersion: apps/v1\nkind: Deployment\nmetadata: {{name: web}}\nspec: {spec}\n"
C = "{containers: [{name: c, image: nginx}]}"


def pod(spec: str = C, name: str = "ok", meta: str = "") -> str:
    return POD.format(name=name, meta=meta, spec=spec)


def svc(spec: str, name: str = "web", meta: str = "") -> str:
    return SVC.format(name=name, meta=meta, spec=spec)


CASES: list[tuple[str, str, str]] = [
    # (what, manifest, field named in the message)
    ("pod name with capitals", pod(name="Nginx"), "metadata.name"),
    ("pod name too long", pod(name="a" * 254), "metadata.name"),
    ("pod name with underscore", pod(name="my_pod"), "metadata.name"),
    ("bad namespace", pod(meta=", namespace: Prod"), "metadata.namespace"),
    ("label key with spaces", pod(meta=", labels: {'bad key': x}"), "metadata.labels"),
    ("label value too long", pod(meta=", labels: {app: " + "x" * 64 + "}"), "metadata.labels"),
    ("label value not a string", pod(meta=", labels: {enabled: true}"), "metadata.labels.enabled"),
    ("no containers", pod(spec="{containers: []}"), "spec.containers"),
    ("container without image", pod(spec="{containers: [{name: c}]}"), "spec.containers[0].image"),
    (
        "duplicate container names",
        pod(spec="{containers: [{name: c, image: x}, {name: c, image: y}]}"),
        "spec.containers[1].name",
    ),
    (
        "container port zero",
        pod(spec="{containers: [{name: c, image: x, ports: [{containerPort: 0}]}]}"),
        "containerPort",
    ),
    (
        "container port too big",
        pod(spec="{containers: [{name: c, image: x, ports: [{containerPort: 70000}]}]}"),
        "containerPort",
    ),
    (
        "container port not a number",
        pod(spec="{containers: [{name: c, image: x, ports: [{containerPort: http}]}]}"),
        "containerPort",
    ),
    (
        "container port name too long",
        pod(spec="{containers: [{name: c, image: x, ports: [{name: a-very-long-port-name, containerPort: 80}]}]}"),
        "ports[0].name",
    ),
    (
        "bad container protocol",
        pod(spec="{containers: [{name: c, image: x, ports: [{containerPort: 80, protocol: ICMP}]}]}"),
        "protocol",
    ),
    ("bad hostname", pod(spec="{hostname: Web_1, containers: [{name: c, image: x}]}"), "spec.hostname"),
    (
        "service name starting with a digit",
        svc("{selector: {app: x}, ports: [{port: 80}]}", name="1web"),
        "metadata.name",
    ),
    ("service name with a dot", svc("{selector: {app: x}, ports: [{port: 80}]}", name="web.v1"), "metadata.name"),
    ("service without ports", svc("{selector: {app: x}}"), "spec.ports"),
    ("service port zero", svc("{ports: [{port: 0}]}"), "spec.ports[0].port"),
    ("service port too big", svc("{ports: [{port: 65536}]}"), "spec.ports[0].port"),
    ("bad service protocol", svc("{ports: [{port: 53, protocol: SCTP}]}"), "spec.ports[0].protocol"),
    ("two ports without names", svc("{ports: [{port: 80}, {port: 443}]}"), "spec.ports[0].name"),
    ("duplicate port names", svc("{ports: [{name: a, port: 80}, {name: a, port: 443}]}"), "spec.ports[1].name"),
    ("duplicate ports", svc("{ports: [{name: a, port: 80}, {name: b, port: 80}]}"), "spec.ports[1].port"),
    ("target port out of range", svc("{ports: [{port: 80, targetPort: 99999}]}"), "spec.ports[0].targetPort"),
    ("bad named target port", svc("{ports: [{port: 80, targetPort: Http_Port}]}"), "spec.ports[0].targetPort"),
    (
        "node port outside the range",
        svc("{type: NodePort, ports: [{port: 80, nodePort: 8080}]}"),
        "spec.ports[0].nodePort",
    ),
    ("node port on a ClusterIP service", svc("{ports: [{port: 80, nodePort: 30080}]}"), "spec.ports[0].nodePort"),
    ("unknown service type", svc("{type: Magic, ports: [{port: 80}]}"), "spec.type"),
    ("bad session affinity", svc("{sessionAffinity: Sticky, ports: [{port: 80}]}"), "spec.sessionAffinity"),
    (
        "affinity timeout too long",
        svc(
            "{sessionAffinity: ClientIP, ports: [{port: 80}],"
            " sessionAffinityConfig: {clientIP: {timeoutSeconds: 90000}}}"
        ),
        "timeoutSeconds",
    ),
    ("clusterIP not an address", svc("{clusterIP: ten.zero.zero.one, ports: [{port: 80}]}"), "spec.clusterIP"),
    ("clusterIP outside the service range", svc("{clusterIP: 10.244.0.50, ports: [{port: 80}]}"), "spec.clusterIP"),
    ("headless NodePort", svc("{type: NodePort, clusterIP: None, ports: [{port: 80}]}"), "spec.clusterIP"),
    ("LoadBalancer without an IP", svc("{type: LoadBalancer, ports: [{port: 80}]}"), "spec.loadBalancerIP"),
    ("loadBalancerIP on ClusterIP", svc("{loadBalancerIP: 203.0.113.9, ports: [{port: 80}]}"), "spec.loadBalancerIP"),
    ("bad selector label", svc("{selector: {'-app': x}, ports: [{port: 80}]}"), "spec.selector"),
    ("ExternalName without a name", svc("{type: ExternalName}"), "spec.externalName"),
    (
        "deployment with negative replicas",
        DEP.format(
            spec="{replicas: -1, selector: {matchLabels: {a: b}}, template: {metadata: {labels: {a: b}}, spec: "
            + C
            + "}}"
        ),
        "spec.replicas",
    ),
    (
        "deployment selector not matching",
        DEP.format(
            spec="{replicas: 1, selector: {matchLabels: {a: b}}, template: {metadata: {labels: {a: c}}, spec: "
            + C
            + "}}"
        ),
        "spec.template.metadata.labels",
    ),
    (
        "deployment without selector",
        DEP.format(spec="{replicas: 1, template: {metadata: {labels: {a: b}}, spec: " + C + "}}"),
        "spec.selector",
    ),
    ("unsupported kind", "apiVersion: v1\nkind: ConfigMap\nmetadata: {name: x}\n", "kind"),
    ("wrong apiVersion", "apiVersion: apps/v1\nkind: Pod\nmetadata: {name: x}\n", "apiVersion"),
    ("not a mapping", "- just\n- a list\n", "manifest"),
    ("spec is a list", "apiVersion: v1\nkind: Service\nmetadata: {name: x}\nspec: [1, 2]\n", "spec"),
]

# Refused by the API with the tenant's own data (its service range), not by
# the object's validation alone: run end to end only.
NEEDS_THE_TENANT = {"clusterIP outside the service range"}
