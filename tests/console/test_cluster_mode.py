"""The console against a cluster (--kubernetes): the Kubernetes side is the in-process API
server of tests/k8s (the official client talks HTTP to it), Prometheus is away. The page shows
what the SeldonDeployment runs and says the figures are missing; the buttons need the console's
token and move the SeldonDeployment as `serving rollout ... --kubernetes` does."""

from __future__ import annotations

import os
import signal
import time
from pathlib import Path

import pytest
from kubernetes.config import kube_config
from kubernetes.dynamic import DynamicClient
from streamlit.testing.v1 import AppTest

from serving.console import rollout_panel
from serving.console.commands import APP
from serving.console.config import TOKEN_ENV, ConsoleConfig
from serving.errors import ServingError
from serving.k8s import deploy
from serving.k8s.rollout_backend import STATUS_ANNOTATION as ANNOTATION
from serving.rollout.state import Phase, parse_status
from serving.server import free_port

from ..k8s.conftest import (  # noqa: F401 (fixtures)
    VALUES,
    api,
    apiserver,
    kubeconfig,
    models_namespace,
    needs_crd,
)
from ..k8s.fake_apiserver import SELDON, FakeApiServer

KEY = (SELDON.api_version, "seldondeployments", "models", "breast-cancer")
pytestmark = pytest.mark.usefixtures("needs_crd")


@pytest.fixture
def cluster(apiserver: FakeApiServer, api: DynamicClient, models_namespace: str,  # noqa: F811
            kubeconfig: Path, monkeypatch: pytest.MonkeyPatch,  # noqa: F811
            tmp_path: Path) -> ConsoleConfig:
    deploy.deploy(VALUES, api=api, wait=False, progress=lambda _: None)
    monkeypatch.setenv("KUBECONFIG", str(kubeconfig))  # for the controller's process
    # ... and for this one, whose Kubernetes client read $KUBECONFIG when it was imported
    monkeypatch.setattr(kube_config, "KUBE_CONFIG_DEFAULT_LOCATION", str(kubeconfig))
    monkeypatch.setenv(TOKEN_ENV, "the-console-token")
    config = ConsoleConfig(values_path=str(VALUES), state_dir=tmp_path / "state",
                           kubernetes=True, prometheus=f"http://127.0.0.1:{free_port()}")
    for key, value in config.to_env().items():
        monkeypatch.setenv(key, value)
    return config


def test_the_page_shows_the_seldon_deployment_and_says_figures_are_missing(
        cluster: ConsoleConfig) -> None:
    at = AppTest.from_file(str(APP), default_timeout=30)
    at.run()
    assert not at.exception, [e.value for e in at.exception]
    assert at.table, [e.value for e in at.error]
    table = at.table[0].value
    assert table[["predictor", "version", "traffic", "live replicas"]].values.tolist() == [
        ["stable", "v1", "90%", "-"], ["canary", "v2", "10%", "-"],
        ["shadow", "v3", "mirrors 100%", "-"]]
    assert any("No figures: Prometheus at" in w.value for w in at.warning)
    assert "No rollout yet." in [m.value for m in at.markdown]


def annotation(apiserver: FakeApiServer) -> dict[str, str]:  # noqa: F811
    return dict(apiserver.objects[KEY]["metadata"].get("annotations") or {})


def test_start_and_abort_on_the_cluster_need_the_console_token(
        cluster: ConsoleConfig, apiserver: FakeApiServer) -> None:  # noqa: F811
    with pytest.raises(ServingError, match="printed when it started"):
        rollout_panel.act(cluster, "start", "guess", "v3")
    assert ANNOTATION not in annotation(apiserver)
    lines = rollout_panel.act(cluster, "start", "the-console-token", "v3")
    pid = rollout_panel.controller_running(cluster)
    try:
        log = cluster.state_dir / "console-controller.log"
        assert pid is not None and f"pid {pid}" in lines[-1], (
            lines, (cluster.state_dir / "console-controller.json").read_text(), log.read_text())
        status = parse_status(annotation(apiserver)[ANNOTATION], Path("annotation"))
        assert (status.candidate, status.phase) == ("v3", Phase.PROGRESSING)
        for attempt in range(3):  # the controller may save between our read and write
            try:
                rollout_panel.act(cluster, "abort", "the-console-token")
                break
            except ServingError as e:
                assert "changed meanwhile" in e.message and attempt < 2
        status = parse_status(annotation(apiserver)[ANNOTATION], Path("annotation"))
        assert status.phase is Phase.ABORTED
        predictors = apiserver.objects[KEY]["spec"]["predictors"]
        assert [(p["name"], p["traffic"]) for p in predictors] == [("stable", 100),
                                                                   ("shadow", 100)]
    finally:
        if pid is not None:
            os.kill(pid, signal.SIGTERM)
            deadline = time.monotonic() + 10
            while rollout_panel.controller_running(cluster) and time.monotonic() < deadline:
                time.sleep(0.1)
