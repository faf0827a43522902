"""The Kubernetes traffic backend: read and set predictor weights and the shadow's mirror percent
on a live SeldonDeployment (the counterpart of the local router's admin API, for rollouts).

Custom resources take JSON patch, merge patch or server-side apply, never strategic-merge patch
(the kubernetes client's default for `patch`, answered with 415). We send a JSON patch: `test`
ops pin each index to the predictor name we read, so a concurrent reorder fails the patch instead
of moving traffic to the wrong predictor; `add` sets traffic even where it was omitted.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

from kubernetes.client.rest import ApiException
from kubernetes.dynamic import DynamicClient

from ..errors import SpecError
from ..spec import Predictor, Server, seldon_rule_violations
from .client import FIELD_MANAGER, SELDON_API, describe, resource
from .errors import ClusterError
from .wait import get_sdep


@dataclass(frozen=True)
class Traffic:
    weights: dict[str, int]
    """Percent of requests per non-shadow predictor, in spec order."""
    shadow: str | None
    """The shadow predictor's name, if there is one."""
    shadow_percent: int | None
    """Percent of requests mirrored to the shadow (None without a shadow)."""


def _traffic_of(sdep: dict[str, Any]) -> Traffic:
    predictors = sdep["spec"].get("predictors") or []
    shadow = next((p for p in predictors if p.get("shadow")), None)
    return Traffic(
        weights={p["name"]: int(p.get("traffic", 0)) for p in predictors if not p.get("shadow")},
        shadow=shadow["name"] if shadow else None,
        shadow_percent=int(shadow.get("traffic", 0)) if shadow else None,
    )


def get_traffic(api: DynamicClient, namespace: str, name: str) -> Traffic:
    return _traffic_of(get_sdep(api, namespace, name))


def _check(sdep: dict[str, Any], weights: dict[str, int], shadow_percent: int | None) -> None:
    current = _traffic_of(sdep)
    where = f"SeldonDeployment {sdep['metadata']['namespace']}/{sdep['metadata']['name']}"
    problems = []
    if set(weights) != set(current.weights):
        problems.append(
            f"weights: give exactly the non-shadow predictors {sorted(current.weights)}, "
            f"got {sorted(weights)}"
        )
    if shadow_percent is not None and current.shadow is None:
        problems.append("shadow_percent: there is no shadow predictor; pass None")
    values = list(weights.values()) + ([shadow_percent] if shadow_percent is not None else [])
    if any(not 0 <= v <= 100 for v in values):
        problems.append(f"traffic: every percentage must be within 0..100, got {values}")
    # The operator's own rules on the result (sum to 100, one shadow ...), with its messages.
    proposed = [
        Predictor.model_construct(
            name=p["name"],
            version="",
            traffic=weights.get(p["name"], p.get("traffic", 0)),
            shadow=bool(p.get("shadow")),
            server=Server.CUSTOM,
            model_uri="",
        )
        for p in sdep["spec"].get("predictors") or []
    ]
    if not problems:
        problems = seldon_rule_violations(proposed)
    if problems:
        raise SpecError(f"cannot set traffic on {where}:\n" + "\n".join(f"  {p}" for p in problems))


def set_traffic(
    api: DynamicClient,
    namespace: str,
    name: str,
    weights: dict[str, int],
    shadow_percent: int | None = None,
    *,
    field_manager: str = FIELD_MANAGER,
) -> Traffic:
    """Set the weights (and the mirror percent when given) in one JSON patch; returns what the
    server stored. Refuses, before sending anything, what the Seldon operator would refuse."""
    sdep = get_sdep(api, namespace, name)
    _check(sdep, weights, shadow_percent)
    ops: list[dict[str, Any]] = []
    for i, p in enumerate(sdep["spec"]["predictors"]):
        value = shadow_percent if p.get("shadow") else weights.get(p["name"])
        if value is None:
            continue
        ops.append({"op": "test", "path": f"/spec/predictors/{i}/name", "value": p["name"]})
        ops.append({"op": "add", "path": f"/spec/predictors/{i}/traffic", "value": value})
    try:
        stored = api.patch(
            resource(api, SELDON_API, "SeldonDeployment"),
            body=ops,
            name=name,
            namespace=namespace,
            content_type="application/json-patch+json",
            field_manager=field_manager,
        )
    except ApiException as e:
        hint = "; the predictors changed meanwhile, read and retry" if e.status == 422 else ""
        raise ClusterError(
            f"cannot set traffic on SeldonDeployment {namespace}/{name}: {describe(e)}{hint}"
        ) from None
    return _traffic_of(stored.to_dict())
