"""Prometheus metrics with the Seldon executor's names and labels, so one PromQL works both on a
cluster (Seldon's executor) and against this router.
"""

from __future__ import annotations

from prometheus_client import CollectorRegistry, Counter, Gauge, Histogram, disable_created_metrics

# `*_created` series double the exposition and no query here needs them.
disable_created_metrics()

REQUEST_LABELS = [
    "deployment_name",
    "predictor_name",
    "predictor_version",
    "service",
    "method",
    "code",
]
# Finer than Prometheus' defaults below 10 ms: single-row inference lives there.
LATENCY_BUCKETS = (
    0.0005,
    0.001,
    0.002,
    0.003,
    0.005,
    0.0075,
    0.01,
    0.015,
    0.02,
    0.03,
    0.05,
    0.075,
    0.1,
    0.25,
    0.5,
    1.0,
    2.5,
    5.0,
    10.0,
)


class RouterMetrics:
    def __init__(self, deployment: str) -> None:
        self.deployment = deployment
        self.registry = CollectorRegistry()
        self.requests = Histogram(
            "seldon_api_executor_server_requests_seconds",
            "Requests from the ingress to a predictor, by outcome (Seldon executor name).",
            REQUEST_LABELS,
            buckets=LATENCY_BUCKETS,
            registry=self.registry,
        )
        self.shadow_requests = Counter(
            "seldon_shadow_requests",
            "Mirrored requests by outcome: sent, dropped (in-flight limit), failed, timeout.",
            ["deployment_name", "predictor_name", "outcome"],
            registry=self.registry,
        )
        self.shadow_dropped = Counter(
            "seldon_shadow_dropped",
            "Mirrored requests dropped before comparison, by reason (see shadow.DROP_REASONS).",
            ["deployment_name", "predictor_name", "reason"],
            registry=self.registry,
        )
        self.shadow_in_flight = Gauge(
            "seldon_shadow_in_flight",
            "Mirrored requests in flight.",
            ["deployment_name", "predictor_name"],
            registry=self.registry,
        )
        self.shadow_rows = Counter(
            "seldon_shadow_rows",
            "Rows whose shadow answer was compared with the primary's, by result (agreed, "
            "disagreed).",
            ["deployment_name", "predictor_name", "result"],
            registry=self.registry,
        )
        self.shadow_agreement = Gauge(
            "seldon_shadow_agreement_ratio",
            "Share of compared rows on which the shadow agreed with the primary (since start).",
            ["deployment_name", "predictor_name"],
            registry=self.registry,
        )
        self.retries = Counter(
            "seldon_router_retries",
            "Requests retried on another replica of the same predictor.",
            ["deployment_name", "predictor_name"],
            registry=self.registry,
        )
        self.fallbacks = Counter(
            "seldon_router_fallbacks",
            "Requests served by the stable predictor because theirs had no live replica.",
            ["deployment_name", "predictor_name"],
            registry=self.registry,
        )
        self.restarts = Counter(
            "seldon_router_replica_restarts",
            "Model server processes restarted after a crash.",
            ["deployment_name", "predictor_name"],
            registry=self.registry,
        )
        self.traffic = Gauge(
            "seldon_router_traffic_percent",
            "Configured traffic per predictor (the shadow's is its mirror percentage).",
            ["deployment_name", "predictor_name"],
            registry=self.registry,
        )

    def declare(self, predictor: str, version: str, shadow: bool) -> None:
        """Create the usual series at zero. Prometheus' increase() cannot count what happened
        before it first saw a series, so series that appear on first use undercount."""
        for method, codes in (("POST", ("200", "500", "503")),
                              ("unary", ("OK", "INTERNAL", "UNAVAILABLE"))):
            for code in codes:
                self.requests.labels(self.deployment, predictor, version, "infer", method, code)
        if shadow:
            for result in ("agreed", "disagreed"):
                self.shadow_rows.labels(self.deployment, predictor, result)
            for outcome in ("sent", "dropped", "failed", "timeout"):
                self.shadow_requests.labels(self.deployment, predictor, outcome)

    def observe(
        self, predictor: str, version: str, service: str, method: str, code: str, seconds: float
    ) -> None:
        self.requests.labels(self.deployment, predictor, version, service, method, code).observe(
            seconds
        )
