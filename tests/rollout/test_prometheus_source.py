"""The PromQL metrics source against a real Prometheus server scraping the local router: the
same Seldon executor metric names give the same numbers as reading the router directly."""

from __future__ import annotations

import shutil
import subprocess
import time
from collections.abc import Iterator
from pathlib import Path

import httpx
import pytest
import yaml

from serving.errors import ServingError
from serving.rollout.analysis import analyse
from serving.rollout.metrics_source import PrometheusSource, RouterMetricsSource
from serving.rollout.plan import AnalysisSettings
from serving.server import free_port

from ..router.conftest import Stack
from .conftest import Load

PROMETHEUS = shutil.which("prometheus")
pytestmark = [
    pytest.mark.slow,
    pytest.mark.skipif(PROMETHEUS is None, reason="the 'prometheus' server is not installed "
                       "(Debian package 'prometheus'; .ci/run installs it)"),
]


@pytest.fixture
def prometheus(fresh_stack: Stack, tmp_path: Path) -> Iterator[str]:
    target = fresh_stack.state["restUrl"].removeprefix("http://")
    config = tmp_path / "prometheus.yml"
    config.write_text(yaml.safe_dump({
        "global": {"scrape_interval": "1s", "evaluation_interval": "1s"},
        "scrape_configs": [{"job_name": "router", "static_configs": [{"targets": [target]}]}],
    }))
    port = free_port()
    assert PROMETHEUS is not None
    process = subprocess.Popen(
        [PROMETHEUS, f"--config.file={config}", f"--storage.tsdb.path={tmp_path / 'data'}",
         f"--web.listen-address=127.0.0.1:{port}"],
        stdout=subprocess.DEVNULL, stderr=(tmp_path / "prometheus.log").open("wb"))
    url = f"http://127.0.0.1:{port}"
    try:
        deadline = time.monotonic() + 30
        while True:
            try:
                if httpx.get(f"{url}/-/ready", timeout=1).status_code == 200:
                    break
            except httpx.HTTPError:
                pass
            assert time.monotonic() < deadline, (tmp_path / "prometheus.log").read_text()
            time.sleep(0.2)
        # Prometheus hands new targets to its scrapers only every few seconds: wait for a scrape.
        while not httpx.get(f"{url}/api/v1/query", params={"query": 'up{job="router"} == 1'},
                            timeout=2).json()["data"]["result"]:
            assert time.monotonic() < deadline, "Prometheus never scraped the router"
            time.sleep(0.2)
        yield url
    finally:
        process.terminate()
        process.wait(10)


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
