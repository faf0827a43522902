"""The comparator's speed and memory: events per CPU second, memory with 10,000 pending pairs,
and the lag from an event to its verdict at half the target rate.

    python -m serving.bench.comparator_bench [--requests 5000] [--repeat 3]

The comparator runs as its own process (`serving comparator`) pinned to one core; the events it
takes are made beforehand with the CloudEvents SDK in the executor's format (4 per mirrored
request: the primary's and the shadow's request and answer, half with a shared Seldon-Puid, half
matched by input) and posted over keep-alive connections from this process, pinned to the other
core. Figures:
  events/s per core  events taken / the comparator's CPU seconds (utime + stime from /proc):
                     what one core sustains, whether or not this client could saturate it
  baseline           the same client against a no-op handler on the same aiohttp low-level server
                     (the HTTP floor), in the same run: comparator / baseline is the share of
                     a core's HTTP capacity left after parsing, pairing and comparing
  batched            the same events as CloudEvents JSON batches (the local stack's sender:
                     --batch mirrored requests per batch, per role): events per CPU second
  without HTTP       the same events parsed, paired and compared in this process (no server)
  memory             the comparator's RSS before and with 10,000 pending pairs (primaries that
                     no shadow asked for yet, the common case when mirroring < 100%)
  lag                events at 2,500/s (half the target) for a few seconds: the comparator's
                     seldon_comparator_lag_seconds (ce-time -> verdict), p50 / p99 from buckets
Targets (issue 12): >= 5,000 events/s per core; lag < 1 s at half that rate.
"""

from __future__ import annotations

import argparse
import asyncio
import os
import statistics
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

import aiohttp
import httpx
import numpy as np
import orjson
from cloudevents.core.bindings import http as ce_http
from cloudevents.core.bindings.http import HTTPMessage
from cloudevents.core.v1.event import CloudEvent
from prometheus_client.parser import text_string_to_metric_families

from ..comparator.events import (
    BATCH,
    FORMAT,
    JSON,
    read_batch,
    read_event,
    write_batch,
    write_event,
)
from ..comparator.matching import Comparator, Settings
from ..comparator.process import ComparatorProcess
from ..comparator.sender import BATCH_REQUESTS
from ..dataset import sample_rows
from ..server import free_port

TARGET_EVENTS_PER_CORE = 5000
TARGET_LAG_SECONDS = 1.0
NOOP = """
import asyncio, sys
import uvloop
from aiohttp import web
async def ok(request):
    await request.read()
    return web.Response(status=200)
async def main():
    runner = web.ServerRunner(web.Server(ok), access_log=None)
    await runner.setup()
    await web.TCPSite(runner, "127.0.0.1", int(sys.argv[1])).start()
    await asyncio.Event().wait()
uvloop.run(main())
"""


def events_for(n: int, rows: np.ndarray, deployment: str = "bench",
               first: int = 0) -> list[tuple[str, HTTPMessage]]:
    """4 events per mirrored request, in the order two executors would send them."""
    out = []
    for i in range(first, first + n):
        row = rows[i % len(rows)][None, :]
        request = orjson.dumps({"inputs": [{"name": "input-0", "datatype": "FP64",
                                            "shape": [1, row.shape[1]],
                                            "data": row.reshape(-1).tolist()}]})
        label = int(row[0, 0] > 15)
        answer = orjson.dumps({"model_name": "m", "outputs": [
            {"name": "predict", "datatype": "INT64", "shape": [1, 1], "data": [label]}]})
        puid = f"p{i}"
        shadow_puid = puid if i % 2 else f"s{i}"  # half without a shared Seldon-Puid
        for role, predictor, rid in (("primary", "stable", puid), ("shadow", "shadow",
                                                                   shadow_puid)):
            for kind, body in (("request", request), ("response", answer)):
                out.append((role, write_event(
                    kind, body, JSON, request_id=rid, deployment=deployment,
                    namespace="models", endpoint=predictor, model="m",
                    source=f"http://{predictor}:8000/")))
    return out


def cpu_seconds(pid: int) -> float:
    fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")


