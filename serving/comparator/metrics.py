"""The comparator's Prometheus metrics: the agreement under the local router's names (so one
PromQL, the rollout's and the Grafana dashboard's, reads both), plus what it could not use."""

from __future__ import annotations

from prometheus_client import CollectorRegistry, Counter, Gauge, Histogram

# The lag from an event leaving the executor to its verdict: under a second is the target.
LAG_BUCKETS = (0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0, 30.0, 60.0)


class ComparatorMetrics:
    def __init__(self) -> None:
        self.registry = r = CollectorRegistry()
        dp = ["deployment_name", "predictor_name"]
        self.shadow_rows = Counter(
            "seldon_shadow_rows",
            "Rows whose shadow answer was compared with the primary's, by result (agreed, "
            "disagreed).", [*dp, "result"], registry=r)
        self.shadow_agreement = Gauge(
            "seldon_shadow_agreement_ratio",
            "Share of compared rows on which the shadow agreed with the primary (since start).",
            dp, registry=r)
        self.events = Counter(
            "seldon_comparator_events",
            "Events taken, by role (primary, shadow) and kind (request, response).",
            [*dp, "role", "kind"], registry=r)
        self.refused = Counter(
            "seldon_comparator_malformed_events",
            "Events refused with a 4xx, by reason (events.REFUSALS).", ["reason"], registry=r)
        self.duplicates = Counter(
            "seldon_comparator_duplicate_events",
            "Events seen before (same ce-id, or a second request or response for the same "
            "predictor and request id): ignored.", dp, registry=r)
        self.unmatched = Counter(
            "seldon_comparator_unmatched",
            "What expired (after the TTL) without its other half: request_without_response "
            "(a failed call, or a lost response event), response_without_request, "
            "shadow_without_primary.", [*dp, "what"], registry=r)
        self.evicted = Counter(
            "seldon_comparator_evicted",
            "What left before its TTL because the maximum number of pending entries was "
            "reached: half, shadow (losses), primary (a reference no shadow asked for yet).",
            [*dp, "what"], registry=r)
        self.pending = Gauge(
            "seldon_comparator_pending",
            "Entries waiting: halves (a request or a response alone), shadows (answers "
            "waiting for a primary's), primaries (answers kept as references).",
            ["what"], registry=r)
        self.lag = Histogram(
            "seldon_comparator_lag_seconds",
            "From the event that completed a match leaving the executor (ce-time) to its "
            "verdict.", ["deployment_name"], buckets=LAG_BUCKETS, registry=r)

    def declare(self, deployment: str, shadow: str) -> None:
        """The series a query needs at zero (increase() undercounts series born mid-window)."""
        for result in ("agreed", "disagreed"):
            self.shadow_rows.labels(deployment, shadow, result)
