"""Are we at least as fast as the plain FastAPI app a user would write instead? All in one run.

    python -m serving.bench.speed --models models [--duration 8] [--repeat 3] [--out FILE]

Starts, side by side on free loopback ports:
  plain     serving/bench/fastapi_app.py: FastAPI + uvicorn, one process, model.joblib of v1
  defaults  one MLServer on v1 with MLServer's defaults (ServerSettings.mlserver_defaults)
  tuned     one MLServer on v1 with our settings (ServerSettings.tuned), the compiled model
  stack     the local stack (`serving up`) with the chart's stable and canary predictors (v1 x2
            replicas 90%, v2 10%), no shadow, through the router's Seldon path
  floor     a bare nginx (no Lua: no split, no metrics) in front of tuned: what any proxy costs
            on this machine, the floor under the stack's figures (serving.bench.proxy_floor)
and drives single-row REST requests at 1 and 16 connections with wrk (Debian's, installed with
apt-get when missing: a load generator that is not part of the project), servers in turn,
--repeat rounds in alternating order; each figure is the median over the rounds. gRPC (which wrk
does not speak) is measured for defaults and tuned with the project's driver (serving.bench.driver).
Then model compute per row for every version: scikit-learn's predict + predict_proba against the
compiled model's, on one row, with the labels of both compared on the dataset and the proof rows.

Targets, as ratios of this run (per round, then the median over rounds): tuned >= 1.0x plain's req/s at 1 and 16 connections with a p99
no worse; stack >= 0.9x tuned; compiled tree models >= 20x faster per row, identical labels.
The load of the machine (1-minute load average, busy % of all cores) is printed per round: other
work on the machine moves every figure.
"""

from __future__ import annotations

import argparse
import functools
import json
import math
import os
import re
import shutil
import statistics
import subprocess
import sys
import tempfile
import time
from collections.abc import Callable, Iterator
from contextlib import ExitStack, contextmanager
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

import httpx
import numpy as np
import yaml

from .. import artifacts, compiled, dataset
from ..router.stack import start_background, stop_background
from ..server import COMMITTED_VALUES, MLServerProcess, ServerSettings, free_port
from ..spec import load_spec
from ..training import MODEL_NAME
from .driver import Target, run_load
from .mlserver_bench import log, machine_cpu_s, session_cpu_s

VERSION = "v1"
SERVERS = ("plain", "defaults", "tuned", "stack", "floor")
LEVELS = (1, 16)
TREE_VERSIONS = ("v2", "v3")


# --- wrk ------------------------------------------------------------------------------------

@dataclass
class WrkResult:
    rps: float
    p50_ms: float
    p99_ms: float
    requests: int
    errors: int
    """non-2xx answers and socket errors"""
    load1: float
    busy_pct: float
    """all cores, % of the machine, during the run"""
    server_cpu_us: float
    """CPU the server's processes used per request (every process of the stack)"""


def ensure_wrk() -> str:
    found = shutil.which("wrk")
    if found:
        return found
    log("wrk is missing: installing Debian's package (apt-get install wrk)")
    sudo = [] if os.geteuid() == 0 else ["sudo", "-n"]
    subprocess.run(sudo + ["apt-get", "install", "-y", "-q", "wrk"], check=True)
    found = shutil.which("wrk")
    if not found:
        raise SystemExit("wrk is still missing after apt-get install wrk")
    return found


_UNITS_MS = {"us": 0.001, "ms": 1.0, "s": 1000.0, "m": 60000.0}


def _ms(text: str) -> float:
    number, unit = re.fullmatch(r"([\d.]+)(us|ms|s|m)", text).groups()  # type: ignore[union-attr]
    return float(number) * _UNITS_MS[unit]


def parse_wrk(output: str) -> tuple[float, float, float, int, int]:
    """Requests/s, p50 ms, p99 ms, requests and errors from `wrk --latency` output."""
    rps = float(re.search(r"Requests/sec:\s+([\d.]+)", output).group(1))  # type: ignore[union-attr]
    p50 = _ms(re.search(r"^\s+50%\s+(\S+)", output, re.M).group(1))  # type: ignore[union-attr]
    p99 = _ms(re.search(r"^\s+99%\s+(\S+)", output, re.M).group(1))  # type: ignore[union-attr]
    requests = int(re.search(r"(\d+) requests in", output).group(1))  # type: ignore[union-attr]
    errors = 0
    if match := re.search(r"Non-2xx or 3xx responses: (\d+)", output):
        errors += int(match.group(1))
    if match := re.search(r"Socket errors: connect (\d+), read (\d+), write (\d+), timeout (\d+)",
                          output):
        errors += sum(int(g) for g in match.groups())
    return rps, p50, p99, requests, errors


