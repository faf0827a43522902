"""Requests/s and p50/p99 of one MLServer: MLServer's defaults against `ServerSettings.tuned()`.

    python -m serving.bench.mlserver_bench --models models [--duration 10] [--out FILE]

Starts one MLServer at a time (breast-cancer v1 only, free loopback ports) with each chosen
settings, and runs single-row REST and gRPC requests at 1 and 16 concurrent clients against it,
with the closed-loop driver in this process (serving.bench.driver). Prints one table with the
figures and one with the ratios of every other settings to MLServer's defaults, all from the same
run. `--out x.json` also writes every measurement as JSON, any other name a markdown report.

The CPU columns are percent of one core during each measurement window (the machine has
`os.cpu_count()` cores, so 100% x cores is all of it): `server` is MLServer's process group,
`driver` this process, `other` whatever else ran on the machine meanwhile (noise: figures taken
while `other` is high are not comparable).

`--settings` picks from SETTINGS, e.g. `--settings defaults,tuned,inproc,batch-5ms` to try
alternatives; `--repeat N` alternates the servers N times and reports medians.
"""

from __future__ import annotations

import argparse
import functools
import json
import math
import os
import platform
import statistics
import sys
import tempfile
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from importlib.metadata import version as installed_version
from pathlib import Path
from typing import Any

from ..client import RestClient
from ..dataset import sample_rows
from ..errors import ServingError
from ..server import MLServerProcess, ServerSettings, free_port
from ..training import MODEL_NAME
from .driver import LoadResult, Protocol, Target, run_load

VERSION = "v1"


def _settings(**fields: Any) -> Callable[..., ServerSettings]:
    return lambda **ports: ServerSettings(**fields, **ports)


#: name -> factory(**ports). "defaults" is the baseline every other one is compared with.
SETTINGS: dict[str, Callable[..., ServerSettings]] = {
    "defaults": ServerSettings.mlserver_defaults,
    "tuned": ServerSettings.tuned,
    # alternatives, to check that tuned() is the better choice
    "inproc": _settings(parallel_workers=0),
    "inproc-batch-0.1ms": _settings(parallel_workers=0, max_batch_size=32, max_batch_time=0.0001),
    "inproc-batch-0.5ms": _settings(parallel_workers=0, max_batch_size=32, max_batch_time=0.0005),
    "inproc-batch-1ms": _settings(parallel_workers=0, max_batch_size=32, max_batch_time=0.001),
    "inproc-batch-5ms": _settings(parallel_workers=0, max_batch_size=32, max_batch_time=0.005),
    "inproc-batch8-1ms": _settings(parallel_workers=0, max_batch_size=8, max_batch_time=0.001),
    "worker-batch-1ms": _settings(parallel_workers=1, max_batch_size=32, max_batch_time=0.001),
    "2workers": _settings(parallel_workers=2),
}


@dataclass
class Measurement:
    settings: str
    protocol: Protocol
    concurrency: int
    runs: list[LoadResult] = field(default_factory=list)

    def median(self, metric: str) -> float:
        values = [float(getattr(r, metric)) for r in self.runs]
        return statistics.median(values) if values else math.nan

    def cpu_pct(self, who: str) -> float:
        values = [_cpu_pct(r, who) for r in self.runs]
        return statistics.median(values) if values else math.nan

    def noisy_runs(self) -> int:
        """Runs during which other processes used more than QUIET_PCT of a core."""
        return sum(_cpu_pct(r, "other") > QUIET_PCT for r in self.runs)

    @property
    def errors(self) -> int:
        return sum(r.errors for r in self.runs)


def _cpu_pct(result: LoadResult, who: str) -> float:
    """CPU of `who` ("server", "driver", "machine" or "other") in % of one core."""
    cpu = result.cpu_s
    if who == "other":
        # the kernel's machine-wide counters are sampled per tick, the per-process ones are not:
        # the difference is a few % noisy, so a small negative means none
        used = cpu.get("machine", math.nan) - cpu.get("server", math.nan) - result.driver_cpu_s
        used = used if math.isnan(used) else max(0.0, used)
    else:
        used = cpu.get(who, math.nan)
    return used / result.duration_s * 100


# --- CPU accounting from /proc (Linux); the columns show "n/a" elsewhere ---------------------

