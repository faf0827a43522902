"""Mirroring to the shadow: fire-and-forget, bounded, timed out, and compared with the primary.

The caller never waits for the shadow. nginx answers the caller first, keeps the request and
the primary's answer, and hands what it kept over a unix socket every hand-over interval
(lua/router.lua, hand_over) to the shadow worker, a process of its own in the idle CPU class
(shadow_worker.py), like the shadow's model servers: mirrored work only gets CPU time that
callers' requests do not want. The worker sends the request to a shadow replica and logs both
predictors' requests and answers to the comparator (serving/comparator/) as the CloudEvents
Seldon's executors send on a cluster, so both compare the same way, in the same process. The
worker's counts and the comparator's verdicts reach the control process as metrics lines
(telemetry.py), where `ShadowLedger` keeps the counts and the agreement.

Alike mirrored requests are batched into one inference (shadow_batch.py). When `max_in_flight`
mirrored requests are already waiting or running, new ones are dropped and counted, never
queued (nginx also drops, and counts, pairs beyond `max_in_flight` waiting for a hand-over,
and hand-overs the worker does not take).
"""

from __future__ import annotations

import asyncio
import json
import logging
import time
from collections.abc import Coroutine
from dataclasses import dataclass, field
from typing import Any, Protocol, TypeVar, cast

import aiohttp
import grpc

from ..agreement import AgreementStats, outputs_from_grpc, outputs_from_rest, rest_response
from ..comparator.sender import EventSender
from .metrics import RouterMetrics
from .shadow_batch import (
    BatchKey,
    Inputs,
    grpc_inputs,
    grpc_message,
    grpc_template_from_rest,
    join,
    rest_inputs,
    split,
)

logger = logging.getLogger("serving.router")
T = TypeVar("T")
GRPC_INFER = "/inference.GRPCInferenceService/ModelInfer"

OUTCOMES = ("sent", "dropped", "failed", "timeout")
#: why a mirrored request was dropped (a closed set: it is a metric label)
DROP_REASONS = (
    "in_flight_limit",   # router.shadow.maxInFlight mirrored requests were already in flight
    "no_live_replica",   # the shadow had no live replica
    "shadow_retired",    # the shadow left (a rollout retired it) while the request waited
    "unreadable",        # the hand-over frame or the gRPC message could not be read
    "handoff_failed",    # nginx could not hand the pair to the worker (worker down or slow)
    "handoff_limit",     # nginx held maxInFlight pairs waiting for the next hand-over
    "events_lost",       # sent to the shadow, but the comparator did not take the pair's
                         # events (down, slow, refusing): also counted under "sent"
    "other",
)


# -- in the control process ------------------------------------------------------------------------
class ShadowLedger:
    """The shadow's counts and agreement, from the worker's report lines (see `Report`)."""

    def __init__(self, metrics: RouterMetrics) -> None:
        self.metrics = metrics
        self.in_flight = 0
        self.stats = AgreementStats()
        self.counts = dict.fromkeys(OUTCOMES, 0)
        self.dropped_by: dict[str, int] = {}
        """Why mirrored requests were dropped (DROP_REASONS): every one is compared or counted."""

    def count(self, shadow: str, outcome: str, n: int = 1, reason: str = "") -> None:
        if outcome in self.counts:
            self.counts[outcome] += n
            self.metrics.shadow_requests.labels(self.metrics.deployment, shadow, outcome).inc(n)
        if outcome == "dropped":
            reason = reason if reason in DROP_REASONS else "other"
            self.dropped_by[reason] = self.dropped_by.get(reason, 0) + n
            self.metrics.shadow_dropped.labels(self.metrics.deployment, shadow, reason).inc(n)

    def compared(self, shadow: str, primary: str, requests: int, rows: int, agreed: int) -> None:
        self.stats.add_counts(requests, rows, agreed)
        d = self.metrics.deployment
        self.metrics.shadow_rows.labels(d, shadow, "agreed").inc(agreed)
        self.metrics.shadow_rows.labels(d, shadow, "disagreed").inc(rows - agreed)


