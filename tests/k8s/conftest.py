"""Fixtures for the Kubernetes side: the chart, the upstream Seldon CRD, an in-process API server,
and the `cluster` marker (tests that need a real cluster run only when KUBECONFIG is set)."""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
from kubernetes.dynamic import DynamicClient

from serving.k8s import chart, validate
from serving.k8s.client import connect

from .fake_apiserver import FakeApiServer

VALUES = chart.CHART_DIR / "values.yaml"


@pytest.fixture
def needs_crd() -> Path:
    path = validate.crd_path()
    if not path.exists():
        pytest.skip(f"the upstream SeldonDeployment CRD is not at {path} (set SERVING_SELDON_CRD)")
    return path


@pytest.fixture
def apiserver() -> Iterator[FakeApiServer]:
    server = FakeApiServer().start()
    yield server
    server.stop()


@pytest.fixture
def kubeconfig(apiserver: FakeApiServer, tmp_path: Path) -> Path:
    return apiserver.write_kubeconfig(tmp_path / "kubeconfig")


@pytest.fixture
def api(kubeconfig: Path, tmp_path: Path) -> DynamicClient:
    """The official dynamic client, connected through a kubeconfig like a user's."""
    return connect(str(kubeconfig), discovery_cache=str(tmp_path / "discovery.json"))


@pytest.fixture
def models_namespace(apiserver: FakeApiServer) -> str:
    apiserver.put({"apiVersion": "v1", "kind": "Namespace", "metadata": {"name": "models"}})
    return "models"


def write_values(tmp_path: Path, values: dict[str, Any]) -> Path:
    import yaml

    path = tmp_path / "values.yaml"
    path.write_text(yaml.safe_dump(values, sort_keys=False))
    return path


@pytest.fixture
def deployed(apiserver: FakeApiServer, api: DynamicClient, models_namespace: str) -> FakeApiServer:
    """The chart's defaults applied to the in-test API server; its request log cleared."""
    from serving.k8s import deploy

    deploy.deploy(VALUES, api=api, wait=False, progress=lambda _: None)
    apiserver.requests.clear()
    return apiserver
