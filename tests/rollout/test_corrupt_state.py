"""A corrupt `.serving/rollout.json` (empty, truncated, not JSON, an unknown phase, wrong types)
through the real CLI: every command names the file and the way out instead of a traceback, `start`
says to run `abort`, and `abort` recovers: it gives the stable predictor all traffic (from what is
left of the file, else from what runs) and moves the file aside so a new rollout can start."""

from __future__ import annotations

import json
import os
import stat
import subprocess
import sys
import threading
from collections.abc import Iterator
from dataclasses import dataclass, field
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from typing import Any

import pytest
import yaml

from serving.rollout.state import CorruptState, FileStateStore, RolloutStatus

STABLE = {"name": "stable", "version": "v1", "traffic": 70}
CANARY = {"name": "canary", "version": "v2", "traffic": 30}
SHADOW = {"name": "shadow", "version": "v3", "shadow": True, "traffic": 50}


def a_status() -> RolloutStatus:
    return RolloutStatus(
        candidate="v2", stable_version="v1", stable_predictor="stable",
        stable_spec={"name": "stable", "version": "v1", "traffic": 100},
        candidate_predictor="canary", original_shadow=SHADOW, canary_weight=30,
        step_started_at=1.0, window_started_at=1.0)


VALID = a_status().model_dump_json(indent=2)


def with_fields(**changes: Any) -> str:
    data = json.loads(VALID)
    data.update(changes)
    return json.dumps(data)


