"""Mirroring to the shadow: fire-and-forget, bounded, timed out, and compared with the primary.

The caller never waits for the shadow. nginx answers the caller first, then hands the request
and the primary's answer over a unix socket (lua/router.lua) to the shadow worker, a process of
its own in the idle CPU class (shadow_worker.py), like the shadow's model servers: mirrored work
only gets CPU time that callers' requests do not want. The worker sends the request to a shadow
replica, compares the two answers, and reports back to the control process as metrics lines
(telemetry.py), where `ShadowLedger` keeps the counts and the agreement.

When `max_in_flight` mirrored calls are already running, new ones are dropped and counted, never
queued (nginx also drops, and counts, hand-overs the worker does not take fast enough).
"""

from __future__ import annotations

import asyncio
import json
import logging
import time
from asyncio import StreamReader, StreamWriter
from collections.abc import Awaitable, Callable, Coroutine
from dataclasses import dataclass, field
from typing import Any, Protocol, TypeVar

import aiohttp
import grpc
import numpy as np

from .compare import AgreementStats, Comparison, compare, outputs_from_grpc, outputs_from_rest
from .metrics import RouterMetrics

logger = logging.getLogger("serving.router")
T = TypeVar("T")

Decoded = dict[str, tuple[str, np.ndarray]]
OUTCOMES = ("sent", "dropped", "failed", "timeout")


# -- in the control process ------------------------------------------------------------------------
class ShadowLedger:
    """The shadow's counts and agreement, from the worker's report lines (see `Report`)."""

    def __init__(self, metrics: RouterMetrics) -> None:
        self.metrics = metrics
        self.in_flight = 0
        self.stats = AgreementStats()
        self.counts = dict.fromkeys(OUTCOMES, 0)
        self._dataplane_dropped = 0

    def count(self, shadow: str, outcome: str, n: int = 1) -> None:
        if outcome in self.counts:
            self.counts[outcome] += n
            self.metrics.shadow_requests.labels(self.metrics.deployment, shadow, outcome).inc(n)

    def compared(self, shadow: str, primary: str, result: Comparison) -> None:
        self.stats.add(result, primary)
        d = self.metrics.deployment
        self.metrics.shadow_rows.labels(d, shadow, "agreed").inc(result.agreed)
        self.metrics.shadow_rows.labels(d, shadow, "disagreed").inc(result.rows - result.agreed)

    def sync_dataplane(self, shadow: str | None, dataplane: dict[str, int]) -> None:
        """Fold nginx's own drop count (hand-overs it could not make) into ours."""
        total = dataplane.get("handoffDropped", 0)
        new = total - self._dataplane_dropped
        if new > 0 and shadow:
            self._dataplane_dropped = total
            self.count(shadow, "dropped", new)


# -- in the shadow worker --------------------------------------------------------------------------
class Report(Protocol):
    """Where the worker's findings go (shadow_worker.TelemetryWriter: lines to the control
    process, which applies them to its ShadowLedger and metrics)."""

    def count(self, shadow: str, outcome: str) -> None: ...
    def observe(self, shadow: str, version: str, method: str, code: str, seconds: float) -> None: ...
    def compared(self, shadow: str, primary: str, result: Comparison) -> None: ...


@dataclass
class ShadowReplica:
    rest_url: str
    grpc_target: str
    _channel: grpc.aio.Channel | None = None

    def channel(self) -> grpc.aio.Channel:
        # Created lazily inside the running event loop, reused for every call.
        if self._channel is None:
            self._channel = grpc.aio.insecure_channel(self.grpc_target)
        return self._channel

    async def close(self) -> None:
        if self._channel is not None:
            await self._channel.close()


@dataclass
class ShadowPool:
    """The shadow predictor's live replicas, as the routing table lists them."""

    name: str
    version: str
    replicas: list[ShadowReplica]
    in_flight: int = 0

    @classmethod
    def from_table(cls, table: dict[str, Any]) -> ShadowPool | None:
        name = table.get("shadow")
        if not name:
            return None
        p = table["predictors"][name]
        return cls(name, p["version"], [ShadowReplica("http://" + rest, grpc_target)
                                        for rest, grpc_target in zip(p["rest"], p["grpc"], strict=True)])


# Sends the mirrored request to one replica: (status code, body when successful else None).
MirroredCall = Callable[[ShadowReplica], Awaitable[tuple[str, bytes | None]]]


