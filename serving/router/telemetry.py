"""Request metrics from the data plane: nginx sends one line per request (lua/router.lua, in
batches every 100 ms) and this records them under the Seldon executor's metric names. The shadow
worker sends the same lines for its calls, plus its counts and comparisons (shadow_worker.py)."""

from __future__ import annotations

import logging
from asyncio import StreamReader, StreamWriter

import grpc

from .metrics import RouterMetrics
from .shadow import ShadowLedger

logger = logging.getLogger("serving.router")

# gRPC status numbers (as sent in grpc-status) to the names the metrics use (OK, NOT_FOUND, ...)
GRPC_CODE_NAMES = {str(c.value[0]): c.name for c in grpc.StatusCode}


class TelemetryReceiver:
    def __init__(self, metrics: RouterMetrics, ledger: ShadowLedger) -> None:
        self.metrics = metrics
        self.ledger = ledger
        self.lost = 0

    async def handle(self, reader: StreamReader, writer: StreamWriter) -> None:
        try:
            while line := await reader.readline():
                self.record(line.decode())
        except ConnectionError:
            pass
        finally:
            writer.close()

    def record(self, line: str) -> None:
        """`predictor version service method code seconds retries fallback_from` (or
        `#dropped n` when nginx's buffer overflowed because this process did not keep up)."""
        if line.startswith("#"):
            self.record_report(line)
            return
        fields = line.split()
        try:
            name, version, service, method, code, seconds, retries, fallback_from = fields
            latency = float(seconds)
        except ValueError:
            logger.warning("unreadable metrics line from nginx: %r", line)
            return
        if method == "unary" and code.isdigit():
            code = GRPC_CODE_NAMES.get(code, "UNKNOWN")
        m = self.metrics
        m.observe(name, version, service, method, code, latency)
        if retries != "0":
            m.retries.labels(m.deployment, name).inc(int(retries))
        if fallback_from != "-":
            m.fallbacks.labels(m.deployment, fallback_from).inc()

    def record_report(self, line: str) -> None:
        kind, _, rest = line.partition(" ")
        try:
            if kind == "#dropped":  # nginx's buffer overflowed: this process did not keep up
                self.lost += int(rest)
                logger.warning("nginx dropped %s metrics lines (control process too slow)", rest)
            elif kind == "#shadow":
                shadow, outcome, n, *reason = rest.split()
                self.ledger.count(shadow, outcome, int(n), reason[0] if reason else "")
            elif kind == "#compared":
                shadow, primary, requests, rows, agreed = rest.split()
                self.ledger.compared(shadow, primary, int(requests), int(rows), int(agreed))
            elif kind == "#disagreed":
                shadow, primary, detail = rest.split(" ", 2)
                self.ledger.stats.example(primary, detail.strip())
            elif kind == "#in_flight":
                self.ledger.in_flight = int(rest)
        except ValueError:
            logger.warning("unreadable report line: %r", line)
