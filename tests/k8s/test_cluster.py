"""On a real cluster with Seldon Core v1 (kind works: see README, 'Deploy to a real cluster').
Skipped unless KUBECONFIG is set. SERVING_CLUSTER_VALUES picks the values file (default: the
chart's), SERVING_CLUSTER_TIMEOUT the seconds to wait for Available (default 600)."""

from __future__ import annotations

import os

import pytest

from serving.k8s import deploy
from serving.k8s.client import connect
from serving.k8s.status import cluster_status
from serving.k8s.traffic import get_traffic, set_traffic
from serving.spec import load_spec

from .conftest import VALUES

pytestmark = pytest.mark.cluster

VALUES_PATH = os.environ.get("SERVING_CLUSTER_VALUES", str(VALUES))
TIMEOUT = float(os.environ.get("SERVING_CLUSTER_TIMEOUT", "600"))


@pytest.mark.timeout(TIMEOUT + 120)
def test_deploy_waits_until_available_then_status_and_traffic_work() -> None:
    spec = load_spec(VALUES_PATH)
    namespace, name = spec.deployment.namespace, spec.deployment.name
    api = connect()
    sdep = deploy.deploy(VALUES_PATH, api=api, create_namespace=True, timeout=TIMEOUT)
    assert sdep is not None and sdep["status"]["state"] == "Available"

    text = cluster_status(VALUES_PATH)
    for p in spec.predictors:
        assert p.name in text

    before = get_traffic(api, namespace, name)
    if len(before.weights) > 1:
        first, *rest = list(before.weights)
        moved = {first: 100, **{r: 0 for r in rest}}
        assert set_traffic(api, namespace, name, moved).weights == moved
        assert set_traffic(api, namespace, name, before.weights, before.shadow_percent) == before