# -- in the shadow worker --------------------------------------------------------------------------
class Report(Protocol):
    """Where the worker's counts go (shadow_worker.TelemetryWriter: lines to the control
    process, which applies them to its ShadowLedger and metrics)."""

    def count(self, shadow: str, outcome: str, n: int = 1, reason: str = "") -> None: ...
    def observe(self, shadow: str, version: str, method: str, code: str, seconds: float,
                n: int = 1) -> None: ...


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

    @classmethod
    def from_table(cls, table: dict[str, Any]) -> ShadowPool | None:
        name = table.get("shadow")
        if not name:
            return None
        p = table["predictors"][name]
        replicas = [ShadowReplica("http://" + rest, grpc_target)
                    for rest, grpc_target in zip(p["rest"], p["grpc"], strict=True)]
        return cls(name, p["version"], replicas)


@dataclass
class Pending:
    """A mirrored request waiting in a batch: its inputs, and the primary's answer to it."""

    inputs: Inputs
    primary: str
    answer: bytes
    request: bytes
    """As the caller sent it (what the executors log)."""


@dataclass
class Batch:
    """Alike mirrored requests waiting to go to the shadow as one inference."""

    shadow: str
    started: float
    """When its first request arrived (monotonic): it leaves `batch_wait` seconds later at the
    latest."""
    pending: list[Pending] = field(default_factory=list)
    rows: int = 0


