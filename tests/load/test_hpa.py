"""Following the predictors' HorizontalPodAutoscalers with the kubernetes client, against an
in-process API server (tests/load/test_cluster.py does it on a real cluster)."""

from __future__ import annotations

import time
from pathlib import Path

from serving.k8s.client import connect
from serving.load.hpa import follow_hpas, hpa_replicas, predictor_of_target
from tests.k8s.fake_apiserver import FakeApiServer

from .conftest import hpa


def test_hpas_map_to_predictors_by_the_deployment_they_scale() -> None:
    names = ["stable", "stable-2", "canary"]
    assert predictor_of_target("breast-cancer-stable-0-breast-cancer", "breast-cancer", names) == (
        "stable"
    )
    assert predictor_of_target("breast-cancer-stable-2-0-x", "breast-cancer", names) == "stable-2"
    assert predictor_of_target("other-stable-0-x", "breast-cancer", names) is None


def test_follow_samples_replicas_per_predictor_over_time(
    apiserver: FakeApiServer, tmp_path: Path
) -> None:
    api = connect(str(apiserver.write_kubeconfig(tmp_path / "kubeconfig")))
    stable = "breast-cancer-stable-0-breast-cancer"
    apiserver.put(hpa(stable, 1, 2))
    apiserver.put(hpa("breast-cancer-canary-0-breast-cancer", 1, 1))
    apiserver.put(hpa("unrelated-app", 5, 5))
    assert hpa_replicas(api, "models", "breast-cancer", ["stable", "canary"]) == {
        "stable": (1, 2),
        "canary": (1, 1),
    }

    with follow_hpas(api, "models", "breast-cancer", ["stable", "canary"], interval_s=0.1) as f:
        time.sleep(0.4)
        apiserver.put(hpa(stable, 3, 3))  # the autoscaler scaled stable up
        time.sleep(0.4)
    stable_counts = [s.replicas for s in f.samples if s.predictor == "stable"]
    assert stable_counts[0] == 1 and stable_counts[-1] == 3
    assert {s.predictor for s in f.samples} == {"stable", "canary"} and not f.errors
