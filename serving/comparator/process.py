"""The comparator as a child process: the local stack's handle on it (supervised like the shadow
worker), also used by tests and the benchmark."""

from __future__ import annotations

import asyncio
import contextlib
import subprocess
import sys
import time
from pathlib import Path

import httpx

from ..errors import ServingError
from ..server import child_env, child_setup
from .matching import Settings


class ComparatorProcess:
    def __init__(self, port: int, settings: Settings, *, host: str = "127.0.0.1",
                 telemetry: Path | None = None, hidden_env: tuple[str, ...] = (),
                 log: Path | None = None, extra_args: tuple[str, ...] = ()) -> None:
        self.host = host
        self.port = port
        self.url = f"http://{host}:{port}"
        self.hidden_env = hidden_env
        self.log = log
        self.command = [sys.executable, "-m", "serving.cli", "comparator", "--host", host,
                        "--port", str(port), "--ttl", str(settings.ttl_seconds),
                        "--max-pending", str(settings.max_pending),
                        "--rtol", str(settings.rtol), *extra_args]
        for d in sorted(settings.deployments):
            self.command += ["--deployment", d]
        if telemetry is not None:
            self.command += ["--telemetry", str(telemetry)]
        self.process: subprocess.Popen[bytes] | None = None
        self.restarts = 0

    @property
    def pid(self) -> int | None:
        return self.process.pid if self.process else None

    def status(self) -> dict[str, object]:
        return {"pid": self.pid, "restarts": self.restarts, "url": self.url}

    def alive(self) -> bool:
        return self.process is not None and self.process.poll() is None

    def spawn(self) -> None:
        stderr = self.log.open("ab") if self.log is not None else None
        # Its own process group, like the stack's other children ('serving down' after a crash).
        self.process = subprocess.Popen(self.command, stdin=subprocess.DEVNULL,
                                        stdout=stderr, stderr=stderr,
                                        env=child_env(self.hidden_env),
                                        preexec_fn=child_setup(0), process_group=0)
        if stderr is not None:
            stderr.close()

    def ready(self) -> bool:
        try:
            return httpx.get(self.url + "/health/ready", timeout=1).status_code == 200
        except httpx.HTTPError:
            return False

    def wait_ready(self, timeout: float = 30.0) -> None:
        assert self.process is not None
        deadline = time.monotonic() + timeout
        while not self.ready():
            if self.process.poll() is not None:
                raise ServingError(f"the comparator exited with code {self.process.returncode} "
                                   f"at start" + (f" (log: {self.log})" if self.log else ""))
            if time.monotonic() > deadline:
                self.process.kill()  # so that a supervisor's next tick starts another
                raise ServingError(f"the comparator did not start within {timeout:g}s")
            time.sleep(0.05)

    def start(self, timeout: float = 30.0) -> None:
        restart = self.process is not None
        self.spawn()
        self.wait_ready(timeout)
        if restart:  # counted once it listens: events reach it again
            self.restarts += 1

    async def astart(self, timeout: float = 30.0) -> None:
        await asyncio.to_thread(self.start, timeout)

    def stop(self, grace: float = 5.0) -> None:
        if self.process is None or self.process.poll() is not None:
            return
        self.process.terminate()
        try:
            self.process.wait(grace)
        except subprocess.TimeoutExpired:
            self.process.kill()
            self.process.wait()

    async def astop(self, grace: float = 5.0) -> None:
        with contextlib.suppress(Exception):
            await asyncio.to_thread(self.stop, grace)