def run_wrk(wrk: str, url: str, body: str, connections: int, duration: float,
            workdir: Path, server_cpu: Callable[[], float] = lambda: math.nan) -> WrkResult:
    script = workdir / "post.lua"
    script.write_text('wrk.method = "POST"\nwrk.headers["Content-Type"] = "application/json"\n'
                      f"wrk.body = [==[{body}]==]\n")  # [[ ]] would end at the rows' ]]
    load1 = os.getloadavg()[0]
    busy0, t0, cpu0 = machine_cpu_s(), time.monotonic(), server_cpu()
    done = subprocess.run(
        [wrk, "-t1", f"-c{connections}", f"-d{duration:g}s", "--latency", "--timeout", "5s",
         "-s", str(script), url], capture_output=True, text=True, check=True)
    busy = (machine_cpu_s() - busy0) / (time.monotonic() - t0) / (os.cpu_count() or 1) * 100
    cpu = server_cpu() - cpu0
    rps, p50, p99, requests, errors = parse_wrk(done.stdout)
    return WrkResult(rps, p50, p99, requests, errors, load1, busy, cpu / max(requests, 1) * 1e6)


# --- the servers ----------------------------------------------------------------------------

def _wait_http(url: str, process: subprocess.Popen[bytes], timeout: float = 60) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if process.poll() is not None:
            raise SystemExit(f"{process.args!r} exited with code {process.returncode}")
        try:
            if httpx.get(url, timeout=1).status_code < 500:
                return
        except httpx.HTTPError:
            pass
        time.sleep(0.2)
    raise SystemExit(f"{url} not ready after {timeout:g}s")


@contextmanager
def plain_app(models: Path, log_path: Path) -> Iterator[tuple[str, int]]:
    port = free_port()
    env = {**os.environ, "SERVING_BENCH_MODEL": str(models / MODEL_NAME / VERSION / "model.joblib")}
    with log_path.open("wb") as out:
        process = subprocess.Popen(
            [str(Path(sys.executable).with_name("uvicorn")), "serving.bench.fastapi_app:app",
             "--host", "127.0.0.1", "--port", str(port), "--workers", "1"],
            env=env, stdout=out, stderr=subprocess.STDOUT, start_new_session=True)
    try:
        _wait_http(f"http://127.0.0.1:{port}/docs", process)
        yield f"http://127.0.0.1:{port}/predict", process.pid
    finally:
        process.terminate()
        process.wait(10)


@contextmanager
def mlserver(models: Path, settings: Callable[..., ServerSettings], log_path: Path,
             digests: dict[str, str]) -> Iterator[MLServerProcess]:
    ports = {"http_port": free_port(), "grpc_port": free_port(), "metrics_port": free_port()}
    server = MLServerProcess(models / MODEL_NAME / VERSION, settings(**ports).with_digests(digests),
                             log_path=log_path)
    with server:
        server.wait_ready([MODEL_NAME])
        yield server


@contextmanager
def stack(models: Path, workdir: Path) -> Iterator[dict[str, Any]]:
    """The chart's predictors without the shadow, router on free ports."""
    values = yaml.safe_load(COMMITTED_VALUES.read_text())
    predictors = [p for p in values["predictors"] if not p.get("shadow")]
    spec = {
        "deployment": values["deployment"],
        "model": {**values["model"], "localRepository": str(models.resolve())},
        "predictors": predictors,
        "router": {"port": 0, "grpcPort": 0},
    }
    (workdir / "values.yaml").write_text(yaml.safe_dump(spec))
    process, state = start_background(workdir / "values.yaml", workdir / "state",
                                      workdir / "stack.log", new_session=True, timeout=180)
    try:
        yield state
    finally:
        stop_background(process, timeout=60)


@contextmanager
def bare_nginx(upstream: MLServerProcess, workdir: Path) -> Iterator[tuple[int, int]]:
    """proxy_floor's bare nginx in front of `upstream`: (REST port, pid)."""
    from ..router.dataplane import nginx_executable
    from .proxy_floor import nginx_bare_config, wait_for_port

    workdir.mkdir()
    rest_port = free_port()
    settings = upstream.settings
    (workdir / "nginx.conf").write_text(nginx_bare_config(
        workdir, f"127.0.0.1:{settings.http_port}", f"127.0.0.1:{settings.grpc_port}",
        rest_port, free_port()))
    process = subprocess.Popen([nginx_executable(), "-p", str(workdir), "-c",
                                str(workdir / "nginx.conf")], start_new_session=True)
    try:
        wait_for_port(rest_port, process)
        yield rest_port, process.pid
    finally:
        process.terminate()
        process.wait(10)


