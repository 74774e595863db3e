"""The pinet.netagent.v1.AgentService servicer: the CNI plugin's calls.
Attach and Detach hand the pod to the agent's reconciler and wait for it,
so the reconciler is the only writer to the kernel."""

from __future__ import annotations

from typing import Any

import grpc

from pinet.api.netagent.v1 import netagent_pb2, netagent_pb2_grpc
from pinet.etcd.keyspace import PODS
from pinet.runtime.errors import failed_precondition, invalid
from pinet.runtime.paging import page_after, page_size
from pinet.runtime.reconcile import FULL
from pinet.runtime.servicer import unary
from services.netagent import desired
from services.netagent.agent import Agent

Context = grpc.aio.ServicerContext[Any, Any]


class AgentServicer(netagent_pb2_grpc.AgentServiceServicer):
    def __init__(self, agent: Agent) -> None:
        self.agent = agent

    @unary
    async def Attach(self, request: netagent_pb2.AttachRequest, context: Context) -> netagent_pb2.AttachResponse:
        agent = self.agent
        pod = agent.find_pod(request.pod)
        uid = pod.metadata.uid
        runtime = pod.metadata.annotations.get(desired.RUNTIME_NETNS) == "runtime"
        if request.interface_name and request.interface_name != "eth0":
            raise invalid("interface_name: pinet wires eth0 only")
        if request.netns_path:
            if not runtime:
                raise invalid(
                    f"netns_path: pod {pod.metadata.name} is not runtime-managed "
                    f"(annotate it {desired.RUNTIME_NETNS}: runtime)"
                )
            if not request.netns_path.startswith("/run/netns/") and not request.netns_path.startswith(
                "/var/run/netns/"
            ):
                raise invalid("netns_path: must be a named namespace under /run/netns")
            path = request.netns_path.replace("/var/run/netns/", "/run/netns/")
            previous = agent.attached.get(uid)
            if previous and previous != path:
                raise failed_precondition(f"pod {pod.metadata.name} is attached to {previous} already")
            agent.attached[uid] = path
        elif runtime and uid not in agent.attached:
            raise invalid("netns_path: required for a runtime-managed pod")
        # The reconciler wires the pod (it is the only writer to the kernel);
        # the answer waits for that.
        changes = await agent.settle_pod(pod)
        want = agent.wanted()
        wiring = want.pods.get(uid)
        if wiring is None:
            raise failed_precondition(f"pod {pod.metadata.name} changed while it was being wired; retry")
        return netagent_pb2.AttachResponse(
            attachment=agent.attachment(wiring, want.routers[wiring.vni]), created=bool(changes)
        )

    @unary
    async def Detach(self, request: netagent_pb2.DetachRequest, context: Context) -> netagent_pb2.DetachResponse:
        agent = self.agent
        ref = request.pod
        pod = agent.pods.get(PODS.key(ref.tenant, ref.namespace or "default", ref.name)) if ref.tenant else None
        uid = ref.uid or (pod.metadata.uid if pod is not None else "")
        if pod is not None and pod.metadata.annotations.get(desired.RUNTIME_NETNS) != "runtime":
            raise failed_precondition(f"pod {pod.metadata.name} is wired by the agent itself; delete the pod instead")
        if not uid or uid not in agent.attached:
            return netagent_pb2.DetachResponse(removed=False)
        agent.detaching[uid] = agent.attached.pop(uid)
        removed = bool(await agent.settle_pod(pod, uid))
        if pod is not None:
            m = pod.metadata
            await agent.reports.report(m.tenant, m.namespace, m.name, m.uid, False, "", "detached")
        agent.reconciler.enqueue(FULL)
        return netagent_pb2.DetachResponse(removed=removed)

    @unary
    async def Check(self, request: netagent_pb2.CheckRequest, context: Context) -> netagent_pb2.CheckResponse:
        agent = self.agent
        pod = agent.find_pod(request.pod)
        want = agent.wanted()
        wiring = want.pods.get(pod.metadata.uid)
        if wiring is None:
            return netagent_pb2.CheckResponse(healthy=False, problems=["the pod is not attached"])
        router = want.routers[wiring.vni]
        problems = await agent.kernel_thread.call(agent.kernel.pods.check, wiring, router.netns)
        return netagent_pb2.CheckResponse(
            healthy=not problems, problems=problems, attachment=agent.attachment(wiring, router)
        )

    @unary
    async def List(self, request: netagent_pb2.ListRequest, context: Context) -> netagent_pb2.ListResponse:
        want = self.agent.wanted()
        uids = sorted(uid for uid, w in want.pods.items() if not request.tenant or w.tenant == request.tenant)
        page, token = page_after(uids, str, request.page_token, page_size(request.page_size, 500, 5000))
        resp = netagent_pb2.ListResponse(next_page_token=token)
        for uid in page:
            wiring = want.pods[uid]
            resp.attachments.append(self.agent.attachment(wiring, want.routers[wiring.vni]))
        return resp
