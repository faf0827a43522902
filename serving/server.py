"""Start MLServer on our model folders, as a child process on chosen ports.

The settings that matter for speed are explicit here (and measured in serving/bench):
MLServer's defaults run inference in one separate worker process (parallel_workers=1) with no
batching; `tuned()` runs inference in the server process and batches concurrent requests.
"""

from __future__ import annotations

import contextlib
import ctypes
import os
import random
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import httpx
from pydantic import BaseModel, Field

from .errors import ServingError


class ServerSettings(BaseModel):
    """The MLServer settings we choose per process (written to its settings.json)."""

    http_port: int = 8080
    grpc_port: int = 8081
    metrics_port: int = 8082
    host: str = "127.0.0.1"
    parallel_workers: int = Field(
        0, description="0 = inference in the server process; MLServer's default is 1 worker"
    )
    max_batch_size: int = Field(0, description="adaptive batching: requests per batch (0 = off)")
    max_batch_time: float = Field(0.0, description="adaptive batching: seconds to wait for a batch")
    debug: bool = False
    niceness: int = Field(
        0, ge=0, le=19, description="CPU niceness (higher = yields the CPU); 19 = idle class only"
    )

    @classmethod
    def mlserver_defaults(cls, **ports: Any) -> ServerSettings:
        return cls(parallel_workers=1, max_batch_size=0, max_batch_time=0.0, **ports)

    @classmethod
    def tuned(cls, **ports: Any) -> ServerSettings:
        """Inference in the server process, adaptive batching of up to 32 requests within 1 ms.

        Chosen for throughput under concurrent load (`make bench`, 2 cores, single-row requests:
        about 1.8x MLServer's defaults over REST and 1.25x over gRPC at 16 clients). The price is
        paid by a lone client, whose request waits out the batch window (uvloop timers make it
        ~1.1 ms): about 12% fewer requests/s than the defaults at 1 client. Without batching,
        parallel_workers=0 is the fastest at 1 client but only ~10% ahead of the defaults at 16.
        """
        return cls(parallel_workers=0, max_batch_size=32, max_batch_time=0.001, **ports)


def _die_with_parent() -> None:
    """In the child before exec: ask Linux to SIGTERM it when its parent dies, so a crashed or
    killed router or test never leaves model servers behind (prctl PR_SET_PDEATHSIG)."""
    try:
        libc = ctypes.CDLL("libc.so.6", use_errno=True)
        libc.prctl(1, signal.SIGTERM)  # 1 = PR_SET_PDEATHSIG
    except OSError:  # not Linux/glibc: children are still stopped by stop()
        pass


def child_setup(niceness: int) -> Callable[[], None]:
    """A preexec_fn for helper processes: die with this process, at the given CPU niceness."""
    def setup() -> None:
        _die_with_parent()
        if niceness >= 19:
            # The idle class: runs only on CPU time nothing else wants (Linux).
            os.sched_setscheduler(0, os.SCHED_IDLE, os.sched_param(0))
        elif niceness:
            os.nice(niceness)

    return setup


def _ephemeral_low() -> int:
    """The lowest port the kernel gives outgoing connections (Linux; 32768 elsewhere)."""
    try:
        return int(Path("/proc/sys/net/ipv4/ip_local_port_range").read_text().split()[0])
    except (OSError, ValueError, IndexError):
        return 32768


_handed_out: set[int] = set()


def free_port() -> int:
    """A loopback port that is free now, for a server started a moment later.

    Taken below the kernel's ephemeral range: a port from bind(0) comes from that range, which
    outgoing connections (nginx's to the replicas, load generators) also use, and one of them can
    take it before the server binds it ("address already in use"; seen under load)."""
    low = _ephemeral_low()
    for _ in range(200):
        port = random.randrange(max(1024, low - 22768), low)
        if port in _handed_out:
            continue
        with socket.socket() as s:
            try:
                s.bind(("127.0.0.1", port))
            except OSError:
                continue
        _handed_out.add(port)
        return port
    with socket.socket() as s:  # a crowded range: fall back to the kernel's choice
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def mlserver_executable() -> str:
    candidate = Path(sys.executable).with_name("mlserver")
    if candidate.exists():
        return str(candidate)
    found = shutil.which("mlserver")
    if not found:
        raise ServingError("the 'mlserver' command is not installed; run 'make setup'")
    return found