CLOCK_TICKS = os.sysconf("SC_CLK_TCK") if hasattr(os, "sysconf") else 100
#: CPU (% of one core) used by other processes above which a measurement is flagged as noisy
QUIET_PCT = 20.0


def session_cpu_s(session_id: int) -> float:
    """CPU seconds used so far by every live process of a session (MLServer and its workers)."""
    total = 0
    for stat in Path("/proc").glob("[0-9]*/stat"):
        try:
            text = stat.read_text()
        except OSError:
            continue
        fields = text[text.rindex(")") + 2 :].split()  # fields from 'state' on
        if int(fields[3]) == session_id:  # field 6, session
            total += int(fields[11]) + int(fields[12])  # fields 14-15, utime and stime
    return total / CLOCK_TICKS


def machine_cpu_s() -> float:
    """CPU seconds all cores spent busy so far (user, nice, system, irq, softirq, steal)."""
    user, nice, system, _idle, _iowait, irq, softirq, steal = (
        int(v) for v in Path("/proc/stat").read_text().split("\n", 1)[0].split()[1:9]
    )
    return (user + nice + system + irq + softirq + steal) / CLOCK_TICKS


def wait_for_quiet(max_wait_s: float) -> None:
    """Wait (at most `max_wait_s`) until the rest of the machine uses < QUIET_PCT of a core."""
    if max_wait_s <= 0 or not Path("/proc/stat").exists():
        return
    started = time.monotonic()
    while True:
        before = machine_cpu_s()
        time.sleep(1.0)
        busy = (machine_cpu_s() - before) * 100
        waited = time.monotonic() - started
        if busy < QUIET_PCT:
            if waited > 2:
                log(f"machine quiet after {waited:.0f}s")
            return
        if waited > max_wait_s:
            log(f"machine still busy ({busy:.0f}% of a core) after {waited:.0f}s, measuring")
            return
        if waited < 2:
            log(f"machine busy ({busy:.0f}% of a core used by other processes), waiting")
        time.sleep(2.0)


def measure_quietly(run: Callable[[], LoadResult], wait_quiet_s: float) -> LoadResult:
    """With a quiet budget: wait for quiet, and measure again (up to 3 times in all) when other
    processes got busy during the run; keeps the least disturbed result. Without: run once."""
    best: LoadResult | None = None
    for attempt in range(1, 4 if wait_quiet_s > 0 else 2):
        wait_for_quiet(wait_quiet_s)
        result = run()
        if best is None or _cpu_pct(result, "other") < _cpu_pct(best, "other"):
            best = result
        other = _cpu_pct(result, "other")
        if not other > QUIET_PCT or attempt == 3 or wait_quiet_s <= 0:
            break
        log(f"other processes used {other:.0f}% of a core during the run; measuring again")
    assert best is not None
    return best


def cpu_probes(server: MLServerProcess) -> dict[str, Callable[[], float]]:
    if not Path("/proc/stat").exists() or server.process is None:
        return {}
    pid = server.process.pid  # started with start_new_session: its session id is its pid
    return {"server": lambda: session_cpu_s(pid), "machine": machine_cpu_s}


# --- running -----------------------------------------------------------------------------------


def describe(name: str) -> str:
    s = SETTINGS[name]()
    batching = (
        f"max_batch_size={s.max_batch_size}, max_batch_time={s.max_batch_time * 1000:g}ms"
        if s.max_batch_size > 1
        else "batching off"
    )
    return f"parallel_workers={s.parallel_workers}, {batching}"


def log(message: str) -> None:
    print(message, file=sys.stderr, flush=True)


