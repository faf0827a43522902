"""The transport-agnostic core of the router: both the REST and the gRPC front ends call it.

It decides where a request goes (pin, stickiness, weights, fallback), tries a replica and retries
once on another replica of the same predictor when the first cannot be reached, records metrics,
and starts the mirrored copy. The transports only know how to send bytes to one replica.
"""

from __future__ import annotations

import logging
import time
from collections.abc import Awaitable, Callable
from dataclasses import dataclass
from typing import TypeVar

from ..errors import ServingError, SpecError, UpstreamUnavailable
from ..spec import Predictor, Spec
from .metrics import RouterMetrics
from .replicas import PredictorPool, Replica
from .shadow import Decoded, Mirror, MirroredCall, MirroredRequest
from .traffic import Routes

logger = logging.getLogger("serving.router")

PREDICTOR_HEADER = "x-seldon-predictor"
T = TypeVar("T")


class UpstreamConnectError(Exception):
    """The replica could not be reached (refused, reset): safe to retry on another replica."""


@dataclass(frozen=True)
class RouterState:
    """Everything a request needs, swapped as one reference when traffic or predictors change."""

    predictors: tuple[Predictor, ...]
    pools: dict[str, PredictorPool]
    routes: Routes

    @property
    def stable(self) -> str:
        """The predictor that fallbacks go to: the one named 'stable', else the first primary."""
        primaries = [p.name for p in self.predictors if not p.shadow]
        return "stable" if "stable" in primaries else primaries[0]


class RouterCore:
    def __init__(self, spec: Spec, pools: dict[str, PredictorPool]) -> None:
        self.spec = spec
        self.namespace = spec.deployment.namespace
        self.deployment = spec.deployment.name
        self.model = spec.model.name
        self.settings = spec.router
        self.metrics = RouterMetrics(self.deployment)
        self.mirror = Mirror(
            self.metrics,
            spec.router.shadow.max_in_flight,
            spec.router.shadow.timeout_seconds,
            spec.router.shadow.rtol,
        )
        self.state = RouterState(tuple(spec.predictors), pools, Routes.from_spec(spec))
        self.started = time.time()
        self._publish_traffic()

    # -- choosing -------------------------------------------------------------------------------
    def select(self, pin: str | None, sticky_key: str | None) -> tuple[PredictorPool, bool]:
        """The pool for a request, and whether it is a fallback to stable."""
        state = self.state
        if pin:
            pool = state.pools.get(pin)
            if pool is None:
                raise SpecError(
                    f"{PREDICTOR_HEADER}: no predictor named {pin!r}; predictors are "
                    f"{sorted(state.pools)}",
                    status_code=404,
                )
            return pool, False
        pool = state.pools[state.routes.pick(sticky_key)]
        if not pool.live() and self.settings.fallback_to_stable:
            stable = state.pools[state.stable]
            if stable is not pool and stable.live():
                self.metrics.fallbacks.labels(self.deployment, pool.name).inc()
                return stable, True
        return pool, False

    def mirror_if_due(self, service: str, pool: PredictorPool, call: MirroredCall, method: str,
                      decode: Callable[[bytes], Decoded]) -> MirroredRequest | None:
        """Mirror an inference to the shadow when its percentage says so (not when the request
        is pinned to the shadow itself)."""
        routes = self.state.routes
        if service != "infer" or not routes.shadow or not routes.should_mirror():
            return None
        shadow = self.state.pools.get(routes.shadow)
        if shadow is None or shadow is pool:
            return None
        return self.mirror.launch(shadow, call, method, decode)

    # -- calling --------------------------------------------------------------------------------
    async def call(
        self, pool: PredictorPool, send: Callable[[Replica], Awaitable[T]]
    ) -> tuple[T, PredictorPool]:
        """Send to one live replica; if it cannot be reached, once more to another one; if the
        predictor has no reachable replica and fallback is on, to the stable predictor.
        Returns the answer and the pool that gave it."""
        try:
            return await self._call_pool(pool, send), pool
        except UpstreamUnavailable:
            stable = self.state.pools.get(self.state.stable)
            if not self.settings.fallback_to_stable or stable is None or stable is pool:
                raise
            self.metrics.fallbacks.labels(self.deployment, pool.name).inc()
            return await self._call_pool(stable, send), stable

    async def _call_pool(self, pool: PredictorPool, send: Callable[[Replica], Awaitable[T]]) -> T:
        pool.in_flight += 1
        try:
            order = pool.attempt_order()
            last_error: Exception | None = None
            for attempt, replica in enumerate(order[:2]):
                if attempt:
                    self.metrics.retries.labels(self.deployment, pool.name).inc()
                try:
                    return await send(replica)
                except UpstreamConnectError as e:
                    last_error = e
                    replica.alive = False  # the supervisor revives it once it answers again
                    logger.warning("replica %s unreachable (%s)", replica.name, e)
            raise UpstreamUnavailable(
                f"predictor {pool.name!r}: no replica could be reached ({last_error}); "
                "retry shortly"
            )
        finally:
            pool.in_flight -= 1

    def observe(
        self, pool: PredictorPool, service: str, method: str, code: str, started: float
    ) -> None:
        self.metrics.observe(
            pool.name, pool.version, service, method, code, time.perf_counter() - started
        )

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
                            "alive": r.alive,
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
                "inFlight": self.mirror.in_flight,
                **self.mirror.counts,
                "agreement": self.mirror.stats.as_dict(),
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


def is_server_error(code: str) -> bool:
    """The model's fault, not the caller's: HTTP 5xx or the matching gRPC codes."""
    return code.startswith("5") or code in SERVER_ERROR_GRPC_CODES


def error_status(e: Exception) -> tuple[int, str]:
    if isinstance(e, ServingError):
        return e.status_code, e.message
    return 500, f"router error: {e}"