def rss_mb(pid: int) -> float:
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith("VmRSS:"):
            return int(line.split()[1]) / 1024
    return float("nan")


async def post_all(url: str, events: list[tuple[str, HTTPMessage]], connections: int,
                   rate: float | None = None) -> float:
    """Post every event; `rate` events/s at most (None: as fast as possible). Seconds taken.
    Each connection posts its share in order (a request's 4 events stay in order)."""
    queue: asyncio.Queue[tuple[str, HTTPMessage]] = asyncio.Queue()
    for e in events:
        queue.put_nowait(e)
    start = time.perf_counter()
    sent = 0

    async def worker(session: aiohttp.ClientSession) -> None:
        nonlocal sent
        while not queue.empty():
            role, m = queue.get_nowait()
            if rate is not None:
                due = start + sent / rate
                sent += 1
                if (wait := due - time.perf_counter()) > 0:
                    await asyncio.sleep(wait)
            async with session.post(f"{url}/events/{role}", headers=m.headers,
                                    data=m.body) as resp:
                await resp.read()

    connector = aiohttp.TCPConnector(limit=connections)
    async with aiohttp.ClientSession(connector=connector) as session:
        await asyncio.gather(*(worker(session) for _ in range(connections)))
    return time.perf_counter() - start


def batches_for(events: list[tuple[str, HTTPMessage]], per_batch: int
                ) -> list[tuple[str, HTTPMessage]]:
    """The same events as CloudEvents JSON batches, as the local stack's sender posts them:
    `per_batch` mirrored requests' events per batch, one batch per role (SDK JSON format)."""
    out = []
    for start in range(0, len(events), per_batch * 4):
        by_role: dict[str, list[Any]] = {}
        for role, m in events[start:start + per_batch * 4]:
            by_role.setdefault(role, []).append(ce_http.from_binary(m, FORMAT, CloudEvent))
        out += [(role, HTTPMessage({"Content-Type": BATCH}, write_batch(batch)))
                for role, batch in by_role.items()]
    return out


def throughput(pid: int, url: str, events: list[tuple[str, HTTPMessage]],
               connections: int, count: int | None = None) -> tuple[float, float]:
    """(events per CPU second of the server, events per wall second); `count` events in all
    when the messages are batches."""
    cpu0 = cpu_seconds(pid)
    seconds = asyncio.run(post_all(url, events, connections))
    cpu = cpu_seconds(pid) - cpu0
    count = len(events) if count is None else count
    return count / max(cpu, 1e-9), count / seconds


def histogram_quantile(url: str, q: float) -> float:
    text = httpx.get(url + "/metrics", timeout=5).text
    buckets = sorted((float(s.labels["le"]), s.value)
                     for f in text_string_to_metric_families(text) for s in f.samples
                     if s.name == "seldon_comparator_lag_seconds_bucket")
    total = buckets[-1][1] if buckets else 0
    for le, count in buckets:
        if count >= q * total:
            return le
    return float("inf")


def lag_run(url: str, rows: np.ndarray, rate: float, seconds: float) -> tuple[float, float,
                                                                              float, float]:
    """Mirrored requests started at `rate`/4 per second, each one's 4 events made just before
    they are posted (ce-time = when an executor would send them), in order, on keep-alive
    connections: (p50 and p99 upper bucket bounds of ce-time -> verdict, seconds from the last
    event to the counter showing it, events/s actually sent)."""
    n = int(rate * seconds / 4)

    async def one(session: aiohttp.ClientSession, i: int) -> None:
        for role, m in events_for(1, rows, "lag", i):
            async with session.post(f"{url}/events/{role}", headers=m.headers,
                                    data=m.body) as resp:
                await resp.read()

    async def run() -> tuple[float, float]:
        limit = asyncio.Semaphore(64)
        tasks = []
        async with aiohttp.ClientSession(connector=aiohttp.TCPConnector(limit=64)) as session:
            start = time.perf_counter()
            for i in range(n):
                if (wait := start + i * 4 / rate - time.perf_counter()) > 0:
                    await asyncio.sleep(wait)

                async def limited(i: int = i) -> None:
                    async with limit:
                        await one(session, i)
                tasks.append(asyncio.ensure_future(limited()))
            await asyncio.gather(*tasks)
            end = time.perf_counter()
        return end, n * 4 / (end - start)

    last, achieved = asyncio.run(run())
    while True:
        text = httpx.get(url + "/metrics", timeout=5).text
        rows_seen = sum(s.value for f in text_string_to_metric_families(text)
                        for s in f.samples if s.name == "seldon_shadow_rows_total"
                        and s.labels.get("deployment_name") == "lag")
        if rows_seen >= n or time.perf_counter() - last > 10:
            break
        time.sleep(0.005)
    visible = time.perf_counter() - last
    return histogram_quantile(url, 0.5), histogram_quantile(url, 0.99), visible, achieved


