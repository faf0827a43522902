"""Mirroring to the shadow: fire-and-forget, bounded, timed out, and compared with the primary.

The caller never waits for the shadow: nginx answers the caller first, then hands the request and
the primary's answer over a unix socket (lua/router.lua); `HandoffReceiver` sends the request to a
shadow replica and compares the two answers. When `max_in_flight` mirrored calls are already
running, new ones are dropped and counted, never queued (nginx also drops, and counts, hand-overs
the control process does not take fast enough).
"""

from __future__ import annotations

import asyncio
import logging
import time
from asyncio import StreamReader, StreamWriter
from collections.abc import Awaitable, Callable, Coroutine
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any, TypeVar

import aiohttp
import grpc
import numpy as np

from .compare import AgreementStats, compare, outputs_from_grpc, outputs_from_rest
from .metrics import RouterMetrics
from .replicas import PredictorPool, Replica

if TYPE_CHECKING:
    from .core import RouterCore

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
        self._dataplane_dropped = 0

    def _count(self, pool: str, outcome: str, n: int = 1) -> None:
        self.counts[outcome] += n
        self.metrics.shadow_requests.labels(self.metrics.deployment, pool, outcome).inc(n)

    def sync_dataplane(self, shadow: str | None, dataplane: dict[str, int]) -> None:
        """Fold nginx's own drop count (hand-overs it could not make) into ours."""
        total = dataplane.get("handoffDropped", 0)
        new = total - self._dataplane_dropped
        if new > 0 and shadow:
            self._dataplane_dropped = total
            self._count(shadow, "dropped", new)

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


def _grpc_message(frame: bytes) -> bytes | None:
    """The message in one gRPC length-prefixed frame; None when compressed (not compared)."""
    if len(frame) < 5 or frame[0] != 0:
        return None
    return frame[5:5 + int.from_bytes(frame[1:5], "big")]


class HandoffReceiver:
    """Takes mirrored pairs from nginx and launches the shadow call and the comparison.

    Each pair arrives as one line `kind shadow primary path code len_request len_response`
    followed by the two bodies: the caller's request and the primary's answer (gRPC bodies are
    in gRPC's length-prefixed framing)."""

    def __init__(self, core: RouterCore, session: aiohttp.ClientSession) -> None:
        self.core = core
        self.session = session
        self.timeout = aiohttp.ClientTimeout(total=core.settings.shadow.timeout_seconds)

    async def handle(self, reader: StreamReader, writer: StreamWriter) -> None:
        try:
            while head := await reader.readline():
                kind, shadow, primary, path, code, n_request, n_response = head.decode().split()
                request = await reader.readexactly(int(n_request))
                response = await reader.readexactly(int(n_response))
                self.launch(kind, shadow, primary, path, code, request, response)
        except (asyncio.IncompleteReadError, ConnectionError, ValueError) as e:
            logger.warning("bad mirrored pair from nginx: %s", e)
        finally:
            writer.close()

    def launch(self, kind: str, shadow: str, primary: str, path: str, code: str,
               request: bytes, response: bytes) -> None:
        mirror = self.core.mirror
        pool = self.core.state.pools.get(shadow)
        if pool is None:  # the shadow was replaced meanwhile
            return
        if kind == "grpc":
            message = _grpc_message(request)
            if message is None:
                mirror._count(shadow, "dropped")
                return
            call = self._grpc_call(path, message)
            answer = _grpc_message(response) if code == "0" else None
            started = mirror.launch(pool, call, "unary", outputs_from_grpc)
        else:
            call = self._rest_call(path, request)
            answer = response if code == "200" else None
            started = mirror.launch(pool, call, "POST", outputs_from_rest)
        if started is not None:
            started.finish(answer, primary)

    def _rest_call(self, path: str, body: bytes) -> MirroredCall:
        async def call(replica: Replica) -> tuple[str, bytes | None]:
            async with self.session.post(replica.rest_url + path, data=body, timeout=self.timeout,
                                         headers={"content-type": "application/json"}) as resp:
                payload = await resp.read()
                return str(resp.status), payload if resp.status == 200 else None
        return call

    def _grpc_call(self, method: str, message: bytes) -> MirroredCall:
        async def call(replica: Replica) -> tuple[str, bytes | None]:
            try:
                answer = await replica.channel().unary_unary(method)(message)
                return "OK", bytes(answer)
            except grpc.aio.AioRpcError as e:
                return e.code().name, None
        return call
