"""Request metrics from the data plane: nginx sends one line per request (lua/router.lua, in
batches every 100 ms) and this records them under the Seldon executor's metric names."""

from __future__ import annotations

import logging
from asyncio import StreamReader, StreamWriter

import grpc

from .metrics import RouterMetrics

logger = logging.getLogger("serving.router")

# gRPC status numbers (as sent in grpc-status) to the names the metrics use (OK, NOT_FOUND, ...)
GRPC_CODE_NAMES = {str(c.value[0]): c.name for c in grpc.StatusCode}


class TelemetryReceiver:
    def __init__(self, metrics: RouterMetrics) -> None:
        self.metrics = metrics
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
        fields = line.split()
        if fields and fields[0] == "#dropped":
            self.lost += int(fields[1])
            logger.warning("nginx dropped %s metrics lines (control process too slow)", fields[1])
            return
        try:
            name, version, service, method, code, seconds, retries, fallback_from = fields
            latency = float(seconds)
        except ValueError:
            logger.warning("unreadable metrics line from nginx: %r", line)
            return
        if method == "unary":
            code = GRPC_CODE_NAMES.get(code, "UNKNOWN")
        m = self.metrics
        m.observe(name, version, service, method, code, latency)
        if retries != "0":
            m.retries.labels(m.deployment, name).inc(int(retries))
        if fallback_from != "-":
            m.fallbacks.labels(m.deployment, fallback_from).inc()
