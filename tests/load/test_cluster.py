"""On a real cluster with Seldon Core v1 and the chart deployed ('serving deploy'). Skipped unless
KUBECONFIG is set. SERVING_CLUSTER_VALUES picks the values file (default: the chart's);
SERVING_CLUSTER_INGRESS (http://<ingress>/seldon/<namespace>/<deployment>) enables the load test
through the ingress."""

from __future__ import annotations

import json
import os
import time
from pathlib import Path

import pytest

from serving.k8s.client import connect
from serving.load.hpa import follow_hpas
from serving.spec import load_spec

from .conftest import run

pytestmark = pytest.mark.cluster

VALUES = os.environ.get("SERVING_CLUSTER_VALUES", "charts/seldon-model/values.yaml")


def test_follow_the_hpas_of_the_deployed_values() -> None:
    spec = load_spec(VALUES)
    d = spec.deployment
    with follow_hpas(connect(), d.namespace, d.name, [p.name for p in spec.predictors], 1) as f:
        time.sleep(5)
    assert not f.errors
    with_hpa = {p.name for p in spec.predictors if p.hpa.enabled}
    assert with_hpa <= {s.predictor for s in f.samples}
    max_replicas = {p.name: p.hpa.max_replicas for p in spec.predictors}
    for s in f.samples:
        assert s.replicas >= 0 and (s.desired or 0) <= max_replicas[s.predictor]


def test_a_load_test_through_the_ingress_reads_the_weights_and_follows_the_hpas(
    tmp_path: Path,
) -> None:
    ingress = os.environ.get("SERVING_CLUSTER_INGRESS")
    if not ingress:
        pytest.skip(
            "set SERVING_CLUSTER_INGRESS to http://<ingress>/seldon/<namespace>/<deployment>"
        )
    done = run(
        ["-m", "serving.cli", "loadtest", "--target", ingress, "--cluster", "--values", VALUES,
         "--out", str(tmp_path), "--duration", "20", "--users", "4", "--rps", "20"]
    )  # fmt: skip
    (report_dir,) = tmp_path.iterdir()
    summary = json.loads((report_dir / "summary.json").read_text())
    assert summary["weightsSource"] == "--weights", done.stdout + done.stderr
    assert summary["overall"]["requests"] > 0 and (report_dir / "replicas.csv").exists()
