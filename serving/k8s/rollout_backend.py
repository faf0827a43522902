"""Rollouts on Kubernetes: the traffic backend and the state store for a live SeldonDeployment.

- Weight changes are one JSON patch of spec.predictors[].traffic (custom resources refuse
  strategic-merge patches).
- Adding or removing predictors renders the chart with the new predictor list and server-side
  applies the SeldonDeployment, so a canary looks exactly like `helm install` would make it.
- The rollout status lives in an annotation of the SeldonDeployment, written with a merge patch
  that carries the resourceVersion read: a concurrent writer gets 409, never a silent overwrite.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

from kubernetes.client.exceptions import ApiException
from kubernetes.dynamic import DynamicClient

from ..rollout.backends import plan_apply
from ..rollout.state import RolloutStatus, StaleState
from ..spec import Predictor, load_spec, spec_to_values
from . import chart
from .apply import apply_objects
from .client import SELDON_API, connect, describe, resource
from .errors import ClusterError
from .traffic import set_traffic
from .wait import get_sdep

STATUS_ANNOTATION = "serving.rollout/status"
STATE_FIELD_MANAGER = "serving-rollout"


class KubernetesBackend:
    def __init__(self, values_path: str | Path, *, kubeconfig: str | None = None,
                 context: str | None = None, api: DynamicClient | None = None) -> None:
        self.spec = load_spec(values_path)
        self.namespace = self.spec.deployment.namespace
        self.name = self.spec.deployment.name
        self.api = api or connect(kubeconfig, context)

    def sdep(self) -> dict[str, Any]:
        return get_sdep(self.api, self.namespace, self.name)

    def get_predictors(self) -> list[Predictor]:
        """The live predictors, with what the cluster object does not carry (resources, HPA)
        taken from the values file's predictor of the same name."""
        from_values = {p.name: p for p in self.spec.predictors}
        live = []
        for p in self.sdep()["spec"].get("predictors") or []:
            base = from_values.get(p["name"]) or Predictor(name=p["name"], version="unknown")
            version = (p.get("labels") or {}).get("version") or base.version
            live.append(base.model_copy(update={
                "version": version, "traffic": int(p.get("traffic", 0)),
                "shadow": bool(p.get("shadow", False)),
                "replicas": int(p.get("replicas", base.replicas))}))
        return live

    def set_routes(self, weights: dict[str, int], mirror_percent: int | None) -> None:
        set_traffic(self.api, self.namespace, self.name, weights, mirror_percent)

    def apply(self, predictors: list[Predictor]) -> None:
        first, replace = plan_apply(self.get_predictors(), predictors)
        if first is not None:
            self.set_routes(*first)
        if not replace:
            return
        values = spec_to_values(self.spec.model_copy(update={"predictors": predictors}))
        rendered = chart.render(values, source="rollout predictors")
        sdep = [o for o in rendered.objects if o["kind"] == "SeldonDeployment"]
        # The controller owns the traffic it set with patches: take those fields back.
        apply_objects(self.api, sdep, force_conflicts=True, progress=lambda _: None)


class AnnotationStateStore:
    """RolloutStatus in an annotation of the SeldonDeployment."""

    def __init__(self, backend: KubernetesBackend) -> None:
        self.backend = backend

    def load(self) -> RolloutStatus | None:
        annotations = self.backend.sdep()["metadata"].get("annotations") or {}
        text = annotations.get(STATUS_ANNOTATION)
        return RolloutStatus.model_validate_json(text) if text else None

    def save(self, status: RolloutStatus) -> RolloutStatus:
        sdep = self.backend.sdep()
        text = (sdep["metadata"].get("annotations") or {}).get(STATUS_ANNOTATION)
        current = RolloutStatus.model_validate_json(text) if text else None
        if current is not None and current.revision != status.revision:
            raise StaleState(status.revision, current.revision)
        saved = status.model_copy(update={"revision": status.revision + 1})
        patch = {"metadata": {
            "resourceVersion": sdep["metadata"]["resourceVersion"],  # optimistic concurrency
            "annotations": {STATUS_ANNOTATION: json.dumps(saved.model_dump(mode="json"))}}}
        try:
            self.backend.api.patch(
                resource(self.backend.api, SELDON_API, "SeldonDeployment"), body=patch,
                name=self.backend.name, namespace=self.backend.namespace,
                content_type="application/merge-patch+json", field_manager=STATE_FIELD_MANAGER)
        except ApiException as e:
            if e.status == 409:
                raise StaleState(status.revision, -1) from None
            raise ClusterError(f"cannot save the rollout status on SeldonDeployment "
                               f"{self.backend.namespace}/{self.backend.name}: {describe(e)}"
                               ) from None
        return saved
