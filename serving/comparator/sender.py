"""The local stack's executors, played by the shadow worker: for each mirrored request, the
events Seldon's executors would log on a cluster (the primary's request and answer, the shadow's
request and answer, one shared request id as when the caller sends Seldon-Puid), posted to the
comparator off the request path.

Bounded: a mirrored request whose events do not fit in the queue, or that the comparator does
not take (down, restarting, refusing), is dropped and counted (shadow.DROP_REASONS, events_lost),
never retried or queued without end.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import os
from collections import deque
from collections.abc import Callable

import aiohttp
from cloudevents.core.bindings.http import HTTPMessage

from .events import JSON, PROTOBUF, write_event

logger = logging.getLogger("serving.router")
CONTENT_TYPES = {"rest": JSON, "grpc": PROTOBUF}
Lost = Callable[[str, int], None]  # (shadow, mirrored requests) whose events were lost
#: mirrored requests whose events may wait to be posted. Small on purpose: when the comparator
#: (or this idle-class worker) cannot keep up, agreement is judged on a sample of fresh requests
#: rather than on a backlog minutes old (a rollout's mirror step would judge the last shadow).
MAX_QUEUED = 256


class EventSender:
    def __init__(self, url: str, session: aiohttp.ClientSession, lost: Lost,
                 deployment: str, namespace: str, model: str, *,
                 max_queued: int = MAX_QUEUED, senders: int = 16) -> None:
        self.url = url.rstrip("/")
        self.session = session
        self.lost = lost
        self.deployment, self.namespace, self.model = deployment, namespace, model
        self.max_queued = max_queued
        self.queue: deque[tuple[str, list[tuple[str, HTTPMessage]]]] = deque()
        self._wake = asyncio.Event()
        self._senders = [asyncio.ensure_future(self._send_forever()) for _ in range(senders)]
        self._busy = 0

    def events(self, role: str, predictor: str, request_id: str, kind: str, request: bytes,
               answer: bytes | None, answer_kind: str | None = None
               ) -> list[tuple[str, HTTPMessage]]:
        """What one predictor's executor logs for one call: its request, and its answer
        unless the call failed (executor/predictor/predictor_process.go)."""
        def event(what: str, body: bytes, content_type: str) -> tuple[str, HTTPMessage]:
            return role, write_event(what, body, content_type, request_id=request_id,
                                     deployment=self.deployment, namespace=self.namespace,
                                     endpoint=predictor, model=self.model,
                                     source=f"http://127.0.0.1/{predictor}")

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

    def submit(self, shadow: str, events: list[tuple[str, HTTPMessage]]) -> None:
        """Queue one mirrored request's events; dropped (and counted) when the queue is full."""
        if len(self.queue) >= self.max_queued:
            self.lost(shadow, 1)
            return
        self.queue.append((shadow, events))
        self._wake.set()

    async def _send_forever(self) -> None:
        while True:
            if not self.queue:
                self._wake.clear()
                await self._wake.wait()
                continue
            shadow, events = self.queue.popleft()
            self._busy += 1
            try:
                for role, message in events:
                    async with self.session.post(f"{self.url}/events/{role}",
                                                 headers=message.headers,
                                                 data=message.body) as resp:
                        await resp.read()
                        if resp.status >= 400:
                            raise ValueError(f"{resp.status} {await resp.text()}")
            except Exception as e:  # the comparator down, restarting or refusing: counted
                logger.debug("events not taken by the comparator: %s", e)
                self.lost(shadow, 1)
            finally:
                self._busy -= 1

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
