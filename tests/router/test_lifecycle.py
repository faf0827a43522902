"""Starting and stopping the local stack never leaves model servers behind."""

from __future__ import annotations

import os
import signal
import time
from pathlib import Path

import pytest
from click.testing import CliRunner

from serving.cli import main

from .conftest import Stack, start_stack, stop_stack

pytestmark = pytest.mark.slow
ONE_PREDICTOR = {"predictors": [{"name": "stable", "version": "v1", "traffic": 100}]}


def replica_pids(stack: Stack) -> list[int]:
    return [r["pid"] for p in stack.status()["predictors"] for r in p["replicas"]]


def gone(pid: int, within: float = 15.0) -> bool:
    deadline = time.monotonic() + within
    while time.monotonic() < deadline:
        try:
            os.kill(pid, 0)
        except ProcessLookupError:
            return True
        # a zombie of ours counts as gone; only a running process does not
        try:
            if Path(f"/proc/{pid}/stat").read_text().split(") ")[1].startswith("Z"):
                return True
        except (FileNotFoundError, IndexError):
            return True
        time.sleep(0.1)
    return False


def test_serving_down_stops_the_router_and_every_replica(models_root: Path,
                                                         tmp_path: Path) -> None:
    stack = start_stack(ONE_PREDICTOR, tmp_path, models_root)
    try:
        pids = replica_pids(stack)
        result = CliRunner().invoke(main, ["down", "--state-dir", str(stack.state_dir)])
        assert result.exit_code == 0, result.output
        assert "stopped" in result.output
        assert stack.process.wait(10) == 0
        assert all(gone(pid) for pid in pids)
        assert not (stack.state_dir / "stack.json").exists()
        again = CliRunner().invoke(main, ["status", "--state-dir", str(stack.state_dir)])
        assert again.exit_code != 0 and "no local stack is running" in again.output
    finally:
        if stack.process.poll() is None:
            stop_stack(stack)


def test_a_killed_router_takes_its_model_servers_with_it(models_root: Path,
                                                         tmp_path: Path) -> None:
    stack = start_stack(ONE_PREDICTOR, tmp_path, models_root)
    pids = replica_pids(stack)
    os.kill(stack.process.pid, signal.SIGKILL)
    stack.process.wait()
    assert all(gone(pid) for pid in pids), "model servers outlived their router"


def test_up_refuses_a_bad_values_file_naming_the_field(tmp_path: Path) -> None:
    values = tmp_path / "values.yaml"
    values.write_text("predictors:\n  - {name: stable, version: v1, traffic: 120}\n")
    result = CliRunner().invoke(main, ["up", "--values", str(values),
                                       "--state-dir", str(tmp_path / "state")])
    assert result.exit_code == 2
    assert "predictors[0].traffic" in result.output