def in_process(events: list[tuple[str, HTTPMessage]]) -> float:
    """Events per CPU second for the SDK's parse + pairing + comparison alone (no HTTP)."""
    comparator = Comparator(Settings(ttl_seconds=600, max_pending=100_000))
    start = time.process_time()
    for role, m in events:
        comparator.take(read_event(m.headers, m.body), role)
    return len(events) / (time.process_time() - start)


def in_process_batched(batches: list[tuple[str, HTTPMessage]]) -> float:
    """The same for batches: the SDK's JSON format per event + pairing + comparison."""
    comparator = Comparator(Settings(ttl_seconds=600, max_pending=100_000))
    start = time.process_time()
    n = 0
    for role, m in batches:
        for event in read_batch(m.body):
            assert not isinstance(event, Exception), event
            comparator.take(event, role)
            n += 1
    return n / (time.process_time() - start)


def pin(pid: int, cpu: int) -> None:
    if os.cpu_count() and os.cpu_count() >= 2:  # type: ignore[operator]
        os.sched_setaffinity(pid, {cpu})


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m serving.bench.comparator_bench")
    parser.add_argument("--requests", type=int, default=5000,
                        help="mirrored requests per throughput run (4 events each)")
    parser.add_argument("--repeat", type=int, default=3)
    parser.add_argument("--connections", type=int, default=16)
    parser.add_argument("--lag-seconds", type=float, default=6.0)
    parser.add_argument("--batch", type=int, default=BATCH_REQUESTS,
                        help="mirrored requests per batch in the batched runs (the sender's)")
    args = parser.parse_args(argv)
    rows = sample_rows(569)
    print(f"load average {os.getloadavg()[0]:.1f} on {os.cpu_count()} cores "
          "(other work on the machine lowers every figure)")
    comparator = ComparatorProcess(free_port(), Settings(ttl_seconds=600, max_pending=100_000))
    comparator.start()
    noop_port = free_port()
    noop = subprocess.Popen([sys.executable, "-c", NOOP, str(noop_port)])
    pin(os.getpid(), 1)
    try:
        assert comparator.pid is not None
        pin(comparator.pid, 0)
        pin(noop.pid, 0)
        noop_url = f"http://127.0.0.1:{noop_port}"
        deadline = time.monotonic() + 30
        while True:
            try:
                httpx.get(noop_url + "/health/ready", timeout=1)
                break
            except httpx.HTTPError:
                assert time.monotonic() < deadline, "the no-op server did not start"
                time.sleep(0.1)
        events = events_for(args.requests, rows)
        warm = events_for(500, rows, deployment="warm")
        throughput(comparator.pid, comparator.url, warm, args.connections)
        throughput(noop.pid, noop_url, warm, args.connections)
        throughput(comparator.pid, comparator.url, batches_for(warm, args.batch), 2, len(warm))
        per_cpu, per_wall, base_cpu, base_wall, batch_cpu, batch_wall = [], [], [], [], [], []
        for i in range(args.repeat):  # interleaved: comparator, baseline, batched, ...
            run = events_for(args.requests, rows, deployment=f"run{i}")
            c, w = throughput(comparator.pid, comparator.url, run, args.connections)
            per_cpu.append(c)
            per_wall.append(w)
            c, w = throughput(noop.pid, noop_url, run, args.connections)
            base_cpu.append(c)
            base_wall.append(w)
            batched = batches_for(events_for(args.requests, rows, deployment=f"batch{i}"),
                                  args.batch)
            # 2 connections: the sender's two posting tasks
            c, w = throughput(comparator.pid, comparator.url, batched, 2, args.requests * 4)
            batch_cpu.append(c)
            batch_wall.append(w)
        del events
        comp, base = statistics.median(per_cpu), statistics.median(base_cpu)
        alone = statistics.median(in_process(events_for(args.requests, rows, f"in{i}"))
                                  for i in range(args.repeat))
        alone_batched = statistics.median(
            in_process_batched(batches_for(events_for(args.requests, rows, f"inb{i}"),
                                           args.batch)) for i in range(args.repeat))
        batch = statistics.median(batch_cpu)
        print(f"\nthroughput, {args.requests * 4} events per run, median of {args.repeat}:")
        print(f"  comparator  {comp:8.0f} events per CPU second  "
              f"({statistics.median(per_wall):.0f} events/s wall, limited by this client)")
        print(f"  baseline    {base:8.0f} requests per CPU second (no-op aiohttp handler)  "
              f"({statistics.median(base_wall):.0f}/s wall)")
        print(f"  ratio       comparator / baseline = {comp / base:.2f}")
        print(f"  without HTTP {alone:7.0f} events per CPU second (SDK parse + pairing + "
              "comparison in this process): the HTTP server is the larger part of the cost")
        print(f"  batched     {batch:8.0f} events per CPU second  "
              f"({statistics.median(batch_wall):.0f} events/s wall; {args.batch} mirrored "
              f"requests = {args.batch * 2} events per JSON batch, 2 connections)")
        print(f"  ratio       batched / binary = {batch / comp:.2f}")
        print(f"  without HTTP, batched {alone_batched:7.0f} events per CPU second (JSON "
              "format per event + pairing + comparison in this process)")
        print(f"  target      >= {TARGET_EVENTS_PER_CORE} events/s per core: "
              f"{'met' if comp >= TARGET_EVENTS_PER_CORE else 'NOT met'}")

        memory = ComparatorProcess(free_port(), Settings(ttl_seconds=600, max_pending=20_000))
        memory.start()
        try:
            assert memory.pid is not None
            before = rss_mb(memory.pid)
            # primaries only: 10,000 complete pairs waiting for a shadow
            pending = [e for e in events_for(10_000, rows, deployment="mem")
                       if e[0] == "primary"]
            asyncio.run(post_all(memory.url, pending, args.connections))
            after = rss_mb(memory.pid)
            text = httpx.get(memory.url + "/metrics").text
            waiting = sum(s.value for f in text_string_to_metric_families(text)
                          for s in f.samples if s.name == "seldon_comparator_pending"
                          and s.labels.get("what") == "primaries")
        finally:
            memory.stop()
        print(f"\nmemory: RSS {before:.0f} MB idle, {after:.0f} MB with {waiting:.0f} pending "
              f"pairs = {(after - before) * 1024 * 1024 / max(waiting, 1) / 1024:.1f} KiB per "
              "pair (request + answer + index)")

        rate = TARGET_EVENTS_PER_CORE / 2
        p50, p99, visible, achieved = lag_run(comparator.url, rows, rate, args.lag_seconds)
        print(f"\nlag at {rate:.0f} events/s asked ({achieved:.0f}/s sent) for "
              f"{args.lag_seconds:g}s: ce-time -> verdict p50 <= {p50 * 1000:.0f} ms, p99 <= "
              f"{p99 * 1000:.0f} ms (bucket bounds); last event -> visible on /metrics "
              f"{visible * 1000:.0f} ms")
        if achieved < 0.9 * rate:
            print("  (this client could not send the rate asked: the machine is loaded)")
        print(f"  target      < {TARGET_LAG_SECONDS:g} s: "
              f"{'met' if p99 < TARGET_LAG_SECONDS else 'NOT met'}")
        return 0
    finally:
        comparator.stop()
        noop.terminate()
        noop.wait(10)


if __name__ == "__main__":
    sys.exit(main())
