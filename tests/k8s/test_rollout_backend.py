"""Rollouts on Kubernetes, against the in-test API server over HTTP: weights move by JSON patch,
predictors change by server-side apply of the rendered chart, and the rollout status lives in an
annotation guarded by resourceVersion."""

from __future__ import annotations

import json
import os
import subprocess
import sys
import time
from pathlib import Path

import pytest
import yaml
from kubernetes.dynamic import DynamicClient

from serving.comparator.matching import Settings as ComparatorSettings
from serving.comparator.process import ComparatorProcess
from serving.k8s.rollout_backend import STATUS_ANNOTATION, AnnotationStateStore, KubernetesBackend
from serving.k8s.wait import get_sdep
from serving.rollout.commands import Target, begin
from serving.rollout.controller import Controller
from serving.rollout.metrics_source import PredictorWindow, Window
from serving.rollout.plan import RolloutPlan
from serving.rollout.state import Phase, StaleState
from serving.server import free_port

from ..comparator.cluster import PlayedCluster
from ..comparator.executors import disagreeing_labels, stable_labels
from ..prometheus import PROMETHEUS, prometheus
from .conftest import VALUES, write_values
from .fake_apiserver import SELDON, FakeApiServer

KEY = (SELDON.api_version, "seldondeployments", "models", "breast-cancer")
pytestmark = pytest.mark.usefixtures("needs_crd")


class ScriptedMetrics:
    """Windows as Prometheus would report them: a healthy or a failing candidate."""

    def __init__(self, candidate_error_rate: float) -> None:
        self.rate = candidate_error_rate

    def window(self, since: float) -> Window:
        def side(errors: float) -> PredictorWindow:
            return PredictorWindow(1000.0, errors, {0.005: 990.0, 0.01: 1000.0,
                                                    float("inf"): 1000.0})
        return Window(30.0, {"stable": side(0.0), "canary": side(1000.0 * self.rate)},
                      {"canary": (1000.0, 0.0)})


def plan() -> RolloutPlan:
    return RolloutPlan.model_validate({
        "steps": [{"setWeight": 20}, {"analysis": {}}, {"setWeight": 50}, {"analysis": {}}],
        "analysis": {"intervalSeconds": 0.01, "minRequests": 100}})


def predictors(server: FakeApiServer) -> list[tuple[str, str, int, bool]]:
    return [(p["name"], p["labels"]["version"], p.get("traffic", 0), bool(p.get("shadow")))
            for p in server.objects[KEY]["spec"]["predictors"]]


def run(api: DynamicClient, error_rate: float) -> tuple[Target, Phase]:
    backend = KubernetesBackend(VALUES, api=api)
    target = Target(AnnotationStateStore(backend), backend, ScriptedMetrics(error_rate), plan())
    begin(target, "v3")
    final = Controller(target.store, backend, target.metrics, target.plan,
                       echo=lambda _: None).run()
    return target, final.phase


def test_live_predictors_are_read_with_their_versions(deployed: FakeApiServer,
                                                      api: DynamicClient) -> None:
    live = KubernetesBackend(VALUES, api=api).get_predictors()
    assert [(p.name, p.version, p.traffic, p.shadow) for p in live] == [
        ("stable", "v1", 90, False), ("canary", "v2", 10, False), ("shadow", "v3", 100, True)]


def test_healthy_candidate_is_promoted_on_the_cluster(deployed: FakeApiServer,
                                                      api: DynamicClient) -> None:
    target, phase = run(api, error_rate=0.0)
    assert phase is Phase.PROMOTED
    assert predictors(deployed) == [("stable", "v3", 100, False), ("shadow", "v3", 100, True)]
    # weights moved by JSON patch, predictors by server-side apply; never strategic merge
    kinds = {ctype for method, _, ctype in deployed.requests if method == "PATCH"}
    assert "application/json-patch+json" in kinds and "application/apply-patch+yaml" in kinds
    assert "application/strategic-merge-patch+json" not in kinds
    status = target.store.load()
    assert status is not None and status.phase is Phase.PROMOTED
    assert STATUS_ANNOTATION in deployed.objects[KEY]["metadata"]["annotations"]


def test_failing_candidate_is_rolled_back_on_the_cluster(deployed: FakeApiServer,
                                                         api: DynamicClient) -> None:
    _, phase = run(api, error_rate=0.3)
    assert phase is Phase.ROLLED_BACK
    assert predictors(deployed) == [("stable", "v1", 100, False), ("shadow", "v3", 100, True)]


