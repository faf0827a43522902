"""Wait until a SeldonDeployment is Available, saying what is happening; when it fails or times
out, say why: the conditions that are not True, the operator's warning events, and each pod's
reasons (ImagePullBackOff, CrashLoopBackOff, Unschedulable ...)."""

from __future__ import annotations

import time
from collections.abc import Callable
from typing import Any

from kubernetes.client.rest import ApiException
from kubernetes.dynamic import DynamicClient
from kubernetes.dynamic.exceptions import NotFoundError

from .client import SELDON_API, api_errors, describe, resource
from .errors import ClusterError, NotAvailable

Progress = Callable[[str], None]


def get_sdep(api: DynamicClient, namespace: str, name: str) -> dict[str, Any]:
    res = resource(api, SELDON_API, "SeldonDeployment")
    try:
        return dict(api.get(res, name=name, namespace=namespace).to_dict())
    except NotFoundError:
        raise ClusterError(
            f"SeldonDeployment {namespace}/{name} not found; deploy it with 'serving deploy'"
        ) from None
    except ApiException as e:
        raise ClusterError(
            f"cannot read SeldonDeployment {namespace}/{name}: {describe(e)}"
        ) from None


def is_available(sdep: dict[str, Any]) -> bool:
    status = sdep.get("status") or {}
    observed = status.get("observedGeneration")
    generation = (sdep.get("metadata") or {}).get("generation")
    # An Available state from before our change does not count.
    current = observed is None or generation is None or observed >= generation
    return status.get("state") == "Available" and current


def progress_line(sdep: dict[str, Any]) -> str:
    status = sdep.get("status") or {}
    name = sdep["metadata"]["name"]
    parts = []
    for deployment, s in sorted((status.get("deploymentStatus") or {}).items()):
        short = deployment.removeprefix(f"{name}-")
        parts.append(f"{short} {s.get('availableReplicas', 0)}/{s.get('replicas', 0)}")
    state = status.get("state") or "Pending (no status from the operator yet)"
    return f"{name}: {state}" + (f"  [{', '.join(parts)}]" if parts else "")


def _pod_reasons(pod: dict[str, Any]) -> list[str]:
    name = pod["metadata"]["name"]
    status = pod.get("status") or {}
    reasons = []
    for c in status.get("conditions") or []:
        if c.get("type") == "PodScheduled" and c.get("status") != "True":
            reasons.append(f"pod {name}: not scheduled ({c.get('reason')}): {c.get('message')}")
    statuses = (status.get("initContainerStatuses") or []) + (status.get("containerStatuses") or [])
    for cs in statuses:
        state = cs.get("state") or {}
        waiting, terminated = state.get("waiting"), state.get("terminated")
        if waiting and waiting.get("reason") not in (None, "PodInitializing", "ContainerCreating"):
            reasons.append(
                f"pod {name} container {cs['name']}: {waiting['reason']}: {waiting.get('message', '')}"
            )
        elif terminated and terminated.get("exitCode", 0) != 0:
            reasons.append(
                f"pod {name} container {cs['name']}: terminated {terminated.get('reason')} "
                f"(exit {terminated.get('exitCode')}): {terminated.get('message', '')}"
            )
        elif not cs.get("ready") and cs.get("restartCount", 0) > 0:
            reasons.append(f"pod {name} container {cs['name']}: restarted {cs['restartCount']}x")
    return [r.rstrip(": ") for r in reasons]


def diagnose(api: DynamicClient, sdep: dict[str, Any]) -> list[str]:
    """Why a SeldonDeployment is not Available, most telling first."""
    meta, status = sdep["metadata"], sdep.get("status") or {}
    namespace, name = meta["namespace"], meta["name"]
    lines = []
    if status.get("description"):
        lines.append(f"operator: {status['description']}")
    for c in status.get("conditions") or []:
        if c.get("status") != "True":
            lines.append(
                f"condition {c.get('type')}={c.get('status')}"
                + (f" ({c['reason']})" if c.get("reason") else "")
                + (f": {c['message']}" if c.get("message") else "")
            )
    with api_errors(f"cannot list the pods of {namespace}/{name}"):
        pods = api.get(
            resource(api, "v1", "Pod"),
            namespace=namespace,
            label_selector=f"seldon-deployment-id={name}",
        ).to_dict()
    for pod in pods.get("items") or []:
        lines += _pod_reasons(pod)
    with api_errors(f"cannot list the events of {namespace}/{name}"):
        events = api.get(
            resource(api, "v1", "Event"),
            namespace=namespace,
            field_selector=f"involvedObject.name={name},type=Warning",
        ).to_dict()
    for ev in (events.get("items") or [])[-5:]:
        lines.append(f"event {ev.get('reason')}: {ev.get('message')}")
    return lines or ["no failing condition, pod or event reported yet"]


def wait_available(
    api: DynamicClient,
    namespace: str,
    name: str,
    *,
    timeout: float = 600,
    interval: float = 5,
    progress: Progress = print,
    clock: Callable[[], float] = time.monotonic,
    sleep: Callable[[float], None] = time.sleep,
) -> dict[str, Any]:
    """Poll until state is Available for the current generation; raise NotAvailable otherwise."""
    deadline = clock() + timeout
    last = ""
    while True:
        sdep = get_sdep(api, namespace, name)
        line = progress_line(sdep)
        if line != last:
            progress(line)
            last = line
        if is_available(sdep):
            return sdep
        state = (sdep.get("status") or {}).get("state")
        if state == "Failed" or clock() >= deadline:
            why = "failed" if state == "Failed" else f"is not Available after {timeout:g}s"
            raise NotAvailable(
                f"SeldonDeployment {namespace}/{name} {why}:\n"
                + "\n".join(f"  {d}" for d in diagnose(api, sdep))
            )
        sleep(interval)