# --- model compute per row ------------------------------------------------------------------

@dataclass
class ComputeRow:
    version: str
    estimator: str
    sklearn_us: float
    compiled_us: float | None
    speedup: float | None
    identical_labels: bool | None
    rows_compared: int
    note: str


def per_call_us(call: Callable[[], object], budget_s: float = 1.0, least: int = 20) -> float:
    """Median wall time of one call, over at least `least` calls or `budget_s` seconds."""
    times: list[float] = []
    started = time.perf_counter()
    while len(times) < least or time.perf_counter() - started < budget_s:
        t = time.perf_counter()
        call()
        times.append(time.perf_counter() - t)
        if len(times) >= 20000:
            break
    return statistics.median(times) * 1e6


def compute_per_row(models: Path, digests: dict[str, str]) -> list[ComputeRow]:
    data = dataset.load()
    every = np.vstack([data.x_train, data.x_test])
    row = data.x_test[:1]
    outputs = ("predict", "predict_proba")
    table = []
    for meta in artifacts.list_versions(models):
        folder = models / meta.model / meta.version
        _, estimator = artifacts.load_verified(folder, digests)
        _, predictor = artifacts.load_verified_predictor(folder, digests)
        reference = compiled.SklearnPredictor(estimator)
        sk_us = per_call_us(lambda r=reference: r.answer(row, outputs))  # type: ignore[misc]
        if predictor.kind != "onnxruntime":
            table.append(ComputeRow(meta.version, meta.estimator, sk_us, None, None, None, 0,
                                    predictor.reason or ""))
            continue
        c_us = per_call_us(lambda p=predictor: p.answer(row, outputs))  # type: ignore[misc]
        proof = compiled.proof_rows(estimator, every)
        same = all(np.array_equal(predictor.predict(x), estimator.predict(x))
                   for x in proof.values())
        table.append(ComputeRow(meta.version, meta.estimator, sk_us, c_us, sk_us / c_us, same,
                                sum(len(x) for x in proof.values()),
                                f"onnxruntime, {meta.compiled.input_type}"  # type: ignore[union-attr]
                                ))
    return table


# --- the run --------------------------------------------------------------------------------

