"""Model server replicas: one MLServer process per predictor replica, like pods of a predictor."""

from __future__ import annotations

import asyncio
import itertools
import logging
import re
import signal
import time
from collections.abc import Awaitable, Callable
from dataclasses import dataclass, field
from pathlib import Path

from ..artifacts import digest_env, version_dir
from ..server import MLServerProcess, ServerSettings, free_port
from ..spec import Predictor

logger = logging.getLogger("serving.router")
# Shadows get only CPU time nothing else wants (SCHED_IDLE): mirrored work must not slow callers.
SHADOW_NICENESS = 19
_pool_ids = itertools.count(1)

# Restarts of a replica that keeps crashing (a refused artifact, say) wait BACKOFF_FIRST seconds,
# doubling up to BACKOFF_MAX; the first crash after BACKOFF_RESET seconds of serving restarts it
# at once.
BACKOFF_FIRST = 1.0
BACKOFF_MAX = 60.0
BACKOFF_RESET = 30.0


@dataclass(frozen=True)
class HealthPolicy:
    """The control process's active health check of a replica (GET /v2/models/<model>/ready),
    like a Kubernetes readiness and liveness probe in one."""

    interval: float
    """Seconds between the starts of two checks."""
    timeout: float
    """A check not answered within this fails."""
    failures: int
    """Failed checks in a row that take the replica out of the routing table (a 200 brings it
    back)."""
    kill_after: float
    """No answer at all for this long while the process does not run (stopped, or no CPU time
    used: deadlocked): hung, like a failed liveness probe. It is killed, so that nginx retries
    the requests it holds on another replica (`proxy_next_upstream error`), and restarted. A
    replica that is merely busy (it uses CPU) is not."""
    give_up_after: float
    """No answer at all for this long, busy or not: killed and restarted too."""


PRIMARY_HEALTH = HealthPolicy(interval=0.5, timeout=0.5, failures=2, kill_after=1.5,
                              give_up_after=30.0)
"""A hung replica is out of rotation within 1.5 s (the worst case: it hangs just after a check
answered; the next one starts 0.5 s later and times out, the one after that too), and no request
waits on it longer than about 1.5 s before going to another replica."""
SHADOW_HEALTH = HealthPolicy(interval=1.0, timeout=5.0, failures=3, kill_after=60.0,
                             give_up_after=120.0)
"""Shadows run in the idle CPU class, which a busy machine can starve for seconds (using no CPU),
and no caller waits on them: only a long silence takes them out."""


@dataclass
class Replica:
    predictor: str
    version: str
    index: int
    server: MLServerProcess
    alive: bool = False
    restarts: int = 0
    crashes: int = 0
    """Crashes in a row, without BACKOFF_RESET seconds of serving in between."""
    ready_since: float | None = None
    """When it last became ready (time.monotonic()); None while it is down."""
    last_exit: str | None = None
    """Why it last exited: how, and the last error its log shows (status reports it)."""
    restart_at: float | None = None
    """When its backed-off restart is due (time.monotonic()), while it waits."""
    failed_checks: int = 0
    """Health checks failed in a row."""
    last_answer: float = field(default_factory=time.monotonic)
    """When it last answered a health check at all (time.monotonic())."""
    checking: bool = False
    next_check: float = 0.0
    cpu_ticks: int = -1
    """CPU time its process had used when last sampled (clock ticks)."""
    last_progress: float = field(default_factory=time.monotonic)
    """When its CPU time was last seen to grow (time.monotonic())."""

    @property
    def name(self) -> str:
        return f"{self.predictor}-{self.index}"

    @property
    def rest_url(self) -> str:
        return self.server.rest_url

    @property
    def pid(self) -> int | None:
        return self.server.process.pid if self.server.process else None

    @property
    def serving(self) -> bool:
        """Ready when last checked and its process still runs. Status and the routing table use
        this, so a replica killed a moment ago is not reported live until the supervisor's next
        tick notices."""
        process = self.server.process
        return self.alive and process is not None and process.poll() is None

    def became_ready(self) -> None:
        self.alive = True
        self.ready_since = self.last_answer = self.last_progress = time.monotonic()
        self.failed_checks = 0
        self.restart_at = None

    def restart_delay(self) -> float:
        """Seconds to wait before restarting it after a crash: none for the first crash after a
        while of serving, then BACKOFF_FIRST doubling to BACKOFF_MAX."""
        now = time.monotonic()
        if self.ready_since is not None and now - self.ready_since >= BACKOFF_RESET:
            self.crashes = 0
        delay = 0.0 if self.crashes == 0 else min(BACKOFF_MAX,
                                                  BACKOFF_FIRST * 2 ** (self.crashes - 1))
        self.crashes += 1
        self.ready_since = None
        self.restart_at = now + delay
        return delay

    def report(self) -> dict[str, object]:
        """What status adds to a replica: why it last exited, when it restarts, failed checks."""
        due = self.restart_at
        return {"lastExit": self.last_exit, "failedChecks": self.failed_checks,
                "restartInSeconds": None if due is None
                else round(max(0.0, due - time.monotonic()), 1)}


