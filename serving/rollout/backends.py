"""Traffic backends behind one small interface (after Flagger's router.Interface):

    get_predictors()        what runs now
    set_routes(w, mirror)   change weights only: fast and atomic
    apply(predictors)       make the deployment run exactly these predictors

`LocalRouterBackend` talks to the local router's admin API; `KubernetesBackend` (in
serving/k8s/rollout_backend.py) patches the SeldonDeployment.
"""

from __future__ import annotations

from typing import Any, Protocol

import httpx

from ..errors import ServingError
from ..spec import Predictor


class TrafficBackend(Protocol):
    def get_predictors(self) -> list[Predictor]: ...

    def set_routes(self, weights: dict[str, int], mirror_percent: int | None) -> None: ...

    def apply(self, predictors: list[Predictor]) -> None: ...


def weights_of(predictors: list[Predictor]) -> tuple[dict[str, int], int | None]:
    weights = {p.name: p.traffic for p in predictors if not p.shadow}
    shadow = next((p.traffic for p in predictors if p.shadow), None)
    return weights, shadow


def plan_apply(current: list[Predictor], desired: list[Predictor]
               ) -> tuple[tuple[dict[str, int], int | None] | None, bool]:
    """What to do: (weights to set first, or None; whether predictors must be replaced).

    Removing a predictor that still has traffic first moves its traffic away with a weight
    change (instant), then removes it: callers never hit a predictor being torn down.
    """
    by_name = {p.name: p for p in current}
    same_set = [p.name for p in current] == [p.name for p in desired] and all(
        _same_except_traffic(by_name[p.name], p) for p in desired)
    if same_set:
        if weights_of(current) == weights_of(desired):
            return None, False
        return weights_of(desired), False
    desired_names = {p.name for p in desired}
    removed_with_traffic = [p for p in current if p.name not in desired_names and p.traffic > 0
                            and not p.shadow]
    first = None
    if removed_with_traffic:
        weights = {p.name: 0 for p in current if not p.shadow}
        for p in desired:
            if p.name in weights and not p.shadow:
                weights[p.name] = p.traffic
        if sum(weights.values()) == 100:
            first = (weights, None)
    return first, True


def _same_except_traffic(a: Predictor, b: Predictor) -> bool:
    return a.model_dump(exclude={"traffic"}) == b.model_dump(exclude={"traffic"})


class LocalRouterBackend:
    def __init__(self, rest_url: str, token: str) -> None:
        self._http = httpx.Client(base_url=rest_url, timeout=120,
                                  headers={"authorization": f"Bearer {token}"})

    def _call(self, method: str, path: str, body: dict[str, Any] | None = None) -> Any:
        try:
            resp = self._http.request(method, path, json=body)
        except httpx.HTTPError as e:
            raise ServingError(f"local router unreachable ({e}); is 'serving up' running?") from e
        if resp.status_code != 200:
            raise ServingError(f"router refused {method} {path}: {resp.text}",
                               status_code=resp.status_code)
        return resp.json()

    def get_predictors(self) -> list[Predictor]:
        status = self._call("GET", "/admin/status")
        return [Predictor.model_validate(p["spec"]) for p in status["predictors"]]

    def set_routes(self, weights: dict[str, int], mirror_percent: int | None) -> None:
        body: dict[str, Any] = {"weights": weights}
        if mirror_percent is not None:
            body["mirrorPercent"] = mirror_percent
        self._call("PUT", "/admin/traffic", body)

    def apply(self, predictors: list[Predictor]) -> None:
        first, replace = plan_apply(self.get_predictors(), predictors)
        if first is not None:
            self.set_routes(*first)
        if replace:
            self._call("PUT", "/admin/predictors", {"predictors": [
                p.model_dump(mode="json", by_alias=True) for p in predictors]})
