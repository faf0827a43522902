"""The shadow worker: a process of its own, in the idle CPU class, that calls the shadow with the
mirrored requests nginx hands it and logs both predictors' requests and answers to the
comparator, as Seldon's executors do on a cluster (shadow.py; serving/comparator/sender.py). It
reports back to the control process over the telemetry socket, in the metrics-line format nginx
uses plus (the comparator sends the #compared and #disagreed lines, with the same writer):

    #shadow <shadow> <outcome> <n> [reason]                   sent, dropped, failed, timeout
    #compared <shadow> <primary> <requests> <rows> <agreed>   comparisons since the last report
    #disagreed <shadow> <primary> <detail>                    one example
    #in_flight <n>                                            mirrored requests not finished

    python -m serving.router.shadow_worker --socket S --telemetry T --comparator URL ...
(started by the local stack; `ShadowWorker` is the control process's handle on it)
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import json
import logging
import os
import signal
import subprocess
import sys
import time
from collections import Counter
from pathlib import Path
from typing import Any

import aiohttp

from ..agreement import Comparison
from ..comparator.sender import EventSender
from ..errors import ServingError
from ..server import child_env, child_setup
from ..spec import Shadowing
from .shadow import HandoffConnection, HandoffReceiver, Mirror

logger = logging.getLogger("serving.router")


class TelemetryWriter:
    """Report lines, summed and sent to the control process in one write every 100 ms."""

    def __init__(self, path: Path) -> None:
        self.path = path
        self.lines: list[str] = []
        self.counts: Counter[tuple[str, str, str]] = Counter()
        self.comparisons: dict[tuple[str, str], list[int]] = {}
        self.mirror: Mirror | None = None
        self._writer: asyncio.StreamWriter | None = None

    def count(self, shadow: str, outcome: str, n: int = 1, reason: str = "") -> None:
        self.counts[(shadow, outcome, reason)] += n

    def observe(self, shadow: str, version: str, method: str, code: str, seconds: float,
                n: int = 1) -> None:
        self.lines.extend([f"{shadow} {version} infer {method} {code} {seconds:.6f} 0 -"] * n)

    def compared(self, shadow: str, primary: str, requests: int, result: Comparison) -> None:
        total = self.comparisons.setdefault((shadow, primary), [0, 0, 0])
        total[0] += requests
        total[1] += result.rows
        total[2] += result.agreed
        if result.detail:
            self.lines.append(f"#disagreed {shadow} {primary} {' '.join(result.detail.split())}")

    def _batch(self) -> list[str]:
        batch, self.lines = self.lines, []
        batch += [f"#shadow {s} {o} {n} {r}".rstrip() for (s, o, r), n in self.counts.items()]
        batch += [f"#compared {s} {p} {r} {rows} {agreed}"
                  for (s, p), (r, rows, agreed) in self.comparisons.items()]
        self.counts.clear()
        self.comparisons.clear()
        if self.mirror is not None:
            # not finished until the comparator has its events
            events = self.mirror.events.pending if self.mirror.events is not None else 0
            batch.append(f"#in_flight {self.mirror.in_flight + events}")
        return batch

    async def run(self) -> None:
        while True:
            await asyncio.sleep(0.1)
            batch = self._batch()
            if not batch:  # the comparator's writer, with nothing to report
                continue
            try:
                if self._writer is None:
                    _, self._writer = await asyncio.open_unix_connection(self.path)
                self._writer.write(("\n".join(batch) + "\n").encode())
                await self._writer.drain()
            except OSError as e:
                logger.warning("report lines lost (control process unreachable): %s", e)
                self._writer = None


async def serve(args: argparse.Namespace) -> None:
    report = TelemetryWriter(args.telemetry)
    async with aiohttp.ClientSession(
        connector=aiohttp.TCPConnector(limit=0, keepalive_timeout=60), auto_decompress=False
    ) as session:
        events = EventSender(
            args.comparator, session,
            lambda shadow, n: report.count(shadow, "dropped", n, "events_lost"),
            args.deployment, args.namespace, args.model)
        mirror = Mirror(report, session, args.max_in_flight, args.timeout, args.rtol,
                        args.batch_rows, args.batch_wait, events=events)
        report.mirror = mirror
        receiver = HandoffReceiver(mirror)
        loop = asyncio.get_running_loop()
        server = await loop.create_unix_server(lambda: HandoffConnection(receiver), args.socket)
        # Started at normal priority so that it starts fast on a busy machine; from here on,
        # the idle class (threads started later, gRPC's among them, inherit it).
        os.sched_setscheduler(0, os.SCHED_IDLE, os.sched_param(0))
        flusher = asyncio.create_task(receiver.flush_every(args.handoff_interval))
        stop = asyncio.Event()
        for sig in (signal.SIGTERM, signal.SIGINT):
            loop.add_signal_handler(sig, stop.set)
        reporter = asyncio.create_task(report.run())
        await stop.wait()
        server.close()
        flusher.cancel()
        with contextlib.suppress(TimeoutError):
            await asyncio.wait_for(mirror.drain(), 2)
        await events.close()
        await asyncio.sleep(0.15)  # one last report
        reporter.cancel()


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--socket", type=Path, required=True)
    parser.add_argument("--telemetry", type=Path, required=True)
    parser.add_argument("--max-in-flight", type=int, required=True)
    parser.add_argument("--timeout", type=float, required=True)
    parser.add_argument("--rtol", type=float, required=True)
    parser.add_argument("--batch-rows", type=int, required=True)
    parser.add_argument("--batch-wait", type=float, required=True)
    parser.add_argument("--handoff-interval", type=float, required=True)
    parser.add_argument("--comparator", required=True, help="the comparator's URL")
    parser.add_argument("--deployment", required=True)
    parser.add_argument("--namespace", required=True)
    parser.add_argument("--model", required=True)
    args = parser.parse_args(argv)
    logging.basicConfig(level=logging.WARNING, format="shadow worker: %(message)s")
    try:
        import uvloop

        uvloop.run(serve(args))
    except ImportError:
        asyncio.run(serve(args))
    return 0


class ShadowWorker:
    """The control process's handle on the worker process."""

    def __init__(self, socket: Path, telemetry: Path, settings: Shadowing,
                 hidden_env: tuple[str, ...] = (), *, comparator: str, deployment: str,
                 namespace: str, model: str) -> None:
        self.socket = socket
        self.hidden_env = hidden_env
        """Variables of this process's environment the worker must not inherit (credentials)."""
        self.command = [sys.executable, "-m", "serving.router.shadow_worker",
                        "--socket", str(socket), "--telemetry", str(telemetry),
                        "--max-in-flight", str(settings.max_in_flight),
                        "--timeout", str(settings.timeout_seconds), "--rtol", str(settings.rtol),
                        "--batch-rows", str(settings.batch_rows),
                        "--batch-wait", str(settings.batch_wait_seconds),
                        "--handoff-interval", str(settings.handoff_seconds),
                        "--comparator", comparator, "--deployment", deployment,
                        "--namespace", namespace, "--model", model]
        self.process: subprocess.Popen[bytes] | None = None
        self.restarts = 0
        self._writer: asyncio.StreamWriter | None = None

    def status(self) -> dict[str, int | None]:
        return {"pid": self.pid, "restarts": self.restarts}

    async def start(self, timeout: float = 30.0) -> None:
        with contextlib.suppress(FileNotFoundError):
            self.socket.unlink()
        self._writer = None
        restart = self.process is not None
        # It moves itself to the idle CPU class once it listens (see serve()).
        # Its own process group, like nginx and the model servers: 'serving down' after a
        # crash ends each leftover group without touching the one 'serving up' ran in.
        self.process = subprocess.Popen(self.command, stdin=subprocess.DEVNULL,
                                        env=child_env(self.hidden_env),
                                        preexec_fn=child_setup(0), process_group=0)
        deadline = time.monotonic() + timeout
        while not self.socket.exists():
            if self.process.poll() is not None:
                raise ServingError(f"the shadow worker exited with code "
                                   f"{self.process.returncode} at start")
            if time.monotonic() > deadline:
                self.process.kill()  # so that the supervisor's next tick starts another
                raise ServingError(f"the shadow worker did not start within {timeout:g}s")
            await asyncio.sleep(0.02)
        if restart:  # counted once it listens: status then means mirrored pairs reach it again
            self.restarts += 1

    @property
    def pid(self) -> int | None:
        return self.process.pid if self.process else None

    def alive(self) -> bool:
        return self.process is not None and self.process.poll() is None

    async def push_table(self, table: dict[str, Any]) -> None:
        payload = json.dumps(table).encode()
        try:
            if self._writer is None or self._writer.is_closing():
                _, self._writer = await asyncio.open_unix_connection(self.socket)
            self._writer.write(f"table {len(payload)}\n".encode() + payload)
            await self._writer.drain()
        except (OSError, RuntimeError) as e:
            self._writer = None
            logger.warning("could not send the routing table to the shadow worker: %s", e)

    async def stop(self, grace: float = 5.0) -> None:
        if self._writer is not None:
            self._writer.close()
        if self.process is None or self.process.poll() is not None:
            return
        self.process.terminate()
        try:
            await asyncio.to_thread(self.process.wait, grace)
        except subprocess.TimeoutExpired:
            self.process.kill()
            await asyncio.to_thread(self.process.wait)


if __name__ == "__main__":
    sys.exit(main())