# case -> (file content, what the error says is wrong, whether the stable predictor survives in it)
CORRUPT = {
    "empty": ("", "it is empty", False),
    "truncated": (VALID[: len(VALID) // 2], "not valid JSON (EOF while parsing", False),
    "invalid-json": ("{stable: v1,,}", "not valid JSON (key must be a string", False),
    "unknown-phase": (with_fields(phase="Exploded"),
                      "phase: Input should be 'Progressing', 'Paused', 'Promoted', 'RolledBack' "
                      "or 'Aborted'", True),
    "wrong-types": (with_fields(canary_weight="ten", candidate=5),
                    "candidate: Input should be a valid string; canary_weight: Input should be "
                    "a valid integer", True),
}


@dataclass
class FakeRouter:
    """The local router's admin API, as much of it as rollouts use."""

    predictors: list[dict[str, Any]]
    calls: list[tuple[str, str, Any]] = field(default_factory=list)

    def serve(self) -> ThreadingHTTPServer:
        router = self

        class Handler(BaseHTTPRequestHandler):
            def log_message(self, *args: Any) -> None:
                pass

            def _answer(self, body: Any) -> None:
                data = json.dumps(body).encode()
                self.send_response(200)
                self.send_header("content-type", "application/json")
                self.send_header("content-length", str(len(data)))
                self.end_headers()
                self.wfile.write(data)

            def do_GET(self) -> None:  # noqa: N802
                router.calls.append(("GET", self.path, None))
                self._answer({"predictors": [{"spec": p} for p in router.predictors]})

            def do_PUT(self) -> None:  # noqa: N802
                body = json.loads(self.rfile.read(int(self.headers["content-length"])))
                router.calls.append(("PUT", self.path, body))
                if self.path == "/admin/predictors":
                    router.predictors = body["predictors"]
                elif self.path == "/admin/traffic":
                    for p in router.predictors:
                        if p["name"] in body["weights"]:
                            p["traffic"] = body["weights"][p["name"]]
                self._answer({"ok": True})

        server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        threading.Thread(target=server.serve_forever, daemon=True).start()
        return server

    def running(self) -> list[tuple[str, str, int, bool]]:
        return [(p["name"], p["version"], p.get("traffic", 0), bool(p.get("shadow")))
                for p in self.predictors]


@dataclass
class Local:
    state_dir: Path
    values: Path
    router: FakeRouter

    @property
    def state_file(self) -> Path:
        return self.state_dir / "rollout.json"

    def cli(self, *args: str) -> subprocess.CompletedProcess[str]:
        script = Path(sys.executable).with_name("serving")
        command = [str(script)] if script.exists() else [sys.executable, "-m", "serving.cli"]
        return subprocess.run(
            [*command, "rollout", *args, "--values", str(self.values),
             "--state-dir", str(self.state_dir)],
            capture_output=True, text=True, timeout=60)


@pytest.fixture
def local(tmp_path: Path) -> Iterator[Local]:
    """A state dir whose stack.json points at a fake router running stable 70 / canary 30 and
    the candidate displaced the shadow (a rollout at its canary step)."""
    router = FakeRouter([dict(STABLE), dict(CANARY)])
    server = router.serve()
    state_dir = tmp_path / ".serving"
    state_dir.mkdir()
    (state_dir / "stack.json").write_text(json.dumps(
        {"restUrl": f"http://127.0.0.1:{server.server_address[1]}", "adminToken": "t"}))
    values = tmp_path / "values.yaml"
    values.write_text(yaml.safe_dump({
        "predictors": [{"name": "stable", "version": "v1"}],
        "rollout": {"steps": [{"setWeight": 30}, {"pause": {}}]}}))
    yield Local(state_dir, values, router)
    server.shutdown()
    server.server_close()


# each CLI run imports the whole `serving` command (about 7 s here): every command for one case,
# status and start for the others
ALL_COMMANDS = [["status"], ["history"], ["pause"], ["resume"], ["promote"], ["run"],
                ["start", "v2", "--detach"]]


@pytest.mark.slow
@pytest.mark.parametrize("case", list(CORRUPT))
def test_every_command_names_the_corrupt_file_and_the_way_out(local: Local, case: str) -> None:
    content, problem, _ = CORRUPT[case]
    local.state_file.write_text(content)
    commands = ALL_COMMANDS if case == "truncated" else [ALL_COMMANDS[0], ALL_COMMANDS[-1]]
    for command in commands:
        result = local.cli(*command)
        assert result.returncode == 1, (command, result.stdout, result.stderr)
        assert "Traceback" not in result.stderr, result.stderr
        assert f"error: the rollout state {local.state_file} is corrupt: {problem}" in (
            result.stderr), (command, result.stderr)
        assert "Run 'serving rollout abort' to move it aside" in result.stderr
    assert local.state_file.read_text() == content  # nothing touched it
    assert [c for c in local.router.calls if c[0] == "PUT"] == []


@pytest.mark.slow
@pytest.mark.parametrize("case", list(CORRUPT))
def test_abort_recovers_gives_stable_all_traffic_and_a_new_rollout_can_start(
    local: Local, case: str
) -> None:
    content, problem, stable_in_file = CORRUPT[case]
    local.state_file.write_text(content)
    result = local.cli("abort")
    assert result.returncode == 0, result.stderr
    assert f"the rollout state {local.state_file} was corrupt: {problem}" in result.stdout
    source = ("the stable predictor recorded in the file" if stable_in_file
              else "the running stable predictor (the candidate 'canary' removed)")
    assert f"all traffic back to stable (v1), from {source}" in result.stdout, result.stdout
    expected = [("stable", "v1", 100, False)] + ([("shadow", "v3", 50, True)] if stable_in_file
                                                 else [])
    assert local.router.running() == expected
    (aside,) = local.state_dir.glob("rollout.json.corrupt-*")
    assert aside.read_text() == content and f"moved the corrupt file to {aside}" in result.stdout
    assert not local.state_file.exists()

    started = local.cli("start", "v2", "--detach")
    assert started.returncode == 0, started.stderr
    assert "rollout of v2 started" in started.stdout
    assert RolloutStatus.model_validate_json(local.state_file.read_text()).candidate == "v2"


def test_abort_without_a_running_stack_still_moves_the_file_aside(local: Local) -> None:
    (local.state_dir / "stack.json").unlink()
    local.state_file.write_text("{")
    result = local.cli("abort")
    assert result.returncode == 0, result.stderr
    assert "traffic not changed: no local stack is running" in result.stdout
    assert not local.state_file.exists() and list(local.state_dir.glob("rollout.json.corrupt-*"))


def test_abort_says_so_when_the_router_cannot_be_reached(local: Local) -> None:
    (local.state_dir / "stack.json").write_text(json.dumps(
        {"restUrl": "http://127.0.0.1:9", "adminToken": "t"}))
    local.state_file.write_text("")
    result = local.cli("abort")
    assert result.returncode == 0, result.stderr
    assert "traffic not changed: local router unreachable" in result.stdout
    assert "move traffic back to the stable predictor by hand" in result.stdout
    assert not local.state_file.exists()


def test_the_state_file_is_private_and_replaced_atomically(tmp_path: Path) -> None:
    store = FileStateStore(tmp_path)
    tmp_path.joinpath("rollout.tmp").write_text("left over")
    os.chmod(tmp_path / "rollout.tmp", 0o644)
    saved = store.save(a_status())
    assert stat.S_IMODE(store.path.stat().st_mode) == 0o600
    assert not (tmp_path / "rollout.tmp").exists()
    store.save(saved)
    assert stat.S_IMODE(store.path.stat().st_mode) == 0o600
    assert store.load() == saved.model_copy(update={"revision": 2})


def test_an_unreadable_file_is_corrupt_too(tmp_path: Path) -> None:
    (tmp_path / "rollout.json").mkdir()  # unreadable even by root
    with pytest.raises(CorruptState, match="it cannot be read"):
        FileStateStore(tmp_path).load()
