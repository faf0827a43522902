"""Mirroring to the shadow: fire-and-forget, bounded, timed out, and compared with the primary.

The caller never waits for the shadow: the mirrored call starts next to the primary one, and the
comparison runs in a background task once both answers exist. When `max_in_flight` mirrored calls
are already running, new ones are dropped and counted, never queued.
"""

from __future__ import annotations

import asyncio
import logging
import time
from collections.abc import Awaitable, Callable, Coroutine
from dataclasses import dataclass
from typing import Any, TypeVar

import numpy as np

from .compare import AgreementStats, compare
from .metrics import RouterMetrics
from .replicas import PredictorPool, Replica

logger = logging.getLogger("serving.router")
T = TypeVar("T")

Decoded = dict[str, tuple[str, np.ndarray]]
# Sends the mirrored request to one replica: (status code, body when successful else None).
MirroredCall = Callable[[Replica], Awaitable[tuple[str, bytes | None]]]


class Mirror:
    def __init__(self, metrics: RouterMetrics, max_in_flight: int, timeout: float, rtol: float):
        self.metrics = metrics
        self.max_in_flight = max_in_flight
        self.timeout = timeout
        self.rtol = rtol
        self.in_flight = 0
        self.stats = AgreementStats()
        self.counts = {"sent": 0, "dropped": 0, "failed": 0, "timeout": 0}
        self._tasks: set[asyncio.Task[Any]] = set()

    def _count(self, pool: str, outcome: str) -> None:
        self.counts[outcome] += 1
        self.metrics.shadow_requests.labels(self.metrics.deployment, pool, outcome).inc()

    def launch(self, pool: PredictorPool, call: MirroredCall, method: str,
               decode: Callable[[bytes], Decoded]) -> MirroredRequest | None:
        """Start the mirrored call now; None when dropped (limit reached or no live replica)."""
        live = pool.live()
        if self.in_flight >= self.max_in_flight or not live:
            self._count(pool.name, "dropped")
            return None
        replica = live[pool.in_flight % len(live)]
        self.in_flight += 1
        pool.in_flight += 1
        self._count(pool.name, "sent")
        task = self._keep(self._run(pool, replica, call, method))
        return MirroredRequest(self, pool.name, task, decode)

    def _keep(self, coroutine: Coroutine[Any, Any, T]) -> asyncio.Task[T]:
        # The event loop holds tasks weakly: keep a reference until each one is done.
        task = asyncio.ensure_future(coroutine)
        self._tasks.add(task)
        task.add_done_callback(self._tasks.discard)
        return task

    async def _run(
        self, pool: PredictorPool, replica: Replica, call: MirroredCall, method: str
    ) -> bytes | None:
        # Recorded under the shadow's name like Seldon's executor in the shadow's pod would, so
        # the error rate of a mirrored candidate can be analysed like a canary's.
        grpc_call = method == "unary"
        started = time.perf_counter()
        code, body = "", None
        try:
            code, body = await asyncio.wait_for(call(replica), self.timeout)
            if body is None:
                self._count(pool.name, "failed")
        except TimeoutError:
            # Counted as a timeout, not as a request of the shadow's: a mirrored call may be
            # slow because the shadow runs at low priority, which says nothing about the model.
            self._count(pool.name, "timeout")
            code = ""
        except Exception as e:  # a broken shadow must never matter to callers
            logger.debug("shadow call failed: %s", e)
            code = "UNAVAILABLE" if grpc_call else "503"
            self._count(pool.name, "failed")
        finally:
            self.in_flight -= 1
            pool.in_flight -= 1
        if code:
            self.metrics.observe(pool.name, pool.version, "infer", method, code,
                                 time.perf_counter() - started)
        return body

    async def _compare(self, request: MirroredRequest, primary_body: bytes | None,
                       primary_predictor: str) -> None:
        shadow_body = await request.task
        if shadow_body is None or primary_body is None:
            return
        try:
            result = compare(request.decode(primary_body), request.decode(shadow_body),
                             self.rtol)
        except Exception as e:
            logger.warning("could not compare shadow answer: %s", e)
            return
        self.stats.add(result, primary_predictor)
        d = self.metrics.deployment
        self.metrics.shadow_rows.labels(d, request.shadow, "agreed").inc(result.agreed)
        self.metrics.shadow_rows.labels(d, request.shadow, "disagreed").inc(
            result.rows - result.agreed)

    async def drain(self) -> None:
        if self._tasks:
            await asyncio.gather(*self._tasks, return_exceptions=True)


@dataclass(frozen=True)
class MirroredRequest:
    """One mirrored call in flight; `finish` hands it the primary's answer to compare with."""

    mirror: Mirror
    shadow: str
    task: asyncio.Task[bytes | None]
    decode: Callable[[bytes], Decoded]

    def finish(self, primary_body: bytes | None, primary_predictor: str) -> None:
        """Compare in the background (None: the primary failed, nothing to compare)."""
        self.mirror._keep(self.mirror._compare(self, primary_body, primary_predictor))
