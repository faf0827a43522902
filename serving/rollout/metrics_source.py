"""Where analysis gets its numbers: the local router's /metrics, or Prometheus' HTTP API.

Both read the Seldon executor's metric names, so a window of traffic looks the same whether it
came from this machine or a cluster. A `Window` holds the counts of one analysis window.
"""

from __future__ import annotations

import math
import time
from dataclasses import dataclass, field
from typing import Any, Protocol

import httpx
from prometheus_client.parser import text_string_to_metric_families

from ..errors import ServingError
from ..router.core import is_server_error

REQUESTS = "seldon_api_executor_server_requests_seconds"
SHADOW_ROWS = "seldon_shadow_rows"


@dataclass
class PredictorWindow:
    requests: float = 0.0
    errors: float = 0.0
    buckets: dict[float, float] = field(default_factory=dict)  # upper bound -> cumulative count

    def minus(self, earlier: PredictorWindow) -> PredictorWindow:
        return PredictorWindow(
            self.requests - earlier.requests, self.errors - earlier.errors,
            {le: c - earlier.buckets.get(le, 0.0) for le, c in self.buckets.items()})

    def quantile(self, q: float) -> float | None:
        """Seconds, interpolated within the bucket like PromQL's histogram_quantile."""
        if not self.buckets or self.requests <= 0:
            return None
        bounds = sorted(self.buckets)
        total = self.buckets[bounds[-1]]
        if total <= 0:
            return None
        rank = q * total
        lower, below = 0.0, 0.0
        for le in bounds:
            count = self.buckets[le]
            if count >= rank:
                if math.isinf(le):
                    return lower
                return lower + (le - lower) * ((rank - below) / max(count - below, 1e-12))
            lower, below = le, count
        return lower


@dataclass
class Window:
    """Counts over one analysis window."""

    seconds: float
    predictors: dict[str, PredictorWindow] = field(default_factory=dict)
    shadow_rows: dict[str, tuple[float, float]] = field(default_factory=dict)  # agreed, disagreed

    def predictor(self, name: str) -> PredictorWindow:
        return self.predictors.get(name, PredictorWindow())


class MetricsSource(Protocol):
    def window(self, since: float) -> Window:
        """Counts from `since` (a time.time()) until now."""
        ...


def parse_exposition(text: str, deployment: str) -> Window:
    """Cumulative counts from a Prometheus text exposition (the router's /metrics)."""
    window = Window(seconds=0.0)
    samples = (sample for family in text_string_to_metric_families(text)
               for sample in family.samples)
    for sample in samples:
        labels = sample.labels
        if labels.get("deployment_name") != deployment:
            continue
        if sample.name.startswith(REQUESTS) and labels.get("service") == "infer":
            entry = window.predictors.setdefault(labels["predictor_name"], PredictorWindow())
            if sample.name == f"{REQUESTS}_count":
                entry.requests += sample.value
                if is_server_error(labels["code"]):
                    entry.errors += sample.value
            elif sample.name == f"{REQUESTS}_bucket":
                le = float(labels["le"])
                entry.buckets[le] = entry.buckets.get(le, 0.0) + sample.value
        elif sample.name == f"{SHADOW_ROWS}_total":
            agreed, disagreed = window.shadow_rows.get(labels["predictor_name"], (0.0, 0.0))
            if labels["result"] == "agreed":
                agreed += sample.value
            else:
                disagreed += sample.value
            window.shadow_rows[labels["predictor_name"]] = (agreed, disagreed)
    return window


def subtract(now: Window, then: Window, seconds: float) -> Window:
    out = Window(seconds=seconds)
    for name, entry in now.predictors.items():
        out.predictors[name] = entry.minus(then.predictor(name))
    for name, (agreed, disagreed) in now.shadow_rows.items():
        a0, d0 = then.shadow_rows.get(name, (0.0, 0.0))
        out.shadow_rows[name] = (agreed - a0, disagreed - d0)
    return out


class RouterMetricsSource:
    """Scrapes the local router's /metrics; a window is the difference from a baseline scrape."""

    def __init__(self, metrics_url: str, deployment: str) -> None:
        self.metrics_url = metrics_url
        self.deployment = deployment
        self._baselines: dict[float, Window] = {}

    def scrape(self) -> Window:
        try:
            resp = httpx.get(self.metrics_url, timeout=5)
            resp.raise_for_status()
        except httpx.HTTPError as e:
            raise ServingError(f"cannot read metrics from {self.metrics_url}: {e}") from e
        return parse_exposition(resp.text, self.deployment)

    def window(self, since: float) -> Window:
        now = self.scrape()
        if since not in self._baselines:
            # First look at this window (a new step, or a restarted controller): it starts now.
            self._baselines = {since: now}
            return Window(seconds=0.0)
        return subtract(now, self._baselines[since], time.time() - since)


class PrometheusSource:
    """Prometheus' HTTP API with PromQL over the Seldon executor's metric names."""

    def __init__(self, base_url: str, deployment: str, namespace: str | None = None) -> None:
        self.base_url = base_url.rstrip("/")
        self.deployment = deployment
        self.selector = f'deployment_name="{deployment}"' + (
            f',namespace="{namespace}"' if namespace else "")

    def query(self, promql: str) -> list[dict[str, Any]]:
        try:
            resp = httpx.get(f"{self.base_url}/api/v1/query", params={"query": promql},
                             timeout=10)
            body = resp.json()
        except (httpx.HTTPError, ValueError) as e:
            raise ServingError(f"Prometheus at {self.base_url} did not answer: {e}") from e
        if body.get("status") != "success":
            raise ServingError(f"Prometheus refused {promql!r}: {body.get('error')}")
        return list(body["data"]["result"])

    def window(self, since: float) -> Window:
        seconds = max(time.time() - since, 1.0)
        rng = f"[{int(math.ceil(seconds))}s]"
        window = Window(seconds=seconds)
        sel = self.selector + ',service="infer"'
        for row in self.query(f"sum by (predictor_name, code) "
                              f"(increase({REQUESTS}_count{{{sel}}}{rng}))"):
            labels, value = row["metric"], float(row["value"][1])
            entry = window.predictors.setdefault(labels["predictor_name"], PredictorWindow())
            entry.requests += value
            if is_server_error(labels["code"]):
                entry.errors += value
        for row in self.query(f"sum by (predictor_name, le) "
                              f"(increase({REQUESTS}_bucket{{{sel}}}{rng}))"):
            labels, value = row["metric"], float(row["value"][1])
            entry = window.predictors.setdefault(labels["predictor_name"], PredictorWindow())
            entry.buckets[float(labels["le"])] = value
        for row in self.query(f"sum by (predictor_name, result) "
                              f"(increase({SHADOW_ROWS}_total{{{self.selector}}}{rng}))"):
            labels, value = row["metric"], float(row["value"][1])
            agreed, disagreed = window.shadow_rows.get(labels["predictor_name"], (0.0, 0.0))
            if labels["result"] == "agreed":
                agreed += value
            else:
                disagreed += value
            window.shadow_rows[labels["predictor_name"]] = (agreed, disagreed)
        return window