@dataclass
class Mirror:
    report: Report
    max_in_flight: int
    timeout: float
    rtol: float
    in_flight: int = 0
    _tasks: set[asyncio.Task[Any]] = field(default_factory=set)

    def launch(self, pool: ShadowPool, call: MirroredCall, method: str,
               decode: Callable[[bytes], Decoded], primary: str, answer: bytes | None) -> None:
        """Start the mirrored call now, and compare once it answers (with `answer`, the primary's;
        None when the primary failed: nothing to compare). Dropped when the limit is reached or
        the shadow has no live replica."""
        if self.in_flight >= self.max_in_flight or not pool.replicas:
            self.report.count(pool.name, "dropped")
            return
        replica = pool.replicas[pool.in_flight % len(pool.replicas)]
        self.in_flight += 1
        pool.in_flight += 1
        self.report.count(pool.name, "sent")
        self._keep(self._run(pool, replica, call, method, decode, primary, answer))

    def _keep(self, coroutine: Coroutine[Any, Any, T]) -> asyncio.Task[T]:
        # The event loop holds tasks weakly: keep a reference until each one is done.
        task = asyncio.ensure_future(coroutine)
        self._tasks.add(task)
        task.add_done_callback(self._tasks.discard)
        return task

    async def _run(self, pool: ShadowPool, replica: ShadowReplica, call: MirroredCall,
                   method: str, decode: Callable[[bytes], Decoded], primary: str,
                   answer: bytes | None) -> None:
        # Recorded under the shadow's name like Seldon's executor in the shadow's pod would, so
        # the error rate of a mirrored candidate can be analysed like a canary's.
        started = time.perf_counter()
        code, body = "", None
        try:
            code, body = await asyncio.wait_for(call(replica), self.timeout)
            if body is None:
                self.report.count(pool.name, "failed")
        except TimeoutError:
            # Counted as a timeout, not as a request of the shadow's: a mirrored call may be
            # slow because the shadow runs at low priority, which says nothing about the model.
            self.report.count(pool.name, "timeout")
            code = ""
        except Exception as e:  # a broken shadow must never matter to callers
            logger.debug("shadow call failed: %s", e)
            code = "UNAVAILABLE" if method == "unary" else "503"
            self.report.count(pool.name, "failed")
        finally:
            self.in_flight -= 1
            pool.in_flight -= 1
        if code:
            self.report.observe(pool.name, pool.version, method, code,
                                time.perf_counter() - started)
        if body is None or answer is None:
            return
        try:
            result = compare(decode(answer), decode(body), self.rtol)
        except Exception as e:
            logger.warning("could not compare shadow answer: %s", e)
            return
        self.report.compared(pool.name, primary, result)

    async def drain(self) -> None:
        if self._tasks:
            await asyncio.gather(*self._tasks, return_exceptions=True)


def _grpc_message(frame: bytes) -> bytes | None:
    """The message in one gRPC length-prefixed frame; None when compressed (not compared)."""
    if len(frame) < 5 or frame[0] != 0:
        return None
    return frame[5:5 + int.from_bytes(frame[1:5], "big")]


class HandoffReceiver:
    """Takes mirrored pairs from nginx and launches the shadow call and the comparison.

    Each pair arrives as one line `kind shadow primary path code len_request len_response`
    followed by the two bodies: the caller's request and the primary's answer (gRPC bodies are
    in gRPC's length-prefixed framing). The control process sends routing tables on the same
    socket, as `table <length>` and the JSON."""

    def __init__(self, mirror: Mirror, session: aiohttp.ClientSession) -> None:
        self.mirror = mirror
        self.session = session
        self.pool: ShadowPool | None = None
        self.timeout = aiohttp.ClientTimeout(total=mirror.timeout)

    async def handle(self, reader: StreamReader, writer: StreamWriter) -> None:
        try:
            while head := await reader.readline():
                fields = head.decode().split()
                if fields[0] == "table":
                    self.install(await reader.readexactly(int(fields[1])))
                    continue
                kind, shadow, primary, path, code, n_request, n_response = fields
                request = await reader.readexactly(int(n_request))
                response = await reader.readexactly(int(n_response))
                self.launch(kind, shadow, primary, path, code, request, response)
        except (asyncio.IncompleteReadError, ConnectionError, ValueError) as e:
            logger.warning("bad mirrored pair: %s", e)
        finally:
            writer.close()

    def install(self, raw_table: bytes) -> None:
        new = ShadowPool.from_table(json.loads(raw_table))
        old = self.pool
        if old is not None and new is not None and (old.name, old.version) == (new.name,
                                                                                 new.version):
            # same shadow: keep the gRPC channels of replicas still listed
            known = {r.grpc_target: r for r in old.replicas}
            new.replicas = [known.get(r.grpc_target, r) for r in new.replicas]
            new.in_flight = old.in_flight
        self.pool = new

    def launch(self, kind: str, shadow: str, primary: str, path: str, code: str,
               request: bytes, response: bytes) -> None:
        pool = self.pool
        if pool is None or pool.name != shadow:  # the shadow was replaced meanwhile
            return
        if kind == "grpc":
            message = _grpc_message(request)
            if message is None:
                self.mirror.report.count(shadow, "dropped")
                return
            answer = _grpc_message(response) if code == "0" else None
            self.mirror.launch(pool, self._grpc_call(path, message), "unary", outputs_from_grpc,
                               primary, answer)
        else:
            answer = response if code == "200" else None
            self.mirror.launch(pool, self._rest_call(path, request), "POST", outputs_from_rest,
                               primary, answer)

    def _rest_call(self, path: str, body: bytes) -> MirroredCall:
        async def call(replica: ShadowReplica) -> tuple[str, bytes | None]:
            async with self.session.post(replica.rest_url + path, data=body, timeout=self.timeout,
                                         headers={"content-type": "application/json"}) as resp:
                payload = await resp.read()
                return str(resp.status), payload if resp.status == 200 else None
        return call

    def _grpc_call(self, method: str, message: bytes) -> MirroredCall:
        async def call(replica: ShadowReplica) -> tuple[str, bytes | None]:
            try:
                answer = await replica.channel().unary_unary(method)(message)
                return "OK", bytes(answer)
            except grpc.aio.AioRpcError as e:
                return e.code().name, None
        return call
