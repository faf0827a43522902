"""Rollouts on the local stack with real MLServer processes under load: healthy candidates are
promoted; failing, slow and disagreeing ones are rolled back automatically; a killed controller
resumes where it was."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

import pytest
import yaml

from serving.rollout.backends import LocalRouterBackend
from serving.rollout.controller import Controller
from serving.rollout.metrics_source import RouterMetricsSource
from serving.rollout.plan import RolloutPlan
from serving.rollout.state import FileStateStore, Phase, RolloutStatus

from ..router.conftest import Stack
from .conftest import FAST_ANALYSIS, Load

pytestmark = pytest.mark.slow


def plan(*steps: dict[str, Any], **analysis: Any) -> RolloutPlan:
    return RolloutPlan.model_validate({"steps": list(steps),
                                       "analysis": {**FAST_ANALYSIS, **analysis}})


def start(stack: Stack, candidate: str, p: RolloutPlan, env: dict[str, str] | None = None,
          timeout: float = 90) -> tuple[RolloutStatus, Load, list[str]]:
    """Run a whole rollout in-process under background load; returns the final status."""
    backend = LocalRouterBackend(stack.state["restUrl"], stack.state["adminToken"])
    store = FileStateStore(stack.state_dir)
    predictors = backend.get_predictors()
    stable = next(p for p in predictors if p.name == "stable")
    shadow = next((x for x in predictors if x.shadow), None)
    now = time.time()
    store.save(RolloutStatus(
        candidate=candidate, stable_version=stable.version, stable_predictor="stable",
        stable_spec=stable.model_dump(mode="json", by_alias=True), candidate_predictor="canary",
        candidate_env=env or {},
        original_shadow=shadow.model_dump(mode="json", by_alias=True) if shadow else None,
        step_started_at=now, window_started_at=now))
    lines: list[str] = []
    controller = Controller(store, backend, RouterMetricsSource(
        stack.state["restUrl"] + "/metrics", "breast-cancer"), p, echo=lines.append)
    load = Load(stack.infer_url).start()
    deadline = time.monotonic() + timeout
    try:
        while True:
            status = controller.tick()
            if status.phase.terminal:
                break
            assert time.monotonic() < deadline, f"rollout did not finish: {lines}"
            time.sleep(p.analysis.interval_seconds)
        time.sleep(0.5)  # a little traffic after the end
    finally:
        load.stop()
    return status, load, lines


def running(stack: Stack) -> list[tuple[str, str, int, bool]]:
    return [(p["name"], p["version"], p["traffic"], p["shadow"])
            for p in stack.status()["predictors"]]


def test_healthy_candidate_walks_the_steps_and_is_promoted(fresh_stack: Stack) -> None:
    p = plan({"mirror": 100}, {"analysis": {}}, {"setWeight": 30}, {"analysis": {}},
             {"setWeight": 60}, {"analysis": {}})
    status, load, lines = start(fresh_stack, "v3", p)
    assert status.phase is Phase.PROMOTED, lines
    assert load.statuses() == {200: len(load.results)}  # no caller saw an error, no gap
    assert running(fresh_stack) == [("stable", "v3", 100, False), ("shadow", "v3", 50, True)]
    steps = [e.message for e in status.history if e.kind == "step"]
    assert any("mirror 100%" in m for m in steps) and any("setWeight 60" in m for m in steps)
    served = {predictor for _, _, predictor in load.results}
    assert {"stable", "canary"} <= served


def test_failing_candidate_is_rolled_back_and_the_damage_is_bounded(fresh_stack: Stack) -> None:
    p = plan({"setWeight": 20}, {"analysis": {}}, {"setWeight": 50}, {"analysis": {}})
    status, load, lines = start(fresh_stack, "v3", p, env={"SERVING_FAULT_ERROR_RATE": "0.5"})
    assert status.phase is Phase.ROLLED_BACK, lines
    assert "errors failed" in status.message
    assert running(fresh_stack) == [("stable", "v1", 100, False), ("shadow", "v3", 50, True)]
    failures = [t for t, s, _ in load.results if s != 200]
    assert failures, "the faulty canary should have failed some requests"
    # Bounded by the plan: only the canary's 20% share, at its 50% error rate, for about
    # failureLimit analysis intervals (+ one for the window to fill).
    share = len(failures) / len(load.results)
    assert share < 0.2 * 0.5 * 1.5, (share, lines)
    canary_after = [t for t, _, predictor in load.results
                    if predictor == "canary" and t > status.history[-1].at + 1.0]
    assert not canary_after, "traffic went to the canary after the rollback"


def test_slower_candidate_fails_the_latency_check(fresh_stack: Stack) -> None:
    p = plan({"setWeight": 40}, {"analysis": {}}, {"setWeight": 80})
    status, load, lines = start(fresh_stack, "v3", p, env={"SERVING_FAULT_LATENCY_MS": "40"})
    assert status.phase is Phase.ROLLED_BACK, lines
    assert "latency failed" in status.message
    assert load.statuses() == {200: len(load.results)}


def test_disagreeing_candidate_fails_agreement_while_only_mirrored(fresh_stack: Stack) -> None:
    p = plan({"mirror": 100}, {"analysis": {}}, {"setWeight": 50})
    status, load, lines = start(fresh_stack, "v4", p)
    assert status.phase is Phase.ROLLED_BACK, lines
    assert "agreement failed" in status.message
    # it never took traffic: callers saw only stable, and no errors
    assert {predictor for _, _, predictor in load.results} == {"stable"}
    assert load.statuses() == {200: len(load.results)}
    assert running(fresh_stack) == [("stable", "v1", 100, False), ("shadow", "v3", 50, True)]


def _cli(stack: Stack, values: Path, *args: str) -> subprocess.Popen[bytes]:
    return subprocess.Popen(
        [sys.executable, "-m", "serving.cli", "rollout", *args, "--values", str(values),
         "--state-dir", str(stack.state_dir)],
        stdout=subprocess.PIPE, stderr=subprocess.STDOUT)


def test_killed_controller_resumes_at_the_same_step(fresh_stack: Stack, tmp_path: Path) -> None:
    values = tmp_path / "values.yaml"
    values.write_text(yaml.safe_dump({
        "predictors": [{"name": "stable", "version": "v1"}],
        "rollout": {"steps": [{"setWeight": 20}, {"pause": "6s"}, {"setWeight": 50},
                              {"analysis": {}}], "analysis": FAST_ANALYSIS}}))
    store = FileStateStore(fresh_stack.state_dir)
    load = Load(fresh_stack.infer_url).start()
    try:
        controller = _cli(fresh_stack, values, "start", "v3")
        deadline = time.monotonic() + 60
        while (s := store.load()) is None or s.step_index < 1 or s.canary_weight != 20:
            assert time.monotonic() < deadline and controller.poll() is None
            time.sleep(0.2)
        while not any(p[0] == "canary" for p in running(fresh_stack)):
            assert time.monotonic() < deadline
            time.sleep(0.2)
        os.kill(controller.pid, signal.SIGKILL)  # mid-pause
        controller.wait()
        killed_at = store.load()
        assert killed_at is not None and killed_at.step_index == 1
        assert ("canary", "v3", 20, False) in running(fresh_stack)

        resumed = _cli(fresh_stack, values, "run")
        output, _ = resumed.communicate(timeout=90)
        assert resumed.returncode == 0, output.decode()
    finally:
        load.stop()
    final = store.load()
    assert final is not None and final.phase is Phase.PROMOTED, output.decode()
    weight_steps = [e for e in final.history if e.kind == "step" and "setWeight 20" in e.message]
    assert len(weight_steps) == 1  # never applied twice
    pause_done = next(e for e in final.history if "pause of 6s done" in e.message)
    assert pause_done.at - killed_at.step_started_at >= 6  # the pause kept its start time
    assert load.statuses() == {200: len(load.results)}


def test_operator_abort_sends_all_traffic_back_to_stable(fresh_stack: Stack,
                                                          tmp_path: Path) -> None:
    values = tmp_path / "values.yaml"
    values.write_text(yaml.safe_dump({
        "predictors": [{"name": "stable", "version": "v1"}],
        "rollout": {"steps": [{"setWeight": 30}, {"pause": {}}], "analysis": FAST_ANALYSIS}}))
    started = _cli(fresh_stack, values, "start", "v2")
    out, _ = started.communicate(timeout=60)
    assert b"Paused" in out or b"paused" in out, out.decode()
    assert ("canary", "v2", 30, False) in running(fresh_stack)
    status = _cli(fresh_stack, values, "status")
    assert b"Paused" in status.communicate(timeout=30)[0]
    abort = _cli(fresh_stack, values, "abort")
    out, _ = abort.communicate(timeout=60)
    assert abort.returncode == 0, out.decode()
    assert running(fresh_stack) == [("stable", "v1", 100, False), ("shadow", "v3", 50, True)]
    history = _cli(fresh_stack, values, "history").communicate(timeout=30)[0].decode()
    assert "started" in history and "paused" in history and "aborted" in history
