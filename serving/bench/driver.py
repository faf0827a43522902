"""A cheap closed-loop load driver for V2 inference over REST and gRPC.

`concurrency` clients each send one request, wait for the answer, and send the next, for
`warmup_s + duration_s` seconds; only requests that start and finish inside the measurement window
count. Everything runs on one asyncio event loop (uvloop) in the calling process, so on a small
machine the driver costs one process, not one per client:

- REST: one aiohttp session with a keep-alive connection per client, posting JSON bodies that
  were serialised once, up front, from MLServer's own `InferenceRequest` types;
- gRPC: one `grpc.aio` channel (HTTP/2 streams) and MLServer's generated stub, sending
  `ModelInferRequest` protobufs built once, up front, with MLServer's converters.

Targets may be one MLServer or anything in front of it: a REST base URL may carry a path prefix
(http://127.0.0.1:8003/seldon/models/breast-cancer) and extra headers; a gRPC target may carry
extra metadata ({"seldon": "breast-cancer", "namespace": "models"}). Targets must be loopback
addresses: this is a benchmark tool, not a load generator for other people's hosts.

A non-200 answer, an RPC error, a timeout or a connection failure is an error. Latency percentiles
are over successful requests only, and `rps` counts successful requests per second. A transport
failure (connection refused, unavailable) backs the client off 10 ms so a dead target does not
turn the driver into a busy loop.
"""

from __future__ import annotations

import asyncio
import ipaddress
import math
import socket
import time
from collections import Counter
from collections.abc import Awaitable, Callable, Mapping, Sequence
from dataclasses import asdict, dataclass, field
from typing import Any, Literal
from urllib.parse import urlsplit

import numpy as np

from ..client import build_request

Protocol = Literal["rest", "grpc"]

#: how many distinct error messages a result keeps
MAX_ERROR_SAMPLES = 5
#: pause after a transport failure (not after an answer from the server, even an error answer)
TRANSPORT_ERROR_BACKOFF_S = 0.01
#: error kinds that mean "no answer": connection refused or reset, gRPC UNAVAILABLE
TRANSPORT_ERROR_KINDS = frozenset({"connection", "UNAVAILABLE"})

# (ok, error kind, error message): kind is e.g. "HTTP 404" or "NOT_FOUND", message its detail
Outcome = tuple[bool, str, str]


@dataclass(frozen=True)
class Target:
    """Where to send V2 inference requests.

    `address` is a REST base URL (scheme, host, port, optional path prefix) or a gRPC
    `host:port`; `headers` are extra HTTP headers (REST) or call metadata (gRPC).
    """

    protocol: Protocol
    address: str
    model: str
    version: str | None = None
    headers: Mapping[str, str] = field(default_factory=dict)
    timeout_s: float = 10.0

    @classmethod
    def rest(
        cls,
        base_url: str,
        model: str,
        version: str | None = None,
        headers: Mapping[str, str] | None = None,
        timeout_s: float = 10.0,
    ) -> Target:
        return cls("rest", base_url, model, version, dict(headers or {}), timeout_s)

    @classmethod
    def grpc(
        cls,
        address: str,
        model: str,
        version: str | None = None,
        metadata: Mapping[str, str] | None = None,
        timeout_s: float = 10.0,
    ) -> Target:
        return cls("grpc", address, model, version, dict(metadata or {}), timeout_s)

    def __post_init__(self) -> None:
        if self.protocol not in ("rest", "grpc"):
            raise ValueError(f"protocol must be 'rest' or 'grpc', not {self.protocol!r}")
        if self.protocol == "grpc" and any(k != k.lower() for k in self.headers):
            raise ValueError(f"gRPC metadata keys must be lowercase: {list(self.headers)}")
        require_loopback(self.host)

    @property
    def host(self) -> str:
        if self.protocol == "rest":
            parts = urlsplit(self.address)
            if parts.scheme not in ("http", "https") or not parts.hostname:
                raise ValueError(f"REST target needs an http(s) base URL, got {self.address!r}")
            return parts.hostname
        host, sep, port = self.address.rpartition(":")
        if not sep or not port.isdigit():
            raise ValueError(f"gRPC target must be host:port, got {self.address!r}")
        return host.strip("[]")

    @property
    def infer_url(self) -> str:
        version = f"/versions/{self.version}" if self.version else ""
        return f"{self.address.rstrip('/')}/v2/models/{self.model}{version}/infer"

    def describe(self) -> str:
        where = self.infer_url if self.protocol == "rest" else f"grpc://{self.address}"
        return where + (f" {dict(self.headers)}" if self.headers else "")


