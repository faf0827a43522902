"""The PromQL metrics source against a real Prometheus server scraping the local router: the
same Seldon executor metric names give the same numbers as reading the router directly."""

from __future__ import annotations

import time
from collections.abc import Iterator
from pathlib import Path

import pytest

from serving.errors import ServingError
from serving.rollout.analysis import analyse
from serving.rollout.metrics_source import PrometheusSource, RouterMetricsSource
from serving.rollout.plan import AnalysisSettings
from serving.server import free_port

from ..prometheus import PROMETHEUS
from ..prometheus import prometheus as real_prometheus
from ..router.conftest import Stack
from .conftest import Load

pytestmark = [
    pytest.mark.slow,
    pytest.mark.skipif(PROMETHEUS is None, reason="the 'prometheus' server is not installed "
                       "(Debian package 'prometheus'; .ci/run installs it)"),
]


@pytest.fixture
def prometheus(fresh_stack: Stack, tmp_path: Path) -> Iterator[str]:
    with real_prometheus(tmp_path, {"router": fresh_stack.state["restUrl"].removeprefix("http://")}) as url:
        yield url


def test_promql_window_matches_the_router_counts(fresh_stack: Stack, prometheus: str) -> None:
    router = RouterMetricsSource(fresh_stack.state["restUrl"] + "/metrics", "breast-cancer")
    source = PrometheusSource(prometheus, "breast-cancer")
    time.sleep(1.5)  # a scrape of the starting counters
    since = time.time()
    router.window(since)  # baseline
    load = Load(fresh_stack.infer_url, threads=2).start()
    time.sleep(6)
    load.stop()
    time.sleep(2.5)  # the last scrape after the load
    direct = router.window(since)
    via_prometheus = source.window(since)

    direct_stable = direct.predictor("stable").requests
    promql_stable = via_prometheus.predictor("stable").requests
    assert direct_stable > 200
    # increase() extrapolates to the window edges; the two agree closely, not exactly
    raw = source.query('seldon_api_executor_server_requests_seconds_count'
                       '{predictor_name="stable",code="200",service="infer"}[20s]')
    assert abs(promql_stable - direct_stable) / direct_stable < 0.3, (
        promql_stable, direct_stable, since,
        [(r["metric"], [(round(float(t) - since, 1), v) for t, v in r["values"]]) for r in raw])
    agreed, disagreed = via_prometheus.shadow_rows["shadow"]
    assert agreed + disagreed > 50
    p99 = via_prometheus.predictor("stable").quantile(0.99)
    assert p99 is not None and 0 < p99 < 1.0

    # and a verdict can be computed from Prometheus' numbers alone
    result = analyse(via_prometheus, "stable", "shadow", mirrored=True,
                     settings=AnalysisSettings(min_requests=50, min_agreement=0.5))
    assert {c.name for c in result.checks} == {"errors", "agreement"}
    agreement = next(c for c in result.checks if c.name == "agreement")
    assert agreement.verdict.value == "successful", agreement.detail  # v3 agrees with v1 > 50%
    assert all("stable" in c.detail for c in result.checks if c.name != "agreement")


def test_prometheus_errors_are_reported_clearly(prometheus: str) -> None:
    with pytest.raises(ServingError, match="Prometheus"):
        PrometheusSource(prometheus, "breast-cancer").query("sum(")
    with pytest.raises(ServingError, match="did not answer"):
        PrometheusSource(f"http://127.0.0.1:{free_port()}", "d").window(time.time() - 10)
