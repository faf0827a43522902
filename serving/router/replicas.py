"""Model server replicas: one MLServer process per predictor replica, like pods of a predictor."""

from __future__ import annotations

import asyncio
import itertools
import logging
from collections.abc import Awaitable, Callable
from dataclasses import dataclass, field
from pathlib import Path

from ..artifacts import version_dir
from ..server import MLServerProcess, ServerSettings, free_port
from ..spec import Predictor

logger = logging.getLogger("serving.router")
# Shadows get only CPU time nothing else wants (SCHED_IDLE): mirrored work must not slow callers.
SHADOW_NICENESS = 19
_pool_ids = itertools.count(1)


@dataclass
class Replica:
    predictor: str
    version: str
    index: int
    server: MLServerProcess
    alive: bool = False
    restarts: int = 0

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
            extra_env=dict(predictor.env),
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
        r.alive = True
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
