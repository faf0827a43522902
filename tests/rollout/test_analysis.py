"""Analysis verdicts: statistics decide, and too little data is never a success."""

from __future__ import annotations

from serving.rollout.analysis import (
    Verdict,
    agreement_check,
    analyse,
    error_check,
    latency_check,
)
from serving.rollout.metrics_source import PredictorWindow, Window, parse_exposition, subtract
from serving.rollout.plan import AnalysisSettings

S = AnalysisSettings(min_requests=100, max_error_rate_increase=0.02, max_p99_ratio=1.5,
                     min_agreement=0.9)


def side(requests: int, errors: int = 0, p99_s: float = 0.004) -> PredictorWindow:
    # a histogram whose mass sits below p99_s
    return PredictorWindow(float(requests), float(errors),
                           {0.001: 0.0, p99_s: float(requests), float("inf"): float(requests)})


def test_too_few_requests_is_inconclusive_even_when_perfect() -> None:
    assert error_check(side(99), side(5000), S).verdict is Verdict.INCONCLUSIVE
    assert latency_check(side(99), side(5000), S).verdict is Verdict.INCONCLUSIVE
    assert agreement_check(99, 0, S).verdict is Verdict.INCONCLUSIVE


def test_a_clearly_worse_error_rate_fails() -> None:
    check = error_check(side(200, errors=40), side(2000, errors=4), S)
    assert check.verdict is Verdict.FAILED
    assert "20.00%" in check.detail


def test_one_unlucky_error_is_not_a_failure() -> None:
    assert error_check(side(150, errors=2), side(2000, errors=4), S).verdict \
        is not Verdict.FAILED


def test_an_equal_error_rate_with_enough_data_succeeds() -> None:
    assert error_check(side(1000, errors=3), side(4000, errors=12), S).verdict \
        is Verdict.SUCCESSFUL


def test_latency_ratio_above_the_limit_fails() -> None:
    assert latency_check(side(500, p99_s=0.02), side(500, p99_s=0.004), S).verdict \
        is Verdict.FAILED
    assert latency_check(side(500, p99_s=0.005), side(500, p99_s=0.004), S).verdict \
        is Verdict.SUCCESSFUL


def test_agreement_uses_a_confidence_interval() -> None:
    assert agreement_check(650, 350, S).verdict is Verdict.FAILED
    assert agreement_check(990, 10, S).verdict is Verdict.SUCCESSFUL
    assert agreement_check(180, 20, S).verdict is Verdict.INCONCLUSIVE  # 90% on 200 rows


def test_any_failed_check_fails_the_analysis() -> None:
    window = Window(60, {"stable": side(1000), "canary": side(1000, p99_s=0.05)},
                    {"canary": (1000.0, 0.0)})
    result = analyse(window, "stable", "canary", mirrored=False, settings=S)
    assert result.verdict is Verdict.FAILED
    assert {c.name for c in result.checks} == {"errors", "latency"}


def test_a_mirrored_candidate_is_judged_on_errors_and_agreement_not_latency() -> None:
    # shadows run at low priority: their timing is the host's, not the model's
    window = Window(60, {"stable": side(1000), "canary": side(1000, p99_s=0.05)},
                    {"canary": (1000.0, 0.0)})
    result = analyse(window, "stable", "canary", mirrored=True, settings=S)
    assert {c.name for c in result.checks} == {"errors", "agreement"}
    assert result.verdict is Verdict.SUCCESSFUL


EXPOSITION = """
seldon_api_executor_server_requests_seconds_bucket{code="200",deployment_name="d",le="0.005",method="POST",predictor_name="stable",predictor_version="v1",service="infer"} 90
seldon_api_executor_server_requests_seconds_bucket{code="200",deployment_name="d",le="+Inf",method="POST",predictor_name="stable",predictor_version="v1",service="infer"} 100
seldon_api_executor_server_requests_seconds_count{code="200",deployment_name="d",method="POST",predictor_name="stable",predictor_version="v1",service="infer"} 100
seldon_api_executor_server_requests_seconds_count{code="500",deployment_name="d",method="POST",predictor_name="canary",predictor_version="v2",service="infer"} 7
seldon_api_executor_server_requests_seconds_count{code="OK",deployment_name="d",method="unary",predictor_name="canary",predictor_version="v2",service="infer"} 13
seldon_api_executor_server_requests_seconds_count{code="200",deployment_name="other",method="POST",predictor_name="stable",predictor_version="v1",service="infer"} 999
seldon_shadow_rows_total{deployment_name="d",predictor_name="shadow",result="agreed"} 30
seldon_shadow_rows_total{deployment_name="d",predictor_name="shadow",result="disagreed"} 10
"""


def test_router_metrics_are_read_per_predictor_with_server_errors_counted() -> None:
    window = parse_exposition(EXPOSITION, "d")
    assert (window.predictor("stable").requests, window.predictor("stable").errors) == (100, 0)
    assert (window.predictor("canary").requests, window.predictor("canary").errors) == (20, 7)
    assert window.shadow_rows == {"shadow": (30.0, 10.0)}
    delta = subtract(window, parse_exposition("", "d"), 5.0)
    assert delta.predictor("stable").requests == 100


def test_quantiles_interpolate_within_buckets() -> None:
    w = PredictorWindow(100, 0, {0.001: 50.0, 0.002: 100.0, float("inf"): 100.0})
    assert abs((w.quantile(0.5) or 0) - 0.001) < 1e-9
    assert abs((w.quantile(0.75) or 0) - 0.0015) < 1e-9