def require_loopback(host: str) -> None:
    """Refuse any host that is not (or does not resolve only to) a loopback address."""
    try:
        addresses = {ipaddress.ip_address(host)}
    except ValueError:
        try:
            infos = socket.getaddrinfo(host, None)
        except socket.gaierror as e:
            raise ValueError(f"cannot resolve target host {host!r}: {e}") from e
        addresses = {ipaddress.ip_address(info[4][0]) for info in infos}
    if not addresses or not all(a.is_loopback for a in addresses):
        raise ValueError(f"the load driver only targets loopback addresses, not {host!r}")


@dataclass
class LoadResult:
    """What one closed-loop run measured (window = the `duration_s` after the warm-up)."""

    target: str
    protocol: Protocol
    concurrency: int
    duration_s: float
    requests: int  # completed in the window, successful or not
    errors: int
    rps: float  # successful requests per second
    p50_ms: float  # over successful requests; NaN when there were none
    p99_ms: float
    mean_ms: float
    error_kinds: dict[str, int] = field(default_factory=dict)
    error_samples: list[str] = field(default_factory=list)
    # CPU seconds used during the window: "driver" (this process) and any caller-given probes
    cpu_s: dict[str, float] = field(default_factory=dict)
    # every successful request's latency, in completion order: to pool runs before taking
    # percentiles (a p99 of 3 runs' samples is steadier than the median of 3 runs' p99s)
    latencies_ms: np.ndarray = field(default_factory=lambda: np.empty(0), repr=False)

    @property
    def ok(self) -> int:
        return self.requests - self.errors

    @property
    def driver_cpu_s(self) -> float:
        return self.cpu_s.get("driver", math.nan)

    @property
    def driver_cpu_us_per_request(self) -> float:
        return self.driver_cpu_s / self.requests * 1e6 if self.requests else math.nan

    def as_dict(self) -> dict[str, Any]:
        d = asdict(self)
        del d["latencies_ms"]  # thousands of numbers: callers that want them read the field
        d["driver_cpu_us_per_request"] = self.driver_cpu_us_per_request
        return d


def pooled_percentile(runs: Sequence[LoadResult], percentile: float) -> float:
    """A latency percentile over the requests of several runs pooled: steadier than the median
    of the runs' own percentiles. NaN when no request succeeded."""
    latencies = np.concatenate([r.latencies_ms for r in runs]) if runs else np.empty(0)
    return float(np.percentile(latencies, percentile)) if len(latencies) else math.nan


def pooled_cpu_us(runs: Sequence[LoadResult], who: str) -> float:
    """CPU microseconds per request that `who` (a `cpu_s` key) used over several runs."""
    requests = max(sum(r.requests for r in runs), 1)
    return sum(r.cpu_s.get(who, math.nan) for r in runs) / requests * 1e6


class _Recorder:
    """Keeps the outcome of every request that starts and ends inside the window."""

    def __init__(self, start: float, end: float):
        self.start, self.end = start, end
        self.latencies: list[float] = []
        self.requests = 0
        self.kinds: Counter[str] = Counter()
        self.samples: list[str] = []

    def record(self, t0: float, t1: float, outcome: Outcome) -> None:
        if t0 < self.start or t1 > self.end:
            return
        self.requests += 1
        ok, kind, message = outcome
        if ok:
            self.latencies.append(t1 - t0)
            return
        self.kinds[kind] += 1
        sample = f"{kind}: {message}"[:300]
        if len(self.samples) < MAX_ERROR_SAMPLES and sample not in self.samples:
            self.samples.append(sample)


