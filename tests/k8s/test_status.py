"""`cluster_status`: what the cluster serves for a values file."""

from __future__ import annotations

from pathlib import Path

import pytest
import yaml
from kubernetes.dynamic import DynamicClient

from serving.k8s import deploy
from serving.k8s.status import cluster_status
from serving.k8s.traffic import set_traffic

from .conftest import VALUES, write_values
from .fake_apiserver import SELDON, FakeApiServer

KEY = (SELDON.api_version, "seldondeployments", "models", "breast-cancer")

# deploy validates against the upstream Seldon CRD before it touches the cluster.
pytestmark = pytest.mark.usefixtures("needs_crd")


def test_status_shows_predictors_traffic_replicas_and_conditions(
    apiserver: FakeApiServer, api: DynamicClient, models_namespace: str
) -> None:
    deploy.deploy(VALUES, api=api, wait=False, progress=lambda _: None)
    apiserver.objects[KEY]["status"] = {
        "state": "Available",
        "observedGeneration": 1,
        "deploymentStatus": {
            "breast-cancer-stable-0-breast-cancer": {"replicas": 2, "availableReplicas": 2},
            "breast-cancer-canary-0-breast-cancer": {"replicas": 1, "availableReplicas": 1},
            "breast-cancer-shadow-0-breast-cancer": {"replicas": 1, "availableReplicas": 0},
        },
        "conditions": [
            {"type": "DeploymentsReady", "status": "True", "reason": "All deployments are ready"},
            {"type": "Ready", "status": "True"},
        ],
    }
    text = cluster_status(VALUES, api=api)
    assert text.splitlines() == [
        "SeldonDeployment models/breast-cancer: Available (generation 1, observed 1)",
        "  PREDICTOR  VERSION  TRAFFIC      REPLICAS  READY",
        "  stable     v1       90%          2         2/2",
        "  canary     v2       10%          1         1/1",
        "  shadow     v3       mirror 100%  1         0/1",
        "conditions:",
        "  DeploymentsReady=True  All deployments are ready",
        "  Ready=True",
    ]


def test_status_marks_traffic_that_differs_from_the_values(
    apiserver: FakeApiServer, api: DynamicClient, models_namespace: str
) -> None:
    deploy.deploy(VALUES, api=api, wait=False, progress=lambda _: None)
    set_traffic(api, "models", "breast-cancer", {"stable": 50, "canary": 50}, 20)
    text = cluster_status(VALUES, api=api)
    assert "50% (values: 90%)" in text and "mirror 20% (values: 100%)" in text
    assert "no status yet (generation 2, observed ?)" in text


def test_status_shows_autoscaled_replicas_and_predictors_not_yet_deployed(
    apiserver: FakeApiServer,
    api: DynamicClient,
    models_namespace: str,
    tmp_path: Path,
    kubeconfig: Path,
) -> None:
    values = yaml.safe_load(VALUES.read_text())
    values["predictors"] = [
        {
            "name": "stable",
            "version": "v1",
            "traffic": 100,
            "hpa": {"enabled": True, "minReplicas": 2, "maxReplicas": 5},
        }
    ]
    path = write_values(tmp_path, values)
    deploy.deploy(path, api=api, wait=False, progress=lambda _: None)
    assert "2-5 (hpa)" in cluster_status(path, kubeconfig=str(kubeconfig))
    assert "canary: in the values but not on the cluster; run 'serving deploy'" in cluster_status(
        VALUES, api=api
    )
