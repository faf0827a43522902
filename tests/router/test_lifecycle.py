"""Starting and stopping the local stack never leaves model servers behind."""

from __future__ import annotations

import os
import signal
import subprocess
import time
from pathlib import Path

import httpx
import pytest
import yaml
from click.testing import CliRunner

from serving.cli import main
from serving.router.stack import start_background, stop_background

from .conftest import Stack, infer_body, start_stack, stop_stack

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


def children(pid: int) -> list[int]:
    out = subprocess.run(["ps", "-o", "pid=", "--ppid", str(pid)], capture_output=True, text=True)
    return [int(p) for p in out.stdout.split()]


def test_a_killed_router_takes_its_model_servers_with_it(models_root: Path,
                                                         tmp_path: Path) -> None:
    stack = start_stack(ONE_PREDICTOR, tmp_path, models_root)
    pids = replica_pids(stack)
    helpers = children(stack.process.pid)  # model servers, nginx, the shadow worker
    assert stack.status()["shadow"]["worker"]["pid"] in helpers
    os.kill(stack.process.pid, signal.SIGKILL)
    stack.process.wait()
    assert all(gone(pid) for pid in pids), "model servers outlived their router"
    assert all(gone(pid) for pid in helpers), "nginx or the shadow worker outlived the router"


def test_up_works_from_a_relative_state_dir(models_root: Path, tmp_path: Path,
                                            monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.chdir(tmp_path)  # like 'make up': .serving/ under the current directory
    values = {**ONE_PREDICTOR, "model": {"localRepository": str(models_root)},
              "router": {"port": 0, "grpcPort": 0}}
    Path("values.yaml").write_text(yaml.safe_dump(values))
    process, state = start_background(Path("values.yaml"), Path(".serving"), Path("up.log"))
    try:
        resp = httpx.post(state["seldonUrl"] + "/v2/models/breast-cancer/infer",
                          json=infer_body(), timeout=10)
        assert resp.status_code == 200, resp.text
    finally:
        stop_background(process)


def test_up_refuses_a_bad_values_file_naming_the_field(tmp_path: Path) -> None:
    values = tmp_path / "values.yaml"
    values.write_text("predictors:\n  - {name: stable, version: v1, traffic: 120}\n")
    result = CliRunner().invoke(main, ["up", "--values", str(values),
                                       "--state-dir", str(tmp_path / "state")])
    assert result.exit_code == 2
    assert "predictors[0].traffic" in result.output