def _body_v2(row: list[float]) -> str:
    return json.dumps({"inputs": [{"name": artifacts.INPUT_NAME, "datatype": "FP64",
                                   "shape": [1, len(row)], "data": row}]})


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--models", type=Path, default=Path("models"))
    parser.add_argument("--duration", type=float, default=5.0)
    parser.add_argument("--repeat", type=int, default=5)
    parser.add_argument("--servers", default=",".join(SERVERS))
    parser.add_argument("--grpc", action=argparse.BooleanOptionalAction, default=True)
    parser.add_argument("--out", type=Path)
    args = parser.parse_args(argv)
    servers = [s for s in args.servers.split(",") if s]
    wrk = ensure_wrk()
    digests = dict(load_spec(COMMITTED_VALUES).model.artifacts)
    row = dataset.sample_rows(1, seed=5).ravel().tolist()
    results: dict[tuple[str, int], list[WrkResult]] = {}
    grpc: dict[tuple[str, int], list[Any]] = {}
    with tempfile.TemporaryDirectory(prefix="speed-bench-") as tmp, ExitStack() as running:
        work = Path(tmp)
        urls: dict[str, tuple[str, str]] = {}
        cpu: dict[str, Callable[[], float]] = {}
        grpc_targets: dict[str, Target] = {}
        if "plain" in servers:
            url, pid = running.enter_context(plain_app(args.models, work / "plain.log"))
            urls["plain"] = (url, json.dumps({"rows": [row]}))
            cpu["plain"] = functools.partial(session_cpu_s, pid)
        for name, factory in (("defaults", ServerSettings.mlserver_defaults),
                              ("tuned", ServerSettings.tuned)):
            if name in servers:
                server = running.enter_context(
                    mlserver(args.models, factory, work / f"{name}.log", digests))
                urls[name] = (f"{server.rest_url}/v2/models/{MODEL_NAME}/infer", _body_v2(row))
                grpc_targets[name] = Target.grpc(server.grpc_target, MODEL_NAME)
                cpu[name] = functools.partial(session_cpu_s, server.process.pid)  # type: ignore[union-attr]
                if name == "tuned" and "floor" in servers:
                    port, nginx_pid = running.enter_context(bare_nginx(server, work / "floor"))
                    urls["floor"] = (f"http://127.0.0.1:{port}/v2/models/{MODEL_NAME}/infer",
                                     _body_v2(row))
                    server_pid = server.process.pid  # type: ignore[union-attr]
                    cpu["floor"] = functools.partial(
                        lambda a, b: session_cpu_s(a) + session_cpu_s(b), server_pid, nginx_pid)
        if "stack" in servers:
            (work / "stack").mkdir()
            state = running.enter_context(stack(args.models, work / "stack"))
            urls["stack"] = (f"{state['seldonUrl'].rstrip('/')}/v2/models/{MODEL_NAME}/infer",
                             _body_v2(row))
            status = httpx.get(state["restUrl"] + "/admin/status").json()
            sessions = [int(state["pid"])] + [int(r["pid"]) for p in status["predictors"]
                                              for r in p["replicas"]]
            cpu["stack"] = lambda: sum(session_cpu_s(s) for s in sessions)
        for name, (url, body) in urls.items():  # warm-up, and a check that each one answers
            warm = run_wrk(wrk, url, body, 16, 2, work)
            if warm.errors or not warm.requests:
                raise SystemExit(f"{name} ({url}) answered {warm.errors} errors while warming up")
        for round_ in range(args.repeat):
            order = list(urls) if round_ % 2 == 0 else list(urls)[::-1]
            for c in LEVELS:
                for name in order:
                    url, body = urls[name]
                    r = run_wrk(wrk, url, body, c, args.duration, work, cpu[name])
                    log(f"round {round_ + 1} {name:<8} c={c:<3} {r.rps:8.0f} req/s "
                        f"p50 {r.p50_ms:6.2f} ms p99 {r.p99_ms:6.2f} ms errors {r.errors} "
                        f"server cpu {r.server_cpu_us:.0f} us/req "
                        f"(load {r.load1:.1f}, machine {r.busy_pct:.0f}% busy)")
                    results.setdefault((name, c), []).append(r)
            if args.grpc:
                rows = dataset.sample_rows(1, seed=5)
                for c in LEVELS:
                    for name, target in grpc_targets.items():
                        g = run_load(target, c, args.duration, 1.0, rows)
                        log(f"round {round_ + 1} {name:<8} grpc c={c:<3} {g.rps:8.0f} req/s "
                            f"p50 {g.p50_ms:6.2f} ms p99 {g.p99_ms:6.2f} ms errors {g.errors}")
                        grpc.setdefault((name, c), []).append(g)
    log("model compute per row ...")
    compute = compute_per_row(args.models, digests)
    text, summary = report(args, results, grpc, compute)
    print(text)
    if args.out:
        if args.out.suffix == ".json":
            args.out.write_text(json.dumps({
                "summary": summary,
                "rest": {f"{n}/{c}": [asdict(r) for r in rs] for (n, c), rs in results.items()},
                "grpc": {f"{n}/{c}": [r.as_dict() for r in rs] for (n, c), rs in grpc.items()},
                "compute": [asdict(c) for c in compute]}, indent=2))
        else:
            args.out.write_text(text + "\n")
    return 0 if not summary["misses"] else 1


def _median(runs: list[Any], metric: str) -> float:
    return float(statistics.median(getattr(r, metric) for r in runs))