# The line a Python traceback ends with: "serving.errors.ChecksumMismatch: refusing to load ...",
# "ValueError: ..."
_EXCEPTION_LINE = re.compile(r"^(?:[A-Za-z_]\w*\.)+[A-Za-z_]\w*: \S|^[A-Za-z_]\w*(?:Error|Exception): \S")


def exit_reason(code: int | None, log: str) -> str:
    """How a model server exited and, from what it logged, why: its last exception line (the
    artifact it refused, say), else its last ERROR line."""
    how = f"exit code {code}"
    if code is not None and code < 0:
        try:
            how = f"killed by {signal.Signals(-code).name}"
        except ValueError:
            how = f"killed by signal {-code}"
    lines = [line.strip() for line in log.splitlines()]
    why = next((line for line in reversed(lines) if _EXCEPTION_LINE.match(line)), None) or next(
        (line for line in reversed(lines) if " ERROR " in line or line.startswith("ERROR")), None)
    return f"{how}: {why[:400]}" if why else how


@dataclass
class PredictorPool:
    """The replicas of one predictor and the spec they were started from."""

    predictor: Predictor
    replicas: list[Replica]
    uid: int = field(default_factory=lambda: next(_pool_ids))
    stopped: bool = False
    """Set once the pool is retired: a replica restart in progress must not revive it."""

    @property
    def name(self) -> str:
        return self.predictor.name

    @property
    def version(self) -> str:
        return self.predictor.version

    def live(self) -> list[Replica]:
        return [r for r in self.replicas if r.serving]


def same_deployment(a: Predictor, b: Predictor) -> bool:
    """Whether a predictor can keep its running processes (only traffic changed). Becoming or
    ceasing to be the shadow restarts them: shadows run at a lower CPU priority."""
    keys = ("version", "replicas", "env", "model_uri", "server", "shadow")
    return all(getattr(a, k) == getattr(b, k) for k in keys)


async def start_pool(
    predictor: Predictor, models_root: Path, model: str, log_dir: Path, settings: ServerSettings,
    hidden_env: tuple[str, ...] = (), temp_root: Path | None = None,
) -> PredictorPool:
    """Start every replica of a predictor and wait until each has loaded the model. The
    servers' environment lacks `hidden_env`; their working folders go under `temp_root`."""
    root = version_dir(models_root, model, predictor.version)
    replicas = []
    for i in range(predictor.replicas):
        server_settings = settings.model_copy(
            update={"http_port": free_port(), "grpc_port": free_port(), "metrics_port": free_port(),
                    # Mirrored work is best effort: on a shared host it must not slow callers.
                    "niceness": SHADOW_NICENESS if predictor.shadow else 0}
        )
        server = MLServerProcess(
            root,
            server_settings,
            # the digest the spec records for this version (model.artifacts), for it alone
            extra_env={**predictor.env,
                       **digest_env(settings.artifact_digests, [predictor.version])},
            log_path=log_dir / f"{predictor.name}-{i}.log",
            hidden_env=hidden_env,
            temp_root=temp_root,
        )
        replicas.append(Replica(predictor.name, predictor.version, i, server))
    pool = PredictorPool(predictor, replicas)
    for r in replicas:
        r.server.start()
    try:
        await asyncio.gather(*(asyncio.to_thread(r.server.wait_ready, [model]) for r in replicas))
    except Exception:
        await stop_pool(pool)
        raise
    for r in replicas:
        r.became_ready()
        logger.info("replica %s (%s, pid %s) ready at %s", r.name, r.version, r.pid, r.rest_url)
    return pool


async def stop_pool(pool: PredictorPool, drain_timeout: float = 10.0,
                    in_flight: Callable[[], Awaitable[int]] | None = None) -> None:
    """Wait until `in_flight` (nginx's count of this pool's requests) reports none, then stop
    the processes."""
    pool.stopped = True
    loop = asyncio.get_running_loop()
    deadline = loop.time() + drain_timeout
    while loop.time() < deadline:
        if in_flight is None or not await in_flight():
            break
        await asyncio.sleep(0.05)
    for r in pool.replicas:
        r.alive = False
    await asyncio.gather(*(asyncio.to_thread(r.server.stop) for r in pool.replicas))
