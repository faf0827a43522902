"""The comparator's HTTP service (aiohttp).

    POST /events/primary   a primary predictor's executor logs here (graph logger url)
    POST /events/shadow    the shadow predictor's executor logs here
    GET  /metrics          Prometheus exposition (metrics.py)
    GET  /disagreements    recent disagreements (input row, both answers) and the agreement
    GET  /health/live, /health/ready

The role is in the path because the executor does not know whether its predictor is the shadow;
the chart (and a rollout's mirror step, which renders the chart) gives each predictor's graph
the right URL. Either one event per request in binary mode (Seldon's executors) or a CloudEvents
JSON batch (`content-type: application/cloudevents-batch+json`; the local stack's sender), each
event of which goes through the same checks, counters and matching. A refused event gets a 4xx naming what is wrong and is counted by reason; nothing
an event holds can stop the service.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import os
import signal
from collections.abc import Awaitable, Callable
from pathlib import Path
from typing import Any

from aiohttp import web
from prometheus_client import CONTENT_TYPE_LATEST, generate_latest

from ..errors import ServingError
from .events import BATCH, ROLES, EventError, InferenceEvent, read_batch, read_event
from .matching import Comparator, Settings, Verdict

logger = logging.getLogger("serving.comparator")
MAX_BODY = 8 * 1024 * 1024
#: HTTP status per refusal reason
STATUS = {"unknown_deployment": 404, "unknown_role": 404, "bad_body": 422}


def _refuse(comparator: Comparator, reason: str, message: str) -> web.Response:
    comparator.metrics.refused.labels(reason).inc()
    return web.json_response({"error": reason, "message": message},
                             status=STATUS.get(reason, 400))


async def take_event(comparator: Comparator, role: str, request: web.BaseRequest
                     ) -> web.Response:
    if role not in ROLES:
        return _refuse(comparator, "unknown_role", f"POST events to /events/primary or "
                       f"/events/shadow, not /events/{role}")
    body = await request.read()
    if request.content_type == BATCH:
        return take_batch(comparator, role, body)
    try:
        event = _served(comparator, read_event(request.headers, body))
    except EventError as e:
        return _refuse(comparator, e.reason, e.message)
    taken = comparator.take(event, role)
    return web.Response(status=200 if taken else 208)  # 208: already reported


def _served(comparator: Comparator, event: InferenceEvent) -> InferenceEvent:
    served = comparator.settings.deployments
    if served and event.deployment not in served:
        raise EventError("unknown_deployment",
                         f"ce-inferenceservicename {event.deployment!r} is not served here "
                         f"(served: {', '.join(sorted(served))}); start the comparator with "
                         "--deployment for it")
    return event


def take_batch(comparator: Comparator, role: str, body: bytes) -> web.Response:
    """A JSON batch: each event checked, counted and matched as a binary-mode one would be.
    Answer: 200 with a summary (taken, duplicates, refused by index with reason and message)
    when any event was taken or recognised as a duplicate; when every event was refused, the
    4xx a single event would get for the first refusal, with the same summary."""
    try:
        entries = read_batch(body)
    except EventError as e:
        return _refuse(comparator, e.reason, e.message)
    taken = duplicates = 0
    refused: list[dict[str, Any]] = []
    for index, entry in enumerate(entries):
        try:
            if isinstance(entry, EventError):
                raise entry
            event = _served(comparator, entry)
        except EventError as e:
            comparator.metrics.refused.labels(e.reason).inc()
            refused.append({"index": index, "error": e.reason, "message": e.message})
            continue
        if comparator.take(event, role):
            taken += 1
        else:
            duplicates += 1
    summary = {"taken": taken, "duplicates": duplicates, "refused": refused}
    if refused and not taken and not duplicates:
        return web.json_response({"error": refused[0]["error"],
                                  "message": refused[0]["message"], **summary},
                                 status=STATUS.get(refused[0]["error"], 400))
    return web.json_response(summary)


def metrics(comparator: Comparator) -> web.Response:
    comparator.expire()
    comparator.gauges()
    return web.Response(body=generate_latest(comparator.metrics.registry),
                        headers={"Content-Type": CONTENT_TYPE_LATEST})


def disagreements(comparator: Comparator, request: web.BaseRequest) -> web.Response:
    try:
        limit = int(request.query.get("limit", "20"))
    except ValueError:
        return web.json_response({"error": "limit must be a whole number"}, status=400)
    recent = list(comparator.disagreements)[-limit:] if limit > 0 else []
    return web.json_response({"agreement": comparator.agreement(),
                              "disagreements": recent[::-1]})  # newest first


def make_handler(comparator: Comparator) -> Callable[[web.BaseRequest],
                                                     Awaitable[web.StreamResponse]]:
    """aiohttp's low-level server, routed by hand: five fixed routes do not need the
    application's router and middlewares, and each event pays for them (see the benchmark)."""

    async def handle(request: web.BaseRequest) -> web.StreamResponse:
        path, method = request.path, request.method
        try:
            if path.startswith("/events/"):
                if method != "POST":
                    return web.json_response({"error": "POST events"}, status=405)
                return await take_event(comparator, path[len("/events/"):], request)
            if method == "GET":
                if path == "/metrics":
                    return metrics(comparator)
                if path == "/disagreements":
                    return disagreements(comparator, request)
                if path in ("/health/live", "/health/ready"):
                    return web.json_response({"status": "ok"})
            return web.json_response({"error": f"no {method} {path} here (POST /events/primary"
                                      " or /events/shadow; GET /metrics, /disagreements)"},
                                     status=404)
        except web.HTTPException as e:  # 413 for a body beyond MAX_BODY, ...
            return web.json_response({"error": e.reason}, status=e.status)

    return handle