@dataclass
class MLServerProcess:
    """One MLServer child process serving the model folders under `model_root`."""

    model_root: Path
    settings: ServerSettings
    extra_env: dict[str, str] = field(default_factory=dict)
    log_path: Path | None = None
    process: subprocess.Popen[bytes] | None = None
    _workdir: Path | None = None

    @property
    def rest_url(self) -> str:
        return f"http://{self.settings.host}:{self.settings.http_port}"

    @property
    def grpc_target(self) -> str:
        return f"{self.settings.host}:{self.settings.grpc_port}"

    def start(self) -> MLServerProcess:
        # Each process gets its own metrics dir (MLServer's default is the working directory).
        self._workdir = Path(tempfile.mkdtemp(prefix="mlserver-"))
        s = self.settings
        env = dict(os.environ)
        # `mlserver start DIR` makes DIR the model repository, so settings go through MLServer's
        # own environment variables rather than a settings.json inside the models folder.
        env.update(
            {
                "MLSERVER_HOST": s.host,
                "MLSERVER_HTTP_PORT": str(s.http_port),
                "MLSERVER_GRPC_PORT": str(s.grpc_port),
                "MLSERVER_METRICS_PORT": str(s.metrics_port),
                "MLSERVER_PARALLEL_WORKERS": str(s.parallel_workers),
                "MLSERVER_LOAD_MODELS_AT_STARTUP": "true",
                "MLSERVER_DEBUG": str(s.debug).lower(),
                "MLSERVER_METRICS_DIR": str(self._workdir),
                # Batching is a per-model setting; MLServer fills unset model settings from these.
                "MLSERVER_MODEL_MAX_BATCH_SIZE": str(s.max_batch_size),
                "MLSERVER_MODEL_MAX_BATCH_TIME": str(s.max_batch_time),
            }
        )
        env.update(self.extra_env)
        log = self.log_path.open("ab") if self.log_path else subprocess.DEVNULL
        self.process = subprocess.Popen(
            [mlserver_executable(), "start", str(self.model_root.resolve())],
            env=env,
            stdout=log,
            stderr=subprocess.STDOUT,
            start_new_session=True,
            preexec_fn=child_setup(s.niceness),
        )
        return self

    def wait_ready(self, models: list[str] | None = None, timeout: float = 60.0) -> None:
        """Wait for server ready and, since MLServer is ready with no model loaded, each model."""
        paths = ["/v2/health/ready"] + [f"/v2/models/{m}/ready" for m in models or []]
        deadline = time.monotonic() + timeout
        pending = list(paths)
        while pending:
            if self.process is not None and self.process.poll() is not None:
                raise ServingError(
                    f"MLServer exited with code {self.process.returncode} while starting"
                    + (f"; see {self.log_path}" if self.log_path else "")
                )
            try:
                if httpx.get(self.rest_url + pending[0], timeout=1.0).status_code == 200:
                    pending.pop(0)
                    continue
            except httpx.HTTPError:
                pass
            if time.monotonic() > deadline:
                raise ServingError(
                    f"MLServer at {self.rest_url} not ready after {timeout:.0f}s ({pending[0]})"
                    + (f"; see {self.log_path}" if self.log_path else "")
                )
            time.sleep(0.2)

    def stop(self, timeout: float = 10.0) -> None:
        if self.process and self.process.poll() is None:
            # MLServer's workers are in the same session: signal the whole group
            try:
                os.killpg(self.process.pid, 15)
                self.process.wait(timeout)
            except (subprocess.TimeoutExpired, ProcessLookupError):
                with contextlib.suppress(ProcessLookupError):
                    os.killpg(self.process.pid, 9)
                self.process.wait()
        if self._workdir:
            shutil.rmtree(self._workdir, ignore_errors=True)
            self._workdir = None

    def __enter__(self) -> MLServerProcess:
        return self.start()

    def __exit__(self, *exc: object) -> None:
        self.stop()
