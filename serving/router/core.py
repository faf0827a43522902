"""The router's state in the control process: predictors, their replicas, the routing table.

nginx (dataplane.py, lua/router.lua) forwards the requests; this is what it routes by, plus what
the admin API and `serving status` report: weights, replicas, request counts, shadow agreement.
"""

from __future__ import annotations

import logging
import time
from collections.abc import Callable
from dataclasses import dataclass

from ..spec import Predictor, Spec, stable_predictor
from .metrics import RouterMetrics
from .replicas import PredictorPool
from .shadow import ShadowLedger
from .traffic import Routes

logger = logging.getLogger("serving.router")


@dataclass(frozen=True)
class RouterState:
    """Everything a request needs, swapped as one reference when traffic or predictors change."""

    predictors: tuple[Predictor, ...]
    pools: dict[str, PredictorPool]
    routes: Routes

    @property
    def stable(self) -> str:
        """The predictor that fallbacks go to: serving.spec.stable_predictor."""
        return stable_predictor(self.predictors).name


class RouterCore:
    def __init__(self, spec: Spec, pools: dict[str, PredictorPool]) -> None:
        self.spec = spec
        self.namespace = spec.deployment.namespace
        self.deployment = spec.deployment.name
        self.model = spec.model.name
        self.settings = spec.router
        self.metrics = RouterMetrics(self.deployment)
        self.shadow = ShadowLedger(self.metrics)
        self.state = RouterState(tuple(spec.predictors), pools, Routes.from_spec(spec))
        self.started = time.time()
        # the shadow worker process: pid, restarts; set by the stack
        self.shadow_worker_status: Callable[[], dict[str, int | None]] = dict
        self._publish_traffic()

    # -- the data plane's view ------------------------------------------------------------------
    def table(self) -> dict[str, object]:
        """The routing table nginx routes by (see lua/router.lua), without its generation.
        Only live replicas are listed; a predictor with none gets 503s (or its fallback)."""
        state = self.state
        weights = [(name, w) for name, w in state.routes.weights.items() if w > 0]
        table: dict[str, object] = {
            "stable": state.stable,
            "fallback": self.settings.fallback_to_stable,
            "weights": weights,
            "totalWeight": sum(w for _, w in weights),
            "mirrorPercent": state.routes.mirror_percent,
            "predictors": {name: routing_entry(pool) for name, pool in state.pools.items()},
        }
        if state.routes.shadow:  # absent rather than null: JSON null is truthy in Lua
            table["shadow"] = state.routes.shadow
        return table

    # -- changing -------------------------------------------------------------------------------
    def swap(self, predictors: list[Predictor], pools: dict[str, PredictorPool]) -> RouterState:
        """Install a new table atomically (one reference assignment)."""
        spec = self.spec.model_copy(update={"predictors": predictors})
        generation = self.state.routes.generation + 1
        self.state = RouterState(tuple(predictors), pools, Routes.from_spec(spec, generation))
        self.spec = spec
        self._publish_traffic()
        return self.state

    def _publish_traffic(self) -> None:
        for p in self.state.predictors:
            self.metrics.traffic.labels(self.deployment, p.name).set(p.traffic)
            self.metrics.declare(p.name, p.version, p.shadow)

    # -- reading --------------------------------------------------------------------------------
    def status(self) -> dict[str, object]:
        state = self.state
        weights = state.routes.weights
        predictors = []
        for p in state.predictors:
            pool = state.pools[p.name]
            predictors.append(
                {
                    "name": p.name,
                    "version": p.version,
                    "shadow": p.shadow,
                    "traffic": state.routes.mirror_percent if p.shadow else weights.get(p.name, 0),
                    "replicas": [
                        {
                            "name": r.name,
                            "alive": r.serving,
                            "pid": r.pid,
                            "restarts": r.restarts,
                            "url": r.rest_url,
                            "grpc": r.server.grpc_target,
                        }
                        for r in pool.replicas
                    ],
                    "spec": p.model_dump(mode="json", by_alias=True),
                }
            )
        return {
            "deployment": self.deployment,
            "namespace": self.namespace,
            "model": self.model,
            "routes": state.routes.as_dict(),
            "predictors": predictors,
            "requests": self.request_counts(),
            "shadow": {
                "inFlight": self.shadow.in_flight,
                "worker": self.shadow_worker_status(),
                **self.shadow.counts,
                "droppedBy": dict(self.shadow.dropped_by),
                "agreement": self.shadow.stats.as_dict(),
            },
            "uptimeSeconds": round(time.time() - self.started, 1),
        }

    def request_counts(self) -> dict[str, dict[str, int]]:
        """Requests and errors (5xx or a server-side gRPC code) per predictor, since start."""
        counts: dict[str, dict[str, int]] = {}
        for metric in self.metrics.requests.collect():
            for sample in metric.samples:
                if not sample.name.endswith("_count"):
                    continue
                entry = counts.setdefault(
                    sample.labels["predictor_name"], {"requests": 0, "errors": 0}
                )
                entry["requests"] += int(sample.value)
                if is_server_error(sample.labels["code"]):
                    entry["errors"] += int(sample.value)
        return counts


SERVER_ERROR_GRPC_CODES = {
    "INTERNAL",
    "UNAVAILABLE",
    "UNKNOWN",
    "DEADLINE_EXCEEDED",
    "DATA_LOSS",
    "RESOURCE_EXHAUSTED",
}


def routing_entry(pool: PredictorPool) -> dict[str, object]:
    """One predictor in the routing table: its version, pool id and live replicas' addresses."""
    live = pool.live()
    return {
        "version": pool.version,
        "pool": str(pool.uid),
        "replicas": len(pool.replicas),
        "rest": [r.rest_url.removeprefix("http://") for r in live],
        "grpc": [r.server.grpc_target for r in live],
    }


def is_server_error(code: str) -> bool:
    """The model's fault, not the caller's: HTTP 5xx or the matching gRPC codes."""
    return code.startswith("5") or code in SERVER_ERROR_GRPC_CODES

