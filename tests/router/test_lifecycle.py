"""Starting and stopping the local stack never leaves model servers behind."""

from __future__ import annotations

import contextlib
import json
import os
import signal
import subprocess
import time
from pathlib import Path
from typing import Any

import httpx
import pytest
import yaml
from click.testing import CliRunner

from serving.cli import main
from serving.router.stack import start_background, stop_background
from serving.server import process_start_time

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


def test_down_after_a_killed_router_ends_what_it_left_and_removes_its_folders(
        models_root: Path, tmp_path: Path) -> None:
    stack = start_stack(ONE_PREDICTOR, tmp_path, models_root)
    state = stack.state
    run_dir = Path(state["runDir"])
    assert list(run_dir.glob("mlserver-*"))  # the model server's working folder is in there
    recorded = {r["what"]: r["pid"] for r in state["processes"]}
    assert set(recorded) == {"replica stable-0", "nginx", "shadow worker", "comparator"}
    replica = recorded["replica stable-0"]
    os.kill(replica, signal.SIGSTOP)  # stopped, it cannot act on the SIGTERM its parent's death sends
    os.kill(stack.process.pid, signal.SIGKILL)
    stack.process.wait()
    try:
        assert not gone(replica, within=1), "the stopped replica should have outlived its router"
        result = CliRunner().invoke(main, ["down", "--state-dir", str(stack.state_dir)])
        assert result.exit_code == 0, result.output
        assert "was not running" in result.output
        assert f"ended replica stable-0 (pid {replica})" in result.output
        assert f"removed {run_dir}" in result.output
        assert all(gone(pid) for pid in recorded.values())
        assert not run_dir.exists()
        assert not (stack.state_dir / "stack.json").exists()
    finally:
        with contextlib.suppress(ProcessLookupError):
            os.kill(replica, signal.SIGKILL)


def test_down_ends_only_the_processes_its_state_file_names(tmp_path: Path) -> None:
    """A recorded pid now held by another process (same pid, another start time) is left alone."""
    dead = subprocess.Popen(["true"])
    dead.wait()
    other = subprocess.Popen(["sleep", "60"], start_new_session=True)
    try:
        start = process_start_time(other.pid)
        assert start is not None
        state_dir = tmp_path / "state"
        state_dir.mkdir()
        state: dict[str, Any] = {"pid": dead.pid, "runDir": str(tmp_path),
                 "processes": [{"what": "replica stable-0", "pid": other.pid, "start": start + 1}]}
        (state_dir / "stack.json").write_text(json.dumps(state))
        result = CliRunner().invoke(main, ["down", "--state-dir", str(state_dir)])
        assert result.exit_code == 0, result.output
        assert "ended" not in result.output and "removed" not in result.output
        assert other.poll() is None and tmp_path.exists()
        # the same record with the right start time is that process: it is ended
        state["processes"][0]["start"] = start
        (state_dir / "stack.json").write_text(json.dumps(state))
        result = CliRunner().invoke(main, ["down", "--state-dir", str(state_dir)])
        assert f"ended replica stable-0 (pid {other.pid})" in result.output
        assert other.wait(5) == -signal.SIGKILL
    finally:
        other.kill()
        other.wait()