def _requests_from_rows(rows: np.ndarray, rows_per_request: int) -> list[Any]:
    """`mlserver.types.InferenceRequest`s of `rows_per_request` consecutive rows each."""
    rows = np.asarray(rows, dtype=np.float64)
    if rows.ndim != 2 or len(rows) < rows_per_request:
        raise ValueError(f"need a 2-D array of at least {rows_per_request} rows")
    return [
        build_request(rows[i : i + rows_per_request])
        for i in range(0, len(rows) - rows_per_request + 1, rows_per_request)
    ]


async def _closed_loop(
    send: Callable[[int], Awaitable[Outcome]],
    concurrency: int,
    duration_s: float,
    warmup_s: float,
    timeout_s: float,
    cpu_probes: Mapping[str, Callable[[], float]],
) -> tuple[_Recorder, dict[str, float]]:
    loop_start = time.perf_counter()
    recorder = _Recorder(loop_start + warmup_s, loop_start + warmup_s + duration_s)
    probes = {"driver": time.process_time, **cpu_probes}
    cpu: list[dict[str, float]] = []

    async def client(index: int) -> None:
        i = index  # clients walk the request list from different offsets
        while (t0 := time.perf_counter()) < recorder.end:
            outcome = await send(i)
            recorder.record(t0, time.perf_counter(), outcome)
            i += concurrency
            if outcome[1] in TRANSPORT_ERROR_KINDS:
                await asyncio.sleep(TRANSPORT_ERROR_BACKOFF_S)

    async def cpu_meter() -> None:
        await asyncio.sleep(max(0.0, recorder.start - time.perf_counter()))
        cpu.append({name: probe() for name, probe in probes.items()})
        await asyncio.sleep(max(0.0, recorder.end - time.perf_counter()))
        cpu.append({name: probe() for name, probe in probes.items()})

    tasks = [asyncio.create_task(client(n)) for n in range(concurrency)]
    meter = asyncio.create_task(cpu_meter())
    # Bounded: a request that hangs past its own timeout cannot keep the run going.
    done, pending = await asyncio.wait(
        [*tasks, meter], timeout=warmup_s + duration_s + timeout_s + 5.0
    )
    for task in pending:
        task.cancel()
    await asyncio.gather(*pending, return_exceptions=True)
    for task in done:
        if task.exception() is not None:  # a bug in the driver, not an error answer: say so
            raise task.exception()  # type: ignore[misc]
    used = {name: cpu[1][name] - cpu[0][name] for name in probes} if len(cpu) == 2 else {}
    return recorder, used


async def _run_rest(
    target: Target,
    requests: list[Any],
    concurrency: int,
    duration_s: float,
    warmup_s: float,
    cpu_probes: Mapping[str, Callable[[], float]],
) -> tuple[_Recorder, dict[str, float]]:
    import aiohttp

    bodies = [r.model_dump_json(exclude_none=True).encode() for r in requests]
    url = target.infer_url
    headers = {"Content-Type": "application/json", **target.headers}
    connector = aiohttp.TCPConnector(limit=concurrency, ttl_dns_cache=None)
    timeout = aiohttp.ClientTimeout(total=target.timeout_s)
    async with aiohttp.ClientSession(
        connector=connector, timeout=timeout, headers=headers, auto_decompress=False
    ) as session:

        async def send(i: int) -> Outcome:
            try:
                async with session.post(url, data=bodies[i % len(bodies)]) as resp:
                    payload = await resp.read()
                    if resp.status == 200:
                        return True, "", ""
                    return False, f"HTTP {resp.status}", payload[:200].decode(errors="replace")
            except TimeoutError:
                return False, "timeout", f"no answer within {target.timeout_s}s"
            except (aiohttp.ClientError, OSError) as e:
                return False, "connection", f"{type(e).__name__}: {e}"

        return await _closed_loop(
            send, concurrency, duration_s, warmup_s, target.timeout_s, cpu_probes
        )


