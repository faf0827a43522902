"""The SLO gate's logic, without locust: which SLO failed, by how much, and too little data."""

from __future__ import annotations

from serving.load.slo import Verdict, judge
from serving.load.stats import Observed
from serving.spec import Slo

SLO = Slo(p95_ms=50, p99_ms=100, max_error_rate=0.01, min_rps=50)


def seen(
    scope: str = "overall",
    requests: int = 1000,
    failures: int = 0,
    p95: float = 20,
    p99: float = 40,
    rps: float = 100,
) -> Observed:
    return Observed(scope, requests, failures, p95 / 2, p95, p99, rps)


def test_a_run_within_every_slo_passes() -> None:
    result = judge(SLO, seen(), [seen("stable", 900, rps=90), seen("canary", 100, rps=10)])
    assert result.verdict is Verdict.PASSED and result.exit_code == 0
    assert result.report() == "SLO gate: PASSED"


def test_min_rps_is_judged_overall_not_per_predictor() -> None:
    # the canary carries 10 req/s, far below minRps 50: that is its share, not a breach
    assert judge(SLO, seen(), [seen("canary", 100, rps=10)]).verdict is Verdict.PASSED
    result = judge(SLO, seen(rps=40), [])
    assert result.verdict is Verdict.FAILED and result.exit_code == 1
    assert result.breaches[0].describe() == (
        "overall: throughput 40.0 req/s is below slo.minRps 50 req/s by 10.0 req/s (20% short)"
    )


def test_each_latency_breach_names_the_scope_the_slo_and_the_excess() -> None:
    result = judge(SLO, seen(), [seen("canary", 200, p95=80, p99=250)])
    assert [(b.scope, b.slo) for b in result.breaches] == [("canary", "p95Ms"), ("canary", "p99Ms")]
    assert result.report().splitlines() == [
        "SLO gate: FAILED (2 SLO breach(es))",
        "  canary: p95 latency 80.0 ms exceeds slo.p95Ms 50 ms by 30.0 ms (1.6x the budget)",
        "  canary: p99 latency 250.0 ms exceeds slo.p99Ms 100 ms by 150.0 ms (2.5x the budget)",
    ]


def test_an_error_rate_breach_says_by_how_many_points() -> None:
    result = judge(SLO, seen(failures=30), [])
    (breach,) = result.breaches
    assert breach.describe() == (
        "overall: error rate 3.00% exceeds slo.maxErrorRate 1.00% by 2.00 points (3.0x the budget)"
    )
    zero_budget = judge(Slo(max_error_rate=0, min_rps=0), seen(failures=1), [])
    assert "exceeds slo.maxErrorRate 0.00% by 0.10 points" in zero_budget.report()


def test_too_few_requests_is_inconclusive_and_fails_the_run() -> None:
    result = judge(SLO, seen(), [seen("stable", 990), seen("canary", 10, p95=999, p99=999)])
    assert result.verdict is Verdict.INCONCLUSIVE and result.exit_code == 1
    assert result.unjudged == ["canary: 10 requests (needs 20)"]
    assert "not judged: canary: 10 requests (needs 20)" in result.report()


def test_a_breach_outranks_too_little_data() -> None:
    result = judge(SLO, seen(p95=60), [seen("canary", 5)])
    assert result.verdict is Verdict.FAILED and result.unjudged


def test_no_requests_at_all_fails_on_throughput() -> None:
    result = judge(SLO, Observed("overall", 0, 0, 0, 0, 0, 0.0), [])
    assert result.verdict is Verdict.FAILED
    assert [b.slo for b in result.breaches] == ["minRps"]