def bench_one_server(
    name: str,
    model_dir: Path,
    log_dir: Path,
    protocols: list[Protocol],
    concurrencies: list[int],
    duration_s: float,
    warmup_s: float,
    wait_quiet_s: float,
    results: dict[tuple[str, str, int], Measurement],
) -> None:
    settings = SETTINGS[name](
        http_port=free_port(), grpc_port=free_port(), metrics_port=free_port()
    )
    log_path = log_dir / f"mlserver-{name}.log"
    log(f"[{name}] starting MLServer ({describe(name)}), log {log_path}")
    with MLServerProcess(model_dir, settings, log_path=log_path) as server:
        server.wait_ready([MODEL_NAME])
        check = RestClient(server.rest_url)
        try:
            answer = check.infer(MODEL_NAME, sample_rows(1))
        finally:
            check.close()
        if answer.model_version != VERSION:
            raise ServingError(f"expected {MODEL_NAME} {VERSION}, got {answer.model_version}")
        rows = sample_rows(512, seed=7)
        probes = cpu_probes(server)
        for protocol in protocols:
            target = (
                Target.rest(server.rest_url, MODEL_NAME)
                if protocol == "rest"
                else Target.grpc(server.grpc_target, MODEL_NAME)
            )
            for concurrency in concurrencies:
                run = functools.partial(
                    run_load, target, concurrency, duration_s, warmup_s, rows, 1, probes
                )
                result = measure_quietly(run, wait_quiet_s)
                results.setdefault(
                    (name, protocol, concurrency), Measurement(name, protocol, concurrency)
                ).runs.append(result)
                log(
                    f"[{name}] {protocol:4} x{concurrency:<3} {result.rps:7.0f} req/s  "
                    f"p50 {result.p50_ms:6.2f} ms  p99 {result.p99_ms:6.2f} ms  "
                    f"errors {result.errors}  other cpu {_pct(_cpu_pct(result, 'other'))}"
                )
    log(f"[{name}] stopped")


# --- reporting -----------------------------------------------------------------------------------


def _pct(value: float) -> str:
    return "n/a" if math.isnan(value) else f"{value:.0f}%"


def _ratio(a: float, b: float) -> str:
    return "n/a" if not b or math.isnan(a) or math.isnan(b) else f"{a / b:.2f}x"


def figures_table(measurements: list[Measurement]) -> str:
    lines = [
        "| settings | protocol | clients | req/s | p50 ms | p99 ms | errors "
        "| server cpu | driver cpu | other cpu |",
        "|---|---|---:|---:|---:|---:|---:|---:|---:|---:|",
    ]
    for m in measurements:
        other = m.cpu_pct("other")
        lines.append(
            f"| {m.settings} | {m.protocol} | {m.concurrency} | {m.median('rps'):.0f} "
            f"| {m.median('p50_ms'):.2f} | {m.median('p99_ms'):.2f} | {m.errors} "
            f"| {_pct(m.cpu_pct('server'))} | {_pct(m.cpu_pct('driver'))} | {_pct(other)} |"
        )
    return "\n".join(lines)


def ratios_table(results: dict[tuple[str, str, int], Measurement]) -> str:
    lines = [
        "| settings / defaults | protocol | clients | req/s | p50 | p99 |",
        "|---|---|---:|---:|---:|---:|",
    ]
    for (name, protocol, concurrency), m in results.items():
        base = results.get(("defaults", protocol, concurrency))
        if name == "defaults" or base is None:
            continue
        lines.append(
            f"| {name} | {protocol} | {concurrency} "
            f"| {_ratio(m.median('rps'), base.median('rps'))} "
            f"| {_ratio(m.median('p50_ms'), base.median('p50_ms'))} "
            f"| {_ratio(m.median('p99_ms'), base.median('p99_ms'))} |"
        )
    return "\n".join(lines) if len(lines) > 2 else ""