def _make_request(message: Any, payload: Any, protocol: Any, writer: Any, task: Any
                  ) -> web.BaseRequest:
    # as web.Server's own, with room for bodies up to MAX_BODY (its default is 1 MiB)
    return web.BaseRequest(message, payload, protocol, writer, task,
                           asyncio.get_running_loop(), client_max_size=MAX_BODY)


async def _expire_every(comparator: Comparator, seconds: float) -> None:
    # Waiting entries must expire (and be counted) even when no event comes to trigger it.
    while True:
        await asyncio.sleep(seconds)
        comparator.expire()
        comparator.gauges()


async def serve(host: str, port: int, settings: Settings, telemetry: Path | None = None,
                idle_cpu: bool = False) -> None:
    report = None
    writer: Any = None
    if telemetry is not None:
        # Local stack: verdicts also go to the control process, which keeps the router's
        # counters and `serving status` (telemetry lines, as the shadow worker sends them).
        from ..router.shadow_worker import TelemetryWriter

        writer = TelemetryWriter(telemetry)

        def report(v: Verdict) -> None:
            writer.compared(v.shadow, v.primary, 1, v.result)

    comparator = Comparator(settings, report=report)
    server = web.Server(make_handler(comparator), request_factory=_make_request)
    runner = web.ServerRunner(server, access_log=None, handle_signals=False)
    await runner.setup()
    try:
        await web.TCPSite(runner, host, port, backlog=1024).start()
    except OSError as e:
        await runner.cleanup()
        raise ServingError(f"the comparator cannot listen on {host}:{port}: {e.strerror}; "
                           "choose another --port") from None
    tasks = [asyncio.create_task(_expire_every(comparator, 1.0))]
    if writer is not None:
        tasks.append(asyncio.create_task(writer.run()))
    stop = asyncio.Event()
    loop = asyncio.get_running_loop()
    for sig in (signal.SIGTERM, signal.SIGINT):
        loop.add_signal_handler(sig, stop.set)
    if idle_cpu:
        # Local stack: mirrored work, like the shadow worker, only gets CPU time callers'
        # requests do not want. Started at normal priority so that it starts fast.
        os.sched_setscheduler(0, os.SCHED_IDLE, os.sched_param(0))
    await stop.wait()
    await runner.cleanup()
    if writer is not None:
        await asyncio.sleep(0.15)  # one last report
    for task in tasks:
        task.cancel()
        with contextlib.suppress(asyncio.CancelledError):
            await task


def run(host: str, port: int, settings: Settings, telemetry: Path | None = None,
        idle_cpu: bool = False) -> None:
    logging.basicConfig(level=logging.WARNING, format="comparator: %(message)s")
    try:
        import uvloop
    except ImportError:
        asyncio.run(serve(host, port, settings, telemetry, idle_cpu))
    else:
        uvloop.run(serve(host, port, settings, telemetry, idle_cpu))
