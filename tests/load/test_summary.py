"""The run summary (table, split, verdict) and how options resolve to a target, without locust."""

from __future__ import annotations

from pathlib import Path

import pytest

from serving.load.errors import LoadTestError
from serving.load.run import LoadPlan
from serving.load.stats import Observed, entry_name, predictor_of
from serving.load.summary import build_summary, read_summary
from serving.load.target import parse_weights, resolve_target
from serving.spec import Slo, Spec

SLO = Slo(p95_ms=50, p99_ms=100, max_error_rate=0.01, min_rps=10)
STABLE = Observed("stable", 880, 0, 10, 20, 30, 88.0)
CANARY = Observed("canary", 120, 2, 30, 60, 90, 12.0)
OVERALL = Observed("overall", 1000, 2, 12, 45, 80, 100.0)


def test_requests_are_recorded_under_the_predictor_that_answered() -> None:
    assert entry_name("canary") == "infer [canary]"
    assert entry_name(None) == "infer [unknown]"
    assert predictor_of("infer [canary]") == "canary"
    assert predictor_of("/v2/models/x/infer") is None


def test_the_table_has_a_row_per_predictor_with_weight_share_and_verdict(tmp_path: Path) -> None:
    summary = build_summary(
        SLO, OVERALL, [STABLE, CANARY], {"stable": 90, "canary": 10}, "the router"
    )
    table = summary.table().splitlines()
    assert table[0].split() == [
        "PREDICTOR", "REQUESTS", "FAILED", "P50", "MS", "P95", "MS", "P99", "MS", "REQ/S",
        "WEIGHT", "SHARE", "Z", "SPLIT",
    ]  # fmt: skip
    assert table[1].split() == [
        "stable", "880", "0", "10.0", "20.0", "30.0", "88.0", "90%", "88.0%", "-2.1", "ok"
    ]  # fmt: skip
    assert table[2].split()[-4:] == ["10%", "12.0%", "+2.1", "ok"]
    assert table[3].split()[0] == "overall"
    assert "canary: p95 latency 60.0 ms exceeds slo.p95Ms 50 ms" in summary.text()
    assert "canary: error rate 1.67% exceeds" in summary.text()
    summary.write(tmp_path / "summary.json")
    again = read_summary(tmp_path / "summary.json")
    assert again.table() == summary.table() and again.gate.report() == summary.gate.report()


def test_a_weighted_predictor_that_served_nothing_is_listed_outside_the_bounds() -> None:
    summary = build_summary(
        SLO, OVERALL, [Observed("stable", 1000, 0, 1, 2, 3, 100.0)],
        {"stable": 90, "canary": 10}, "values",
    )  # fmt: skip
    assert summary.split_within_bounds is False
    assert summary.table().splitlines()[2].split()[:2] == ["canary", "0"]


def test_answers_without_a_predictor_leave_the_split_unchecked() -> None:
    unknown = Observed("unknown", 1000, 0, 1, 2, 3, 100.0)
    summary = build_summary(SLO, OVERALL, [unknown], {"stable": 100}, "values")
    assert summary.split == [] and summary.split_within_bounds is None
    assert "split not checked" in summary.notes[0]


def test_weights_parse_from_pairs_and_bad_ones_say_the_format() -> None:
    assert parse_weights("stable=90, canary=10") == {"stable": 90.0, "canary": 10.0}
    for bad in ("stable", "stable=x", "=5", "stable=-1"):
        with pytest.raises(LoadTestError, match="--weights .*predictor=percent"):
            parse_weights(bad)


def test_a_target_needs_a_url_or_a_running_stack(tmp_path: Path) -> None:
    spec = Spec.model_validate({"predictors": [{"name": "stable", "version": "v1"}]})
    with pytest.raises(LoadTestError, match="no target: pass --host"):
        resolve_target(spec)
    with pytest.raises(Exception, match="no local stack is running"):
        resolve_target(spec, state_dir=tmp_path)
    target = resolve_target(spec, rest_base="http://ingress/seldon/models/breast-cancer")
    assert target.infer_path == "/v2/models/breast-cancer/infer"
    assert target.grpc_metadata == (("seldon", "breast-cancer"), ("namespace", "models"))
    assert target.admin_url is None


def test_a_plan_refuses_unbounded_or_unknown_settings() -> None:
    with pytest.raises(LoadTestError) as e:
        LoadPlan(Path("v.yaml"), shape="ramp", duration_s=0, users=0, rps=-1).check()
    assert str(e.value).splitlines() == [
        "--shape 'ramp': choose one of ['constant', 'spike', 'steps']",
        "--duration 0: must be 1..3600 seconds",
        "--users 0: must be at least 1",
        "--rps -1: must be 0 (closed loop) or more",
    ]


def test_exceptions_in_the_load_test_code_fail_the_run_whatever_the_gate_says() -> None:
    summary = build_summary(
        SLO, OVERALL, [STABLE, CANARY], None, "none", task_errors=["5x KeyError: 'outputs'"]
    )
    assert summary.exit_code == 2
    assert "LOAD TEST BROKEN" in summary.verdict() and "5x KeyError" in summary.verdict()
