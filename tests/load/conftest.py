"""Fixtures for load tests: a real local stack (router + MLServer processes) to drive with locust,
values files with chosen SLOs, and the `cluster` marker (tests that need a real cluster run only
when KUBECONFIG is set)."""

from __future__ import annotations

import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
import yaml

from tests.k8s.fake_apiserver import FakeApiServer, Kind
from tests.router.conftest import Stack, start_stack, stop_stack

ROOT = Path(__file__).resolve().parents[2]
WEIGHTS = {"stable": 70, "canary": 30}
VALUES: dict[str, Any] = {
    "deployment": {"name": "breast-cancer", "namespace": "models"},
    "predictors": [
        {"name": "stable", "version": "v1", "traffic": WEIGHTS["stable"]},
        {"name": "canary", "version": "v2", "traffic": WEIGHTS["canary"]},
    ],
}
# Budgets a loaded 2-core CI machine meets, and budgets nothing can meet.
SANE_SLO = {"p95Ms": 2000.0, "p99Ms": 5000.0, "maxErrorRate": 0.05, "minRps": 10.0}
TIGHT_SLO = {"p95Ms": 0.001, "p99Ms": 0.002, "maxErrorRate": 0.0, "minRps": 1000000.0}


@pytest.fixture(scope="module")
def load_stack(models_root: Path, tmp_path_factory: pytest.TempPathFactory) -> Iterator[Stack]:
    """The local stack splitting 70/30 between stable (v1) and canary (v2), one replica each."""
    stack = start_stack(VALUES, tmp_path_factory.mktemp("load-stack"), models_root)
    yield stack
    stop_stack(stack)


HPA = Kind("autoscaling", "v1", "HorizontalPodAutoscaler", "horizontalpodautoscalers")


def hpa(target: str, current: int, desired: int) -> dict[str, Any]:
    """An HPA as the Seldon operator names it: after the Deployment it scales."""
    return {
        "apiVersion": "autoscaling/v1",
        "kind": "HorizontalPodAutoscaler",
        "metadata": {"name": target, "namespace": "models",
                     "labels": {"seldon-deployment-id": "breast-cancer"}},
        "spec": {"scaleTargetRef": {"apiVersion": "apps/v1", "kind": "Deployment", "name": target},
                 "minReplicas": 1, "maxReplicas": 3},
        "status": {"currentReplicas": current, "desiredReplicas": desired},
    }  # fmt: skip


@pytest.fixture
def apiserver() -> Iterator[FakeApiServer]:
    server = FakeApiServer()
    server.kinds.append(HPA)
    server.start()
    yield server
    server.stop()


def values_file(tmp: Path, slo: dict[str, float], models_root: Path | None = None) -> Path:
    values = {**VALUES, "slo": slo}
    if models_root is not None:
        values["model"] = {"localRepository": str(models_root)}
    path = tmp / f"values-{len(list(tmp.glob('values-*')))}.yaml"
    path.write_text(yaml.safe_dump(values, sort_keys=False))
    return path


def run(args: list[str], timeout: float = 180) -> subprocess.CompletedProcess[str]:
    """A command from the project root, output captured as text."""
    return subprocess.run(
        [sys.executable, *args], cwd=ROOT, capture_output=True, text=True, timeout=timeout
    )
