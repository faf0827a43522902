"""Start MLServer on our model folders, as a child process on chosen ports.

The settings that matter for speed are explicit here (and measured in serving/bench):
MLServer's defaults run inference in one separate worker process (parallel_workers=1) with no
batching; `tuned()` runs inference in the server process and batches concurrent requests.
"""

from __future__ import annotations

import contextlib
import ctypes
import errno
import os
import random
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import time
from collections.abc import Callable, Iterable, Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import httpx
from pydantic import BaseModel, Field

from .artifacts import digest_env
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
    max_batch_size: int = Field(
        0,
        description="adaptive batching: requests per batch (0 = off). Passed as MLServer's "
        "setting, but done by serving.runtime on rows it has read and checked one request at a "
        "time: MLServer's own batching, which merges the requests first, never runs",
    )
    max_batch_time: float = Field(0.0, description="adaptive batching: seconds to wait for a batch")
    debug: bool = False
    niceness: int = Field(
        0, ge=0, le=19, description="CPU niceness (higher = yields the CPU); 19 = idle class only"
    )
    artifact_digests: dict[str, str] = Field(
        default_factory=lambda: committed_digests(),
        description="expected sha256 of model.joblib per version, from the deployment spec "
        "(model.artifacts; the committed values file unless a launcher passes its spec's). "
        "MLServer gets them as SERVING_ARTIFACT_DIGESTS; the runtime loads nothing else",
    )

    def with_digests(self, digests: dict[str, str]) -> ServerSettings:
        """These settings, expecting `digests` (a spec's model.artifacts) over the ones held."""
        return self.model_copy(update={"artifact_digests": {**self.artifact_digests, **digests}})

    @classmethod
    def mlserver_defaults(cls, **ports: Any) -> ServerSettings:
        return cls(parallel_workers=1, max_batch_size=0, max_batch_time=0.0, **ports)

    @classmethod
    def tuned(cls, **ports: Any) -> ServerSettings:
        """Inference in the server process, adaptive batching of up to 32 requests within 1 ms
        for the models it pays for.

        The runtime batches only a model whose one-row answer takes more than
        serving.runtime.BATCH_PAYS_ABOVE_US (scikit-learn's, 0.3-15 ms); a compiled model
        (~10 us) is never batched: for the compiled v1 in one run (issue 13, wrk, load ~12)
        batching cost a lone client a third of its requests/s (226 vs 334 req/s, 1213 vs 752 us
        of server CPU per request) and gained nothing at 16 connections (766 vs 760 req/s).

        The batching is serving.runtime's, of rows it read and checked one request at a time (it
        takes MLServer's batching settings over: MLServer's own batcher merged the requests
        before any check, so one malformed request failed or changed the answers of the others).
        Chosen for throughput under concurrent load (`make bench`, 2 cores, single-row requests,
        one run for issue 11 on a machine a quarter to a third as fast as before: 1.77x
        MLServer's defaults over REST and 1.07x over gRPC at 16 clients, where in-process
        inference without batching reaches 0.96x and 0.87x; MLServer's own batching had reached
        1.18x and 0.80x in the same kind of run). The price is paid by a lone client, whose
        request waits out the batch window (uvloop timers make it ~1.1 ms): about 20% fewer
        requests/s than in-process inference without batching at 1 client (still 1.1x the
        defaults on that machine, whose inter-process hop cost more than the window).
        """
        return cls(parallel_workers=0, max_batch_size=32, max_batch_time=0.001, **ports)


COMMITTED_VALUES = Path(__file__).resolve().parents[1] / "charts" / "seldon-model" / "values.yaml"


def committed_digests(values: Path = COMMITTED_VALUES) -> dict[str, str]:
    """model.artifacts of the committed values file ({} when there is none, e.g. in an image)."""
    from .spec import load_spec

    if not values.is_file():
        return {}
    return dict(load_spec(values).model.artifacts)


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


def child_env(hidden: Iterable[str] = (), extra: Mapping[str, str] | None = None) -> dict[str, str]:
    """This process's environment for a child process, without the variables named in `hidden`
    (credentials such as the admin token, which no child needs), plus `extra`."""
    drop = set(hidden)
    env = {k: v for k, v in os.environ.items() if k not in drop}
    env.update(extra or {})
    return env


def _stat_fields(pid: int) -> list[str] | None:
    """/proc/<pid>/stat after the command name: [state, ppid, pgrp, session, ...] (Linux)."""
    try:
        return Path(f"/proc/{pid}/stat").read_text().rsplit(") ", 1)[1].split()
    except (OSError, IndexError):
        return None


def process_start_time(pid: int) -> int | None:
    """When the process started (clock ticks since boot): with the pid, names one process even
    after the pid is reused. None when it is gone."""
    fields = _stat_fields(pid)
    return int(fields[19]) if fields else None


