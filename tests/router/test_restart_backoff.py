"""A replica that keeps crashing is restarted after a growing delay, and status says why."""

from __future__ import annotations

import os
import re
import shutil
import signal
import time
from pathlib import Path

import pytest
from click.testing import CliRunner

from serving.cli import main
from serving.router import replicas
from serving.router.replicas import Replica, exit_reason
from serving.server import MLServerProcess, ServerSettings

from .conftest import start_stack, stop_stack

TRACEBACK = """\
2026-12-01 23:04:48,400 [mlserver] INFO - Loading model 'breast-cancer'
2026-12-01 23:04:48,500 [mlserver] ERROR - Some of the models failed to load during startup!
Traceback (most recent call last):
  File "/work/main/serving/artifacts.py", line 115, in verify
    raise ChecksumMismatch(str(artifact), meta.artifact.sha256, actual)
serving.errors.ChecksumMismatch: refusing to load /m/v1/model.joblib: its sha256 is e52
2026-12-01 23:04:48,528 [mlserver.grpc] INFO - Waiting for gRPC server shutdown
ERROR:    Traceback (most recent call last):
asyncio.exceptions.CancelledError
INFO:     Application shutdown complete.
"""


def test_the_exit_reason_is_the_last_exception_line_of_the_log() -> None:
    assert exit_reason(0, TRACEBACK) == (
        "exit code 0: serving.errors.ChecksumMismatch: refusing to load /m/v1/model.joblib: "
        "its sha256 is e52")
    assert exit_reason(-9, "INFO: started\n") == "killed by SIGKILL"
    assert exit_reason(1, "x [mlserver] ERROR - no port\nINFO: bye\n") == (
        "exit code 1: x [mlserver] ERROR - no port")


def test_restarts_back_off_and_a_replica_that_served_a_while_restarts_at_once(
        tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    replica = Replica("stable", "v1", 0, MLServerProcess(tmp_path, ServerSettings.tuned()))
    replica.became_ready()
    delays = [replica.restart_delay() for _ in range(9)]  # crashes that never became ready
    assert delays == [0, 1, 2, 4, 8, 16, 32, 60, 60]
    replica.became_ready()
    assert replica.restart_delay() == 60  # up for less than BACKOFF_RESET: still backs off
    monkeypatch.setattr(replicas, "BACKOFF_RESET", 0.0)
    replica.became_ready()
    assert replica.restart_delay() == 0  # it served BACKOFF_RESET seconds: a fresh start
    assert replica.restart_delay() == 1


@pytest.mark.slow
def test_a_replica_whose_artifact_is_refused_backs_off_and_status_says_why(
        models_root: Path, tmp_path: Path) -> None:
    models = tmp_path / "models"
    shutil.copytree(models_root, models)
    stack = start_stack({"predictors": [{"name": "stable", "version": "v1", "traffic": 100,
                                         "replicas": 2}]}, tmp_path, models)
    try:
        with (models / "breast-cancer" / "v1" / "model.joblib").open("ab") as f:
            f.write(b"\0corrupt")
        os.kill(stack.replica_pid("stable", 0), signal.SIGKILL)
        deadline = time.monotonic() + 60
        while "restarting in 4s" not in stack.log.read_text():
            assert time.monotonic() < deadline, stack.log.read_text()
            time.sleep(0.2)
        waits = re.findall(r"stable-0 .*?; restarting(?: in (\d+)s)?", stack.log.read_text())
        assert waits[:4] == ["", "1", "2", "4"], waits  # 0, then 1 s doubling
        replica = stack.status()["predictors"][0]["replicas"][0]
        assert not replica["alive"] and replica["restarts"] == 4
        assert "refusing to load" in replica["lastExit"], replica
        assert 0 < replica["restartInSeconds"] <= 4
        shown = CliRunner().invoke(main, ["status", "--state-dir", str(stack.state_dir)])
        assert re.search(r"stable-0: restarting in [\d.]+s; last exit: exit code \d+: "
                         r"\S+: refusing to load", shown.output), shown.output
        assert "1/2 live" in shown.output
    finally:
        stop_stack(stack)