def report(args: argparse.Namespace, results: dict[tuple[str, int], list[WrkResult]],
           grpc: dict[tuple[str, int], list[Any]],
           compute: list[ComputeRow]) -> tuple[str, dict[str, Any]]:
    every = [r for rs in results.values() for r in rs]
    loads = [r.load1 for r in every] or [float("nan")]
    busy = [r.busy_pct for r in every] or [float("nan")]
    lines = [
        f"speed benchmark: {os.cpu_count()} cores, wrk 1 thread, {args.duration:g}s per run, "
        f"median of {args.repeat} rounds; single-row REST requests",
        f"machine load during the runs: 1-min load average median {statistics.median(loads):.1f} "
        f"(max {max(loads):.1f}); all cores busy {statistics.median(busy):.0f}% median "
        f"(max {max(busy):.0f}%), this benchmark included",
        "",
        "| server | conns | req/s | p50 ms | p99 ms | server CPU us/req | errors |",
        "|---|---:|---:|---:|---:|---:|---:|",
    ]
    for c in LEVELS:
        for name in SERVERS:
            if (name, c) in results:
                runs = results[(name, c)]
                lines.append(f"| {name} | {c} | {_median(runs, 'rps'):.0f} | "
                             f"{_median(runs, 'p50_ms'):.2f} | {_median(runs, 'p99_ms'):.2f} | "
                             f"{_median(runs, 'server_cpu_us'):.0f} | "
                             f"{sum(r.errors for r in runs)} |")
    if grpc:
        lines += ["", "gRPC (the project's driver: wrk speaks HTTP only)", "",
                  "| server | conns | req/s | p50 ms | p99 ms | errors |",
                  "|---|---:|---:|---:|---:|---:|"]
        for c in LEVELS:
            for name in ("defaults", "tuned"):
                if (name, c) in grpc:
                    runs = grpc[(name, c)]
                    lines.append(f"| {name} | {c} | {_median(runs, 'rps'):.0f} | "
                                 f"{_median(runs, 'p50_ms'):.2f} | {_median(runs, 'p99_ms'):.2f} "
                                 f"| {sum(r.errors for r in runs)} |")
    lines += ["", "model compute per row (predict + predict_proba, one row, median):", "",
              "| version | estimator | scikit-learn us | compiled us | speedup | identical "
              "labels | how |", "|---|---|---:|---:|---:|---|---|"]
    for row in compute:
        lines.append(
            f"| {row.version} | {row.estimator} | {row.sklearn_us:.0f} | "
            + (f"{row.compiled_us:.1f} | {row.speedup:.0f}x | {row.identical_labels} on "
               f"{row.rows_compared} rows" if row.compiled_us else "- | - | -")
            + f" | {row.note[:90]} |")
    checks: list[tuple[str, float, float, bool]] = []  # what, value, target, met

    def ratio(a: str, b: str, c: int, metric: str = "rps") -> float | None:
        """Median over the rounds of a's figure over b's in the same round (measured minutes
        apart at most, so the machine's load moves both alike more than across rounds)."""
        if (a, c) not in results or (b, c) not in results:
            return None
        return float(statistics.median(
            getattr(x, metric) / getattr(y, metric)
            for x, y in zip(results[(a, c)], results[(b, c)], strict=True)))

    efficiency = []  # not a target: CPU per request moves less with the machine's load
    for c in LEVELS:
        if (value := ratio("plain", "tuned", c, "server_cpu_us")) is not None:
            efficiency.append(f"plain / tuned server CPU per request, {c} conns: {value:.2f}")
        if (value := ratio("stack", "tuned", c, "server_cpu_us")) is not None:
            efficiency.append(f"stack / tuned server CPU per request, {c} conns: {value:.2f}")
        if (value := ratio("tuned", "plain", c)) is not None:
            checks.append((f"tuned / plain req/s, {c} conns", value, 1.0, value >= 1.0))
        if (value := ratio("tuned", "plain", c, "p99_ms")) is not None:
            checks.append((f"tuned / plain p99, {c} conns (lower is better)", value, 1.0,
                           value <= 1.0))
        if (value := ratio("stack", "tuned", c)) is not None:
            checks.append((f"stack / tuned req/s, {c} conns", value, 0.9, value >= 0.9))
        if (value := ratio("floor", "tuned", c)) is not None:  # context, not a target
            efficiency.append(f"floor (bare nginx in front of tuned) / tuned req/s, {c} conns: "
                              f"{value:.2f}; stack / floor: {ratio('stack', 'floor', c) or math.nan:.2f}")
    for row in compute:
        if row.version in TREE_VERSIONS:
            met = bool(row.speedup and row.speedup >= 20 and row.identical_labels)
            checks.append((f"{row.version} compiled speedup per row, identical labels",
                           row.speedup or 0.0, 20.0, met))
    lines += ["", "targets (ratios of this run: the median over rounds of each round's ratio):",
              "", "| check | value | target | met |",
              "|---|---:|---:|---|"]
    lines += [f"| {what} | {value:.2f} | {target:g} | {'yes' if met else 'NO'} |"
              for what, value, target, met in checks]
    lines += ["", "context: what a proxy costs, and CPU per request (median of per-round ratios):",
              ""]
    lines += [f"- {line}" for line in efficiency]
    misses = [what for what, _, _, met in checks if not met]
    return "\n".join(lines), {"checks": [
        {"check": w, "value": v, "target": t, "met": m} for w, v, t, m in checks],
        "misses": misses}


if __name__ == "__main__":
    sys.exit(main())
