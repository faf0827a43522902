"""The admin and pin tokens stay in the control process: no child process inherits them."""

from __future__ import annotations

import subprocess
from pathlib import Path

import pytest

from .conftest import start_stack, stop_stack

pytestmark = pytest.mark.slow


def descendants(pid: int) -> list[int]:
    out = subprocess.run(["pgrep", "-P", str(pid)], capture_output=True, text=True).stdout
    children = [int(p) for p in out.split()]
    return children + [d for c in children for d in descendants(c)]


def environment(pid: int) -> dict[str, str]:
    raw = Path(f"/proc/{pid}/environ").read_bytes()
    return dict(item.split("=", 1) for item in raw.decode(errors="replace").split("\0")
                if "=" in item)


def test_no_child_process_inherits_the_tokens(models_root: Path, tmp_path: Path,
                                              monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("ROUTER_ADMIN_SECRET", "admin-secret-value")  # router.adminTokenEnv
    monkeypatch.setenv("SERVING_PIN_TOKEN", "pin-secret-value")
    values = {"predictors": [{"name": "stable", "version": "v1", "traffic": 100},
                             {"name": "shadow", "version": "v1", "shadow": True, "traffic": 100}],
              "router": {"adminTokenEnv": "ROUTER_ADMIN_SECRET"}}
    stack = start_stack(values, tmp_path, models_root)
    try:
        assert stack.state["adminToken"] == "admin-secret-value"
        assert environment(stack.process.pid)["ROUTER_ADMIN_SECRET"] == "admin-secret-value"
        children = descendants(stack.process.pid)
        commands = {pid: Path(f"/proc/{pid}/cmdline").read_bytes() for pid in children}
        # two model servers, the shadow worker, nginx's master and worker
        assert sum(b"mlserver" in c for c in commands.values()) == 2, commands
        assert any(b"shadow_worker" in c for c in commands.values()), commands
        assert any(c.startswith(b"nginx") for c in commands.values()), commands
        for pid in children:
            env = environment(pid)
            assert "ROUTER_ADMIN_SECRET" not in env, commands[pid]
            assert "SERVING_PIN_TOKEN" not in env, commands[pid]
            assert "admin-secret-value" not in Path(f"/proc/{pid}/environ").read_text(
                errors="replace"), commands[pid]
        assert stack.admin.get("/admin/status").status_code == 200
    finally:
        stop_stack(stack)
