"""The local stack's executors, played by the shadow worker: for each mirrored request, the
events Seldon's executors would log on a cluster (the primary's request and answer, the shadow's
request and answer, one shared request id as when the caller sends Seldon-Puid), posted to the
comparator off the request path: the same CloudEvents, in batches (the CloudEvents JSON batch
format) rather than one POST each, which the comparator reads through the same checks and
matching as the executors' binary-mode events.

Bounded: a mirrored request whose events do not fit in the queue, or that the comparator does
not take (down, restarting, refusing), is dropped and counted (shadow.DROP_REASONS, events_lost),
never retried or queued without end.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import os
from collections import Counter, deque
from collections.abc import Callable

import aiohttp
import orjson
from cloudevents.core.base import BaseCloudEvent
from cloudevents.core.bindings import http as ce_http
from cloudevents.core.v1.event import CloudEvent

from .events import BATCH, FORMAT, JSON, PROTOBUF, make_event, write_batch

logger = logging.getLogger("serving.router")
CONTENT_TYPES = {"rest": JSON, "grpc": PROTOBUF}
Lost = Callable[[str, int], None]  # (shadow, mirrored requests) whose events were lost
#: mirrored requests whose events may wait to be posted (4 events, a few KiB each). Bounded so
#: that when the comparator (or this idle-class worker) cannot keep up, agreement is judged on
#: a sample of fresh requests rather than on a backlog minutes old (a rollout's mirror step
#: would judge the last shadow); batched, 1,024 is 1-3 s of the demo's mirrored traffic.
MAX_QUEUED = 1024
#: mirrored requests (4 events each) per batch, and how long a batch may wait to fill up
BATCH_REQUESTS = 64
BATCH_WAIT_S = 0.02


class Logged:
    """One logged event; `headers` and `body` are what an executor would POST for it in binary
    mode (made only when asked: the sender writes the event in a JSON batch instead)."""

    __slots__ = ("event",)

    def __init__(self, event: CloudEvent) -> None:
        self.event = event

    @property
    def headers(self) -> dict[str, str]:
        return ce_http.to_binary(self.event, FORMAT).headers

    @property
    def body(self) -> bytes:
        return ce_http.to_binary(self.event, FORMAT).body


class EventSender:
    """Batches: up to `batch` mirrored requests' events (or what came within `wait_s`) go as one
    CloudEvents JSON batch per role, over the session's keep-alive connections. One POST per
    event cost the comparator more than parsing and matching it (docs/comparator.md)."""

    def __init__(self, url: str, session: aiohttp.ClientSession, lost: Lost,
                 deployment: str, namespace: str, model: str, *,
                 max_queued: int = MAX_QUEUED, batch: int = BATCH_REQUESTS,
                 wait_s: float = BATCH_WAIT_S, senders: int = 2) -> None:
        self.url = url.rstrip("/")
        self.session = session
        self.lost = lost
        self.deployment, self.namespace, self.model = deployment, namespace, model
        self.max_queued = max_queued
        self.batch, self.wait_s = batch, wait_s
        self.queue: deque[tuple[str, list[tuple[str, Logged]]]] = deque()
        self._wake = asyncio.Event()
        self._senders = [asyncio.ensure_future(self._send_forever()) for _ in range(senders)]
        self._busy = 0

    def events(self, role: str, predictor: str, request_id: str, kind: str, request: bytes,
               answer: bytes | None, answer_kind: str | None = None
               ) -> list[tuple[str, Logged]]:
        """What one predictor's executor logs for one call: its request, and its answer
        unless the call failed (executor/predictor/predictor_process.go)."""
        def event(what: str, body: bytes, content_type: str) -> tuple[str, Logged]:
            return role, Logged(make_event(what, body, content_type, request_id=request_id,
                                           deployment=self.deployment,
                                           namespace=self.namespace, endpoint=predictor,
                                           model=self.model,
                                           source=f"http://127.0.0.1/{predictor}"))

        out = [event("request", request, CONTENT_TYPES[kind])]
        if answer is not None:
            out.append(event("response", answer, CONTENT_TYPES[answer_kind or kind]))
        return out

    @property
    def pending(self) -> int:
        """Mirrored requests whose events are queued or being posted."""
        return len(self.queue) + self._busy

    @staticmethod
    def request_id() -> str:
        return os.urandom(16).hex()

    def submit(self, shadow: str, events: list[tuple[str, Logged]]) -> None:
        """Queue one mirrored request's events; dropped (and counted) when the queue is full."""
        if len(self.queue) >= self.max_queued:
            self.lost(shadow, 1)
            return
        self.queue.append((shadow, events))
        self._wake.set()

    async def _send_forever(self) -> None:
        loop = asyncio.get_running_loop()
        while True:
            if not self.queue:
                self._wake.clear()
                await self._wake.wait()
                continue
            # a short wait for a fuller batch, unless one is already there
            deadline = loop.time() + self.wait_s
            while len(self.queue) < self.batch and loop.time() < deadline:
                await asyncio.sleep(min(0.005, self.wait_s))
            taken = [self.queue.popleft() for _ in range(min(self.batch, len(self.queue)))]
            if not taken:
                continue
            self._busy += len(taken)
            try:
                await self._post(taken)
            except Exception as e:  # the comparator down, restarting or refusing: counted
                logger.debug("events not taken by the comparator: %s", e)
                for shadow, n in Counter(shadow for shadow, _ in taken).items():
                    self.lost(shadow, n)
            finally:
                self._busy -= len(taken)

    async def _post(self, taken: list[tuple[str, list[tuple[str, Logged]]]]) -> None:
        by_role: dict[str, list[BaseCloudEvent]] = {}
        for _, logged in taken:
            for role, message in logged:
                by_role.setdefault(role, []).append(message.event)
        for role, batch in by_role.items():
            async with self.session.post(f"{self.url}/events/{role}",
                                         headers={"Content-Type": BATCH},
                                         data=write_batch(batch)) as resp:
                answer = await resp.read()
                if resp.status >= 400:
                    raise ValueError(f"{resp.status} {answer[:500]!r}")
                if orjson.loads(answer).get("refused"):  # our own events: refusing one is a bug
                    logger.warning("the comparator refused events: %s", answer[:500])

    async def drain(self, timeout: float = 2.0) -> None:
        loop = asyncio.get_running_loop()
        deadline = loop.time() + timeout
        while (self.queue or self._busy) and loop.time() < deadline:
            await asyncio.sleep(0.01)

    async def close(self) -> None:
        for task in self._senders:
            task.cancel()
        for task in self._senders:
            with contextlib.suppress(asyncio.CancelledError):
                await task
