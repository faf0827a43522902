"""The data plane survives its own crashes: a killed nginx master leaves no worker behind, and
nginx never starts on a port another process listens on (with reuseport it would share it)."""

from __future__ import annotations

import contextlib
import os
import signal
import socket
import time
from collections.abc import Callable
from pathlib import Path

import httpx
import pytest

from serving.errors import ServingError
from serving.router.dataplane import Nginx, Sockets
from serving.server import free_port

from .conftest import infer_body, start_stack, stop_stack

pytestmark = pytest.mark.slow
TWO_PREDICTORS = {"predictors": [{"name": "stable", "version": "v1", "traffic": 100},
                                 {"name": "canary", "version": "v2", "traffic": 0}]}


def eventually[T](check: Callable[[], T | None], within: float, what: str) -> T:
    deadline = time.monotonic() + within
    while time.monotonic() < deadline:
        if (result := check()) is not None and result is not False:
            return result
        time.sleep(0.05)
    raise AssertionError(f"not within {within}s: {what}")


def command(pid: int) -> str:
    try:
        return Path(f"/proc/{pid}/cmdline").read_bytes().replace(b"\0", b" ").decode()
    except OSError:
        return ""


def nginx_master(parent: int) -> int | None:
    """The nginx master started by `parent`, if one runs."""
    for entry in Path("/proc").iterdir():
        if entry.name.isdigit() and command(int(entry.name)).startswith("nginx: master"):
            try:
                ppid = int((entry / "stat").read_text().rsplit(") ", 1)[1].split()[1])
            except (OSError, IndexError):
                continue
            if ppid == parent:
                return int(entry.name)
    return None


def group_members(pgid: int) -> list[int]:
    """Running processes of a process group."""
    members = []
    for entry in Path("/proc").iterdir():
        try:
            fields = (entry / "stat").read_text().rsplit(") ", 1)[1].split()
        except (OSError, IndexError):
            continue
        if int(fields[2]) == pgid and fields[0] != "Z":
            members.append(int(entry.name))
    return members


def listening_pids(port: int) -> set[int]:
    inodes = set()
    for table in ("/proc/net/tcp", "/proc/net/tcp6"):
        for line in Path(table).read_text().splitlines()[1:]:
            f = line.split()
            if f[3] == "0A" and int(f[1].rsplit(":", 1)[1], 16) == port:
                inodes.add(f"socket:[{f[9]}]")
    pids = set()
    for entry in Path("/proc").iterdir():
        if not entry.name.isdigit():
            continue
        links = set()
        with contextlib.suppress(OSError):
            for fd in (entry / "fd").iterdir():
                with contextlib.suppress(OSError):
                    links.add(os.readlink(fd))
        if links & inodes:
            pids.add(int(entry.name))
    return pids


def test_a_killed_nginx_master_is_restarted_without_its_orphaned_workers(
        models_root: Path, tmp_path: Path) -> None:
    stack = start_stack(TWO_PREDICTORS, tmp_path, models_root)
    try:
        port = int(stack.state["restUrl"].rsplit(":", 1)[1])
        master = nginx_master(stack.process.pid)
        assert master is not None
        workers = [p for p in group_members(master) if p != master]
        assert workers
        os.kill(master, signal.SIGKILL)
        new_master = eventually(lambda: (m := nginx_master(stack.process.pid)) != master and m,
                                15, "a new nginx master")
        # the old workers are gone: only the new master's group listens on the port
        eventually(lambda: not any(group_members(master)), 5, "the old workers to be gone")
        assert listening_pids(port) <= set(group_members(new_master)), listening_pids(port)
        # every fresh connection routes by the table pushed after the restart
        stack.set_weights({"stable": 0, "canary": 100})
        served = set()
        for i in range(40):
            with httpx.Client(timeout=10) as fresh:
                r = fresh.post(stack.infer_url, json=infer_body(i))
                served.add((r.status_code, r.headers.get("x-seldon-predictor")))
        assert served == {(200, "canary")}
    finally:
        stop_stack(stack)


def held_port() -> tuple[socket.socket, int]:
    """A port this test process listens on with SO_REUSEPORT, as an orphaned nginx worker does."""
    s = socket.socket()
    s.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEPORT, 1)
    port = free_port()
    s.bind(("127.0.0.1", port))
    s.listen()
    return s, port


def test_up_refuses_a_port_another_process_listens_on(models_root: Path, tmp_path: Path) -> None:
    holder, port = held_port()
    try:
        with pytest.raises(ServingError) as refused:
            stop_stack(start_stack({**TWO_PREDICTORS, "router": {"port": port}}, tmp_path,
                                   models_root))
        assert f"port {port} on 127.0.0.1 is already in use by pid {os.getpid()}" in str(refused.value)
    finally:
        holder.close()


def test_nginx_does_not_start_on_a_port_another_process_listens_on(tmp_path: Path) -> None:
    holder, port = held_port()
    try:
        nginx = Nginx("events {}\n", tmp_path, Sockets(tmp_path), listen=[("127.0.0.1", port)])
        with pytest.raises(ServingError) as refused:
            nginx.start()
        assert f"port {port} on 127.0.0.1 is already in use by pid {os.getpid()}" in str(
            refused.value)
        assert nginx.process is None
    finally:
        holder.close()
