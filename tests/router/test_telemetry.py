"""What nginx and the shadow worker report becomes Seldon executor metrics and shadow counts."""

from __future__ import annotations

import pytest
from prometheus_client import generate_latest

from serving.errors import ServingError
from serving.router import dataplane
from serving.router.metrics import RouterMetrics
from serving.router.shadow import ShadowLedger
from serving.router.telemetry import TelemetryReceiver


def receiver() -> TelemetryReceiver:
    metrics = RouterMetrics("breast-cancer")
    return TelemetryReceiver(metrics, ShadowLedger(metrics))


def sample(r: TelemetryReceiver, name: str, **labels: str) -> float:
    value = r.metrics.registry.get_sample_value(name, labels)
    return value or 0.0


def test_a_request_line_is_one_observation_under_the_executor_names() -> None:
    r = receiver()
    r.record("canary v2 infer POST 200 0.003100 0 -\n")
    r.record("stable v1 infer unary 14 0.010000 1 canary\n")  # gRPC UNAVAILABLE, retried, fallback
    labels = {"deployment_name": "breast-cancer", "service": "infer"}
    assert sample(r, "seldon_api_executor_server_requests_seconds_count", predictor_name="canary",
                  predictor_version="v2", method="POST", code="200", **labels) == 1
    assert sample(r, "seldon_api_executor_server_requests_seconds_count", predictor_name="stable",
                  predictor_version="v1", method="unary", code="UNAVAILABLE", **labels) == 1
    assert sample(r, "seldon_router_retries_total", deployment_name="breast-cancer",
                  predictor_name="stable") == 1
    assert sample(r, "seldon_router_fallbacks_total", deployment_name="breast-cancer",
                  predictor_name="canary") == 1


def test_shadow_reports_become_counts_agreement_and_examples() -> None:
    r = receiver()
    r.record("#shadow shadow sent 10")
    r.record("#shadow shadow dropped 2")
    r.record("#compared shadow stable 10 12 9")
    r.record("#disagreed shadow stable row 3: primary {'predict': [1]} vs shadow {'predict': [0]}")
    r.record("#in_flight 4")
    ledger = r.ledger
    assert ledger.counts["sent"] == 10 and ledger.counts["dropped"] == 2
    assert ledger.in_flight == 4
    stats = ledger.stats.as_dict()
    assert (stats["requestsCompared"], stats["rowsCompared"], stats["rowsAgreed"]) == (10, 12, 9)
    assert "row 3" in stats["recentDisagreements"][0]["detail"]
    assert b'result="disagreed"} 3.0' in generate_latest(r.metrics.registry)


def test_unreadable_lines_are_skipped_not_fatal(caplog: pytest.LogCaptureFixture) -> None:
    r = receiver()
    r.record("garbage\n")
    r.record("#compared shadow stable x y z")
    r.record("canary v2 infer POST 200 0.001 0 -")
    assert sample(r, "seldon_api_executor_server_requests_seconds_count",
                  deployment_name="breast-cancer", predictor_name="canary",
                  predictor_version="v2", service="infer", method="POST", code="200") == 1
    assert "unreadable" in caplog.text


def test_without_nginx_the_router_says_what_to_install(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(dataplane.shutil, "which", lambda _: None)
    monkeypatch.setattr(dataplane.os, "access", lambda *_: False)
    with pytest.raises(ServingError, match="make dataplane.*nginx-light libnginx-mod-http-lua"):
        dataplane.nginx_executable()