@dataclass
class Mirror:
    """Sends mirrored requests to the shadow, batched when they can be (shadow_batch.py), and
    logs each request with both answers to the comparator."""

    report: Report
    session: aiohttp.ClientSession
    max_in_flight: int
    timeout: float
    rtol: float
    batch_rows: int
    """A batch is sent once it has this many rows..."""
    batch_wait: float
    """...or once it is this many seconds old (checked by HandoffReceiver.flush_every)."""
    in_flight: int = 0
    """Mirrored requests accepted and not finished (waiting in a batch or being answered)."""
    pool: ShadowPool | None = None
    """The shadow as the latest routing table lists it: a batch goes to the replicas listed
    when it is sent, not to those of its first request (they may have been stopped since)."""
    events: EventSender | None = None
    """Where both predictors' requests and answers are logged (None: nowhere, in unit tests)."""
    _batches: dict[tuple[str, BatchKey], Batch] = field(default_factory=dict)
    _tasks: set[asyncio.Task[Any]] = field(default_factory=set)
    _turn: int = 0

    def submit(self, pool: ShadowPool, kind: str, path: str, request: bytes,
               primary: str, answer: bytes | None) -> None:
        """Take one mirrored request (`answer`: the primary's, None when it failed). Dropped
        when `max_in_flight` are already in flight or the shadow has no live replica."""
        if self.in_flight >= self.max_in_flight or not pool.replicas:
            self.report.count(pool.name, "dropped", reason="no_live_replica" if not pool.replicas
                              else "in_flight_limit")
            return
        inputs = None
        if answer is not None:
            try:
                inputs = (rest_inputs(path, request) if kind == "rest"
                          else grpc_inputs(path, request))
            except Exception as e:  # unreadable: mirrored alone, as it came
                logger.debug("not batched: %s", e)
        self.in_flight += 1
        if inputs is None or answer is None:  # mirrored alone, as it came
            self.report.count(pool.name, "sent")
            self._keep(self._run(pool, kind, path, request, [primary], [answer], None,
                                 [request]))
            return
        batch_id = (pool.name, inputs.key)
        batch = self._batches.get(batch_id)
        if batch is None:
            batch = self._batches[batch_id] = Batch(pool.name, time.monotonic())
        batch.pending.append(Pending(inputs, primary, answer, request))
        batch.rows += inputs.rows
        if batch.rows >= self.batch_rows:
            self._flush(batch_id)

    def flush_all(self) -> None:
        for batch_id in list(self._batches):
            self._flush(batch_id)

    def flush_due(self) -> None:
        """Send the batches that have waited `batch_wait` seconds."""
        oldest_allowed = time.monotonic() - self.batch_wait
        for batch_id, batch in list(self._batches.items()):
            if batch.started <= oldest_allowed:
                self._flush(batch_id)

    def _flush(self, batch_id: tuple[str, BatchKey]) -> None:
        batch = self._batches.pop(batch_id)
        pool = self.pool
        if pool is None or pool.name != batch.shadow or not pool.replicas:
            # the shadow left (or has no live replica) while the batch waited
            self.in_flight -= len(batch.pending)
            self.report.count(batch.shadow, "dropped", len(batch.pending),
                              "no_live_replica" if pool is not None and pool.name == batch.shadow
                              else "shadow_retired")
            return
        self.report.count(pool.name, "sent", len(batch.pending))
        # built and sent in its own task: a batch that cannot be built is lost, not the worker
        self._keep(self._send_batch(pool, batch.pending))

    async def _send_batch(self, pool: ShadowPool, batch: list[Pending]) -> None:
        try:
            kind, path, _ = batch[0].inputs.key
            template = batch[0].inputs.template
            if kind == "rest":
                template = grpc_template_from_rest(path, template)
            payload = grpc_message(template, join([p.inputs for p in batch]))
        except Exception as e:
            self.in_flight -= len(batch)
            self.report.count(pool.name, "failed", len(batch))
            logger.warning("could not build a batch for the shadow: %s", e)
            return
        await self._run(pool, kind, GRPC_INFER, payload, [p.primary for p in batch],
                        [p.answer for p in batch], [p.inputs.rows for p in batch],
                        [p.request for p in batch])

    def _keep(self, coroutine: Coroutine[Any, Any, T]) -> asyncio.Task[T]:
        # The event loop holds tasks weakly: keep a reference until each one is done.
        task = asyncio.ensure_future(coroutine)
        self._tasks.add(task)
        task.add_done_callback(self._tasks.discard)
        return task

    async def _call(self, replica: ShadowReplica, kind: str, path: str,
                    payload: bytes) -> tuple[str, bytes | None]:
        """(status code, answer when successful else None)."""
        if kind == "grpc":
            try:
                return "OK", bytes(await replica.channel().unary_unary(path)(payload))
            except grpc.aio.AioRpcError as e:
                return e.code().name, None
        async with self.session.post(replica.rest_url + path, data=payload,
                                     headers={"content-type": "application/json",
                                              "accept-encoding": "identity"}) as resp:
            body = await resp.read()
            return str(resp.status), body if resp.status == 200 else None

    async def _run(self, pool: ShadowPool, kind: str, path: str, payload: bytes,
                   primaries: list[str], answers: list[bytes | None],
                   rows: list[int] | None, requests: list[bytes]) -> None:
        """One call to the shadow for one request, or for a batch (`rows`: rows per request),
        then each request's events to the comparator."""
        n = len(primaries)
        self._turn += 1
        replica = pool.replicas[self._turn % len(pool.replicas)]
        call_kind = "grpc" if rows else kind  # batches go over gRPC (see _flush)
        method = "unary" if call_kind == "grpc" else "POST"
        started = time.perf_counter()
        code, body = "", None
        try:
            code, body = await asyncio.wait_for(self._call(replica, call_kind, path, payload),
                                                self.timeout)
            outcome = "" if body is not None else "failed"
        except TimeoutError:
            # Counted as a timeout, not as a request of the shadow's: a mirrored call may be
            # slow because the shadow runs at low priority, which says nothing about the model.
            outcome = "timeout"
        except Exception as e:  # a broken shadow must never matter to callers
            logger.debug("shadow call failed: %s", e)
            code, outcome = ("UNAVAILABLE" if call_kind == "grpc" else "503"), "failed"
        finally:
            self.in_flight -= n
        seconds = time.perf_counter() - started
        if outcome:
            self.report.count(pool.name, outcome, n)
        # Recorded per mirrored request under the shadow's name, like Seldon's executor in the
        # shadow's pod would, so a mirrored candidate's error rate reads like a canary's.
        if code:
            self.report.observe(pool.name, pool.version, method, code, seconds, n)
        if self.events is not None:
            self._log_events(pool.name, kind, call_kind, primaries, answers, rows, requests,
                             body)

    def _log_events(self, shadow: str, kind: str, call_kind: str, primaries: list[str],
                    answers: list[bytes | None], rows: list[int] | None,
                    requests: list[bytes], body: bytes | None) -> None:
        """What the two executors would log on a cluster, per mirrored request: the primary's
        request and answer, the shadow's request and answer (none when its call failed), under
        one request id, as when the caller sends Seldon-Puid."""
        events = self.events
        assert events is not None
        shadow_answers: list[tuple[bytes | None, str]] = [(body, call_kind)] * len(primaries)
        try:
            if body is not None and rows:  # a batch: each request's part of the answer
                decode = outputs_from_grpc if call_kind == "grpc" else outputs_from_rest
                shadow_answers = [(rest_response(events.model, part), "rest")
                                  for part in split(decode(body), rows)]
            for primary, answer, request, (shadow_answer, answer_kind) in zip(
                    primaries, answers, requests, shadow_answers, strict=True):
                request_id = events.request_id()
                events.submit(shadow, events.events("primary", primary, request_id, kind,
                                                    request, answer)
                              + events.events("shadow", shadow, request_id, kind, request,
                                              shadow_answer, answer_kind))
        except Exception as e:
            logger.warning("could not log the shadow's answers to the comparator: %s", e)

    async def drain(self) -> None:
        self.flush_all()
        if self._tasks:
            await asyncio.gather(*self._tasks, return_exceptions=True)
        if self.events is not None:
            await self.events.drain()


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

    def __init__(self, mirror: Mirror) -> None:
        self.mirror = mirror

    async def flush_every(self, seconds: float) -> None:
        """Every `seconds`, send the batches that have waited long enough. nginx hands mirrored
        pairs over at the same interval, in one write, so the worker wakes a few times per
        second, not once per request (any CPU spent next to the primary's requests shows in
        their tail latency)."""
        while True:
            await asyncio.sleep(seconds)
            self.mirror.flush_due()

    def consume(self, buffer: bytearray) -> None:
        """Take every complete frame off the front of `buffer`."""
        while (end := buffer.find(b"\n")) >= 0:
            # bytes as they came (a caller's path may hold any byte): never a decode error
            fields = buffer[:end].decode("latin-1").split()
            if not fields:
                del buffer[:end + 1]
                continue
            if fields[0] == "table":
                size = int(fields[1])
                if len(buffer) < end + 1 + size:
                    return
                self.install(bytes(buffer[end + 1:end + 1 + size]))
                del buffer[:end + 1 + size]
                continue
            if len(fields) != 7 or not (fields[5].isdigit() and fields[6].isdigit()):
                # the frame's length is unknown, so is where the next one starts: what is left
                # of this hand-over is lost, counted rather than silently missing
                logger.warning("unreadable hand-over frame %r; rest of the hand-over dropped",
                               bytes(buffer[:min(end, 200)]))
                self.mirror.report.count(fields[1] if len(fields) > 1 else "-", "dropped",
                                         reason="unreadable")
                buffer.clear()
                return
            kind, shadow, primary, path, code, n_request, n_response = fields
            a, b = end + 1 + int(n_request), end + 1 + int(n_request) + int(n_response)
            if len(buffer) < b:
                return
            request, response = bytes(buffer[end + 1:a]), bytes(buffer[a:b])
            del buffer[:b]
            self.launch(kind, shadow, primary, path, code, request, response)

    def install(self, raw_table: bytes) -> None:
        new = ShadowPool.from_table(json.loads(raw_table))
        old = self.mirror.pool
        if old is not None and new is not None and (old.name, old.version) == (new.name,
                                                                                 new.version):
            # same shadow: keep the gRPC channels of replicas still listed
            known = {r.grpc_target: r for r in old.replicas}
            new.replicas = [known.get(r.grpc_target, r) for r in new.replicas]
        if old is not None:
            kept = {id(r) for r in new.replicas} if new is not None else set()
            for replica in old.replicas:
                if id(replica) not in kept:
                    self.mirror._keep(replica.close())
        self.mirror.pool = new

    def launch(self, kind: str, shadow: str, primary: str, path: str, code: str,
               request: bytes, response: bytes) -> None:
        pool = self.mirror.pool
        if pool is None or pool.name != shadow:  # the shadow was replaced meanwhile
            self.mirror.report.count(shadow, "dropped", reason="shadow_retired")
            return
        if kind == "grpc":
            message = _grpc_message(request)
            if message is None:
                self.mirror.report.count(shadow, "dropped", reason="unreadable")
                return
            answer = _grpc_message(response) if code == "0" else None
            self.mirror.submit(pool, kind, path, message, primary, answer)
        else:
            self.mirror.submit(pool, kind, path, request, primary,
                               response if code == "200" else None)


class HandoffConnection(asyncio.Protocol):
    """One connection from nginx (or the control process)."""

    def __init__(self, receiver: HandoffReceiver) -> None:
        self.receiver = receiver
        self.buffer = bytearray()
        self.transport: asyncio.Transport

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        self.transport = cast(asyncio.Transport, transport)  # uvloop's is not a subclass

    def data_received(self, data: bytes) -> None:
        self.buffer += data
        try:
            self.receiver.consume(self.buffer)
        except (ValueError, IndexError) as e:
            logger.warning("bad mirrored pair, connection dropped: %s", e)
            self.transport.close()
