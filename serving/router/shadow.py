"""Mirroring to the shadow: fire-and-forget, bounded, timed out, and compared with the primary.

The caller never waits for the shadow: the mirrored call starts next to the primary one, and the
comparison runs in a background task once both answers exist. When `max_in_flight` mirrored calls
are already running, new ones are dropped and counted, never queued.
"""

from __future__ import annotations

import asyncio
import logging
import time
from collections.abc import Awaitable, Callable

import numpy as np

from .compare import AgreementStats, compare
from .metrics import RouterMetrics
from .replicas import PredictorPool, Replica

logger = logging.getLogger("serving.router")

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
        self._tasks: set[asyncio.Task[None]] = set()

    def _count(self, pool: str, outcome: str) -> None:
        self.counts[outcome] += 1
        self.metrics.shadow_requests.labels(self.metrics.deployment, pool, outcome).inc()

    def launch(
        self, pool: PredictorPool, call: MirroredCall, method: str
    ) -> asyncio.Task[bytes | None] | None:
        """Start the mirrored call now; None when dropped (limit reached or no live replica)."""
        live = pool.live()
        if self.in_flight >= self.max_in_flight or not live:
            self._count(pool.name, "dropped")
            return None
        replica = live[pool.in_flight % len(live)]
        self.in_flight += 1
        pool.in_flight += 1
        self._count(pool.name, "sent")
        return asyncio.ensure_future(self._run(pool, replica, call, method))

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

    def compare_later(
        self,
        shadow_task: asyncio.Task[bytes | None],
        shadow_pool: str,
        primary_body: bytes | None,
        primary_predictor: str,
        decode: Callable[[bytes], Decoded],
    ) -> None:
        task = asyncio.ensure_future(
            self._compare(shadow_task, shadow_pool, primary_body, primary_predictor, decode)
        )
        self._tasks.add(task)
        task.add_done_callback(self._tasks.discard)

    async def _compare(
        self,
        shadow_task: asyncio.Task[bytes | None],
        shadow_pool: str,
        primary_body: bytes | None,
        primary_predictor: str,
        decode: Callable[[bytes], Decoded],
    ) -> None:
        shadow_body = await shadow_task
        if shadow_body is None or primary_body is None:
            return
        try:
            result = compare(decode(primary_body), decode(shadow_body), self.rtol)
        except Exception as e:
            logger.warning("could not compare shadow answer: %s", e)
            return
        self.stats.add(result, primary_predictor)
        d = self.metrics.deployment
        self.metrics.shadow_rows.labels(d, shadow_pool, "agreed").inc(result.agreed)
        self.metrics.shadow_rows.labels(d, shadow_pool, "disagreed").inc(
            result.rows - result.agreed
        )

    async def drain(self) -> None:
        if self._tasks:
            await asyncio.gather(*self._tasks, return_exceptions=True)
