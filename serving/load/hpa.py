"""Follow each predictor's HorizontalPodAutoscaler on a cluster during a load test.

The Seldon operator gives a predictor with an `hpaSpec` one HPA per component Deployment, named
like the Deployment it scales: <deployment>-<predictor>-<index>-<containers>. `hpa_replicas`
lists the namespace's HPAs (autoscaling/v1, served by every cluster), matches each to a predictor
by that prefix of its scaleTargetRef, and sums current and desired replicas per predictor.
Predictors without an HPA do not appear (their replica count is fixed by the values).
"""

from __future__ import annotations

from collections.abc import Iterable

from kubernetes.dynamic import DynamicClient

from ..k8s.client import api_errors, resource
from .replicas import Counts, ReplicaFollower

HPA_API = "autoscaling/v1"


def predictor_of_target(target: str, deployment: str, predictors: Iterable[str]) -> str | None:
    """The predictor whose Deployments are named <deployment>-<predictor>-...; the longest name
    wins, so 'stable' does not claim 'stable-2'."""
    for name in sorted(predictors, key=len, reverse=True):
        if target.startswith(f"{deployment}-{name}-"):
            return name
    return None


def hpa_replicas(
    api: DynamicClient, namespace: str, deployment: str, predictors: Iterable[str]
) -> Counts:
    names = list(predictors)
    with api_errors(f"listing HorizontalPodAutoscalers in namespace {namespace}"):
        items = resource(api, HPA_API, "HorizontalPodAutoscaler").get(namespace=namespace).to_dict()
    counts: dict[str, tuple[int, int | None]] = {}
    for hpa in items.get("items") or []:
        target = ((hpa.get("spec") or {}).get("scaleTargetRef") or {}).get("name", "")
        predictor = predictor_of_target(target, deployment, names)
        if predictor is None:
            continue
        status = hpa.get("status") or {}
        current, desired = counts.get(predictor, (0, 0))
        counts[predictor] = (
            current + int(status.get("currentReplicas") or 0),
            (desired or 0) + int(status.get("desiredReplicas") or 0),
        )
    return counts


def follow_hpas(
    api: DynamicClient,
    namespace: str,
    deployment: str,
    predictors: Iterable[str],
    interval_s: float = 2.0,
) -> ReplicaFollower:
    """A follower (use it as a context manager around the run) sampling the HPAs every
    `interval_s` seconds; its `samples` are replicas over time per predictor."""
    names = list(predictors)

    def source() -> Counts:
        return hpa_replicas(api, namespace, deployment, names)

    return ReplicaFollower(source, interval_s)


def follow_cluster(
    namespace: str, deployment: str, kubeconfig: str | None = None, context: str | None = None
) -> tuple[ReplicaFollower, str]:
    """For `serving loadtest --cluster`: a follower of the deployment's HPAs, and the weights its
    SeldonDeployment sets now ('stable=90,canary=10')."""
    from ..k8s.client import connect
    from ..k8s.traffic import get_traffic

    api = connect(kubeconfig, context)
    traffic = get_traffic(api, namespace, deployment)
    predictors = list(traffic.weights) + ([traffic.shadow] if traffic.shadow else [])
    weights = ",".join(f"{k}={v}" for k, v in traffic.weights.items())
    return follow_hpas(api, namespace, deployment, predictors), weights