def process_cpu(pid: int) -> tuple[str, int] | None:
    """A process's state letter (R running, S sleeping, T stopped, ...) and the CPU time it has
    used (clock ticks, all threads), or None when it is gone."""
    fields = _stat_fields(pid)
    return (fields[0], int(fields[11]) + int(fields[12])) if fields else None


def group_members(pgid: int) -> list[int]:
    """The running processes of a process group (zombies excluded)."""
    members = []
    for entry in Path("/proc").iterdir():
        fields = _stat_fields(int(entry.name)) if entry.name.isdigit() else None
        if fields is not None and int(fields[2]) == pgid and fields[0] != "Z":
            members.append(int(entry.name))
    return members


def kill_group(pgid: int, timeout: float = 5.0) -> None:
    """SIGKILL a process group and wait (up to `timeout`) until none of it runs. Works when its
    leader is gone and its other members (an nginx master's workers) were orphaned."""
    with contextlib.suppress(ProcessLookupError):
        os.killpg(pgid, signal.SIGKILL)
    deadline = time.monotonic() + timeout
    while group_members(pgid) and time.monotonic() < deadline:
        time.sleep(0.02)


def listener_on(host: str, port: int) -> str | None:
    """Who listens on host:port: None when nobody does, else the process(es) if this user can see
    them ("pid 123 (nginx: worker process)"). nginx listens with `reuseport`, so it would share a
    port another process holds instead of failing: ask before starting it."""
    family = socket.AF_INET6 if ":" in host else socket.AF_INET
    with socket.socket(family) as s:
        s.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)  # TIME_WAIT leftovers are fine
        try:
            s.bind((host, port))
            return None
        except OSError as e:
            if e.errno != errno.EADDRINUSE:
                raise
    return _socket_holders(port) or "a process this user cannot see"


def _socket_holders(port: int) -> str | None:
    inodes = set()
    for table in ("/proc/net/tcp", "/proc/net/tcp6"):
        with contextlib.suppress(OSError):
            for line in Path(table).read_text().splitlines()[1:]:
                fields = line.split()
                if fields[3] == "0A" and int(fields[1].rsplit(":", 1)[1], 16) == port:  # LISTEN
                    inodes.add(f"socket:[{fields[9]}]")
    holders = []
    for entry in Path("/proc").iterdir():
        if entry.name.isdigit() and inodes & _fd_targets(entry):
            with contextlib.suppress(OSError):
                command = (entry / "cmdline").read_bytes().replace(b"\0", b" ").decode().strip()
                holders.append(f"pid {entry.name} ({command[:80]})")
    return ", ".join(holders) or None


def _fd_targets(proc: Path) -> set[str]:
    targets = set()
    with contextlib.suppress(OSError):  # not this user's, or gone
        for fd in (proc / "fd").iterdir():
            with contextlib.suppress(OSError):  # closed meanwhile (the listing's own, say)
                targets.add(os.readlink(fd))
    return targets


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
    hidden_env: tuple[str, ...] = ()
    """Variables of this process's environment the server must not inherit (credentials)."""
    temp_root: Path | None = None
    """Where its working folder goes (default: the system's temp folder); the local stack puts
    it in its run folder, so that 'serving down' after a crash can remove it."""
    process: subprocess.Popen[bytes] | None = None
    _workdir: Path | None = None
    _log_start: int = 0

    @property
    def rest_url(self) -> str:
        return f"http://{self.settings.host}:{self.settings.http_port}"

    @property
    def grpc_target(self) -> str:
        return f"{self.settings.host}:{self.settings.grpc_port}"

    def start(self) -> MLServerProcess:
        # Each process gets its own metrics dir (MLServer's default is the working directory).
        self._workdir = Path(tempfile.mkdtemp(prefix="mlserver-", dir=self.temp_root))
        s = self.settings
        env = child_env(self.hidden_env)
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
                **digest_env(s.artifact_digests),
            }
        )
        env.update(self.extra_env)
        log = self.log_path.open("ab") if self.log_path else subprocess.DEVNULL
        self._log_start = self.log_path.stat().st_size if self.log_path else 0  # this run's
        self.process = subprocess.Popen(
            [mlserver_executable(), "start", str(self.model_root.resolve())],
            env=env,
            stdout=log,
            stderr=subprocess.STDOUT,
            start_new_session=True,
            preexec_fn=child_setup(s.niceness),
        )
        return self

    def recent_log(self, limit: int = 65536) -> str:
        """What the latest process wrote to its log (its last `limit` bytes at most)."""
        if self.log_path is None:
            return ""
        try:
            with self.log_path.open("rb") as f:
                f.seek(max(self._log_start, f.seek(0, os.SEEK_END) - limit))
                return f.read().decode(errors="replace")
        except OSError:
            return ""

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