def test_rollback_moves_traffic_away_before_removing_the_canary(
    deployed: FakeApiServer, api: DynamicClient
) -> None:
    backend = KubernetesBackend(VALUES, api=api)
    live = backend.get_predictors()
    deployed.requests.clear()
    backend.apply([live[0].model_copy(update={"traffic": 100}), live[2]])
    patches = [ctype for method, _, ctype in deployed.requests if method == "PATCH"]
    assert patches == ["application/json-patch+json", "application/apply-patch+yaml"]
    assert predictors(deployed) == [("stable", "v1", 100, False), ("shadow", "v3", 100, True)]


def test_status_annotation_refuses_a_stale_writer(deployed: FakeApiServer,
                                                  api: DynamicClient) -> None:
    backend = KubernetesBackend(VALUES, api=api)
    target = Target(AnnotationStateStore(backend), backend, ScriptedMetrics(0.0), plan())
    first = begin(target, "v3")
    assert first.revision == 1
    stale = first.model_copy(update={"revision": 0})
    with pytest.raises(StaleState):
        target.store.save(stale)


def test_status_write_racing_another_writer_gets_a_conflict(deployed: FakeApiServer,
                                                            api: DynamicClient) -> None:
    backend = KubernetesBackend(VALUES, api=api)
    store = AnnotationStateStore(backend)
    target = Target(store, backend, ScriptedMetrics(0.0), plan())
    status = begin(target, "v3")
    real_sdep = backend.sdep

    def sdep_then_someone_writes() -> dict[str, object]:
        obj = real_sdep()
        deployed.objects[KEY]["metadata"]["resourceVersion"] = str(time.time_ns())
        return obj

    backend.sdep = sdep_then_someone_writes  # type: ignore[method-assign]
    with pytest.raises(StaleState):
        store.save(status)




@pytest.mark.slow
@pytest.mark.skipif(PROMETHEUS is None, reason="the 'prometheus' server is not installed "
                    "(Debian package 'prometheus')")
@pytest.mark.parametrize("agreeing", [False, True], ids=["disagreeing", "agreeing"])
def test_the_default_plans_mirror_step_is_judged_from_the_comparator_on_the_cluster(
        deployed: FakeApiServer, api: DynamicClient, kubeconfig: Path, tmp_path: Path,
        agreeing: bool) -> None:
    """`serving rollout start v4 --kubernetes --prometheus URL`, the default plan (mirror 100%
    first): the rendered SeldonDeployment logs to the comparator, played executors send it their
    events and export their request metrics, a real Prometheus scrapes both, and the verdict
    comes from the comparator's seldon_shadow_rows."""
    values = yaml.safe_load(VALUES.read_text())
    values["rollout"]["analysis"] = {"intervalSeconds": 1, "minRequests": 40}
    values_path = write_values(tmp_path, values)
    comparator = ComparatorProcess(free_port(), ComparatorSettings(
        deployments=frozenset({"breast-cancer"})), log=tmp_path / "comparator.log")
    comparator.start()
    played = PlayedCluster(lambda: get_sdep(api, "models", "breast-cancer"), comparator.url,
                           {"v4": stable_labels if agreeing else disagreeing_labels})
    try:
        with prometheus(tmp_path, {"comparator": comparator.url.removeprefix("http://"),
                                   "executors": played.metrics_target},
                        labels={"namespace": "models"}) as url:
            played.start()
            cli = subprocess.run(
                [sys.executable, "-m", "serving.cli", "rollout", "start", "v4", "--kubernetes",
                 "--prometheus", url, "--values", str(values_path)],
                env={**os.environ, "KUBECONFIG": str(kubeconfig)}, capture_output=True,
                text=True, timeout=240)
            played.stop()
    finally:
        comparator.stop()
    out = cli.stdout + cli.stderr
    # while mirrored, the candidate's executor logged to the comparator's shadow URL
    assert ("canary", "v4", "shadow") in played.seen, (played.seen, out)
    assert played.events_refused == 0, out
    status = json.loads(deployed.objects[KEY]["metadata"]["annotations"][STATUS_ANNOTATION])
    if agreeing:
        assert cli.returncode == 0, out
        assert status["phase"] == "Promoted", out
        assert "step 2: analysis successful" in out and "rows agree = 100.0%" in out, out
        assert predictors(deployed)[0] == ("stable", "v4", 100, False)
    else:
        assert cli.returncode == 4, out
        assert status["phase"] == "RolledBack", out
        assert "rows agree" in out and "failed" in out, out
        assert predictors(deployed) == [("stable", "v1", 100, False),
                                        ("shadow", "v3", 100, True)]