def header(args: argparse.Namespace, names: list[str]) -> str:
    lines = [
        f"MLServer {installed_version('mlserver')}, model {MODEL_NAME} {VERSION}, single-row "
        f"requests, closed loop, {args.duration:g}s measured after {args.warmup:g}s warm-up, "
        f"{os.cpu_count()} cores ({platform.machine()}), driver in one process (asyncio); "
        + (f"medians of {args.repeat} runs" if args.repeat > 1 else "one run each")
        + "; cpu = % of one core",
    ]
    lines += [f"- {name}: {describe(name)}" for name in names]
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(
        prog="python -m serving.bench.mlserver_bench",
        description="Requests/s and p50/p99 of one MLServer, MLServer's defaults vs tuned.",
    )
    parser.add_argument("--models", type=Path, required=True, help="root written by `train`")
    parser.add_argument("--duration", type=float, default=10.0, help="measured seconds per run")
    parser.add_argument("--warmup", type=float, default=2.0, help="unmeasured seconds per run")
    parser.add_argument("--out", type=Path, help="also write results (.json, else markdown)")
    parser.add_argument(
        "--settings",
        default="defaults,tuned",
        help=f"comma-separated, from: {', '.join(SETTINGS)} (default: defaults,tuned)",
    )
    parser.add_argument("--protocols", default="rest,grpc")
    parser.add_argument("--concurrency", default="1,16", help="concurrent clients per run")
    parser.add_argument("--repeat", type=int, default=1, help="alternate the servers N times")
    parser.add_argument(
        "--wait-quiet",
        type=float,
        default=0.0,
        metavar="SECONDS",
        help=f"before each run, wait up to SECONDS for other processes to use < {QUIET_PCT:g}%% "
        "of a core, and measure a run again (3 times at most) if they did not stay quiet "
        "(default 0: measure once, whatever the machine is doing)",
    )
    args = parser.parse_args(argv)

    names = [n.strip() for n in args.settings.split(",") if n.strip()]
    unknown = [n for n in names if n not in SETTINGS]
    if unknown:
        parser.error(f"unknown settings {unknown}; choose from {list(SETTINGS)}")
    protocols: list[Protocol] = []
    for p in args.protocols.split(","):
        if p not in ("rest", "grpc"):
            parser.error(f"unknown protocol {p!r}")
        protocols.append("rest" if p == "rest" else "grpc")
    concurrencies = [int(c) for c in args.concurrency.split(",")]
    if args.duration <= 0 or args.warmup < 0 or args.repeat < 1 or min(concurrencies) < 1:
        parser.error("need --duration > 0, --warmup >= 0, --repeat >= 1, concurrency >= 1")
    model_dir = args.models / MODEL_NAME / VERSION
    if not (model_dir / "model-settings.json").exists():
        parser.error(f"no {MODEL_NAME} {VERSION} under {args.models}; run `serving train` first")

    started = time.monotonic()
    results: dict[tuple[str, str, int], Measurement] = {}
    with tempfile.TemporaryDirectory(prefix="mlserver-bench-") as tmp:
        try:
            for _ in range(args.repeat):
                for name in names:
                    bench_one_server(
                        name,
                        model_dir,
                        Path(tmp),
                        protocols,
                        concurrencies,
                        args.duration,
                        args.warmup,
                        args.wait_quiet,
                        results,
                    )
        except ServingError as e:
            for path in Path(tmp).glob("*.log"):
                tail = path.read_text(errors="replace").splitlines()[-20:]
                log(f"--- last lines of {path.name}\n" + "\n".join(tail))
            log(f"error: {e.message}")
            return 1

    ordered = [
        results[(n, p, c)]
        for n in names
        for p in protocols
        for c in concurrencies
        if (n, p, c) in results
    ]
    report = "\n\n".join(
        part
        for part in (
            header(args, names),
            figures_table(ordered),
            ratios_table({(m.settings, m.protocol, m.concurrency): m for m in ordered}),
        )
        if part
    )
    noisy = sum(m.noisy_runs() for m in ordered)
    if noisy:
        report += (
            f"\n\nwarning: in {noisy} of {sum(len(m.runs) for m in ordered)} runs other processes "
            f"used more than {QUIET_PCT:g}% of a core (column 'other cpu'); those figures are "
            "not comparable. Re-run on a quieter machine (--wait-quiet 120 waits for one and "
            "measures disturbed runs again)."
        )
    print(report)
    failed = [m for m in ordered if m.errors]
    for m in failed:
        samples = sorted({s for r in m.runs for s in r.error_samples})
        log(f"errors in {m.settings} {m.protocol} x{m.concurrency}: {samples}")
    log(f"took {time.monotonic() - started:.0f}s")

    if args.out:
        args.out.parent.mkdir(parents=True, exist_ok=True)
        if args.out.suffix == ".json":
            data = {
                "settings": {
                    n: SETTINGS[n]().model_dump(
                        include={"parallel_workers", "max_batch_size", "max_batch_time"}
                    )
                    for n in names
                },
                "duration_s": args.duration,
                "warmup_s": args.warmup,
                "cpu_count": os.cpu_count(),
                "mlserver": installed_version("mlserver"),
                "results": [
                    {
                        "settings": m.settings,
                        "protocol": m.protocol,
                        "concurrency": m.concurrency,
                        "runs": [r.as_dict() for r in m.runs],
                    }
                    for m in ordered
                ],
            }
            args.out.write_text(json.dumps(data, indent=2) + "\n")
        else:
            args.out.write_text(f"# MLServer benchmark\n\n{report}\n")
        log(f"wrote {args.out}")
    return 1 if failed else 0


if __name__ == "__main__":
    sys.exit(main())