async def _run_grpc(
    target: Target,
    requests: list[Any],
    concurrency: int,
    duration_s: float,
    warmup_s: float,
    cpu_probes: Mapping[str, Callable[[], float]],
) -> tuple[_Recorder, dict[str, float]]:
    import grpc
    from mlserver.grpc import converters
    from mlserver.grpc.dataplane_pb2_grpc import GRPCInferenceServiceStub

    messages = [
        converters.ModelInferRequestConverter.from_types(
            r, model_name=target.model, model_version=target.version or ""
        )
        for r in requests
    ]
    metadata = tuple(target.headers.items())
    async with grpc.aio.insecure_channel(target.address) as channel:
        stub = GRPCInferenceServiceStub(channel)

        async def send(i: int) -> Outcome:
            try:
                await stub.ModelInfer(
                    messages[i % len(messages)], metadata=metadata, timeout=target.timeout_s
                )
                return True, "", ""
            except grpc.aio.AioRpcError as e:
                return False, e.code().name, e.details() or ""

        return await _closed_loop(
            send, concurrency, duration_s, warmup_s, target.timeout_s, cpu_probes
        )


async def run_load_async(
    target: Target,
    concurrency: int,
    duration_s: float,
    warmup_s: float,
    rows: np.ndarray,
    rows_per_request: int = 1,
    cpu_probes: Mapping[str, Callable[[], float]] | None = None,
) -> LoadResult:
    """`run_load` on the running event loop (for callers that already have one)."""
    if concurrency < 1 or duration_s <= 0 or warmup_s < 0:
        raise ValueError("need concurrency >= 1, duration_s > 0 and warmup_s >= 0")
    requests = _requests_from_rows(rows, rows_per_request)
    run = _run_rest if target.protocol == "rest" else _run_grpc
    rec, cpu_s = await run(target, requests, concurrency, duration_s, warmup_s, cpu_probes or {})
    latencies_ms = np.asarray(rec.latencies) * 1000.0
    if len(latencies_ms):
        p50, p99 = (float(v) for v in np.percentile(latencies_ms, [50, 99]))
        mean = float(latencies_ms.mean())
    else:
        p50 = p99 = mean = math.nan
    errors = sum(rec.kinds.values())
    return LoadResult(
        target=target.describe(),
        protocol=target.protocol,
        concurrency=concurrency,
        duration_s=duration_s,
        requests=rec.requests,
        errors=errors,
        rps=(rec.requests - errors) / duration_s,
        p50_ms=p50,
        p99_ms=p99,
        mean_ms=mean,
        error_kinds=dict(rec.kinds),
        error_samples=rec.samples,
        cpu_s=cpu_s,
        latencies_ms=latencies_ms,
    )


def _loop_factory() -> Callable[[], asyncio.AbstractEventLoop] | None:
    try:
        import uvloop
    except ImportError:  # pragma: no cover - uvloop is a dependency, but keep the driver usable
        return None
    return uvloop.new_event_loop


def run_load(
    target: Target,
    concurrency: int,
    duration_s: float,
    warmup_s: float,
    rows: np.ndarray,
    rows_per_request: int = 1,
    cpu_probes: Mapping[str, Callable[[], float]] | None = None,
) -> LoadResult:
    """Closed loop: `concurrency` clients, `warmup_s` unmeasured, then `duration_s` measured.

    Each request carries `rows_per_request` rows (1 = single-row requests), taken in turn from
    `rows`. `cpu_probes` are read at the start and end of the window (each returns cumulative
    CPU seconds, e.g. of the server's processes); their differences land in `LoadResult.cpu_s`
    next to the driver's own. Returns after about `warmup_s + duration_s` seconds (at most one
    request timeout more). Runs its own event loop, so call it from synchronous code.
    """
    with asyncio.Runner(loop_factory=_loop_factory()) as runner:
        return runner.run(
            run_load_async(
                target, concurrency, duration_s, warmup_s, rows, rows_per_request, cpu_probes
            )
        )
