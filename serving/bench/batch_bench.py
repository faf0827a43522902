"""Batch scoring speed: in-process, through the local stack, and MLServer's own `mlserver infer`.

    python -m serving.bench.batch_bench --models models [--rows 100000] [--memory-rows 1000000]
        [--rows-per-request 1,64,512] [--concurrency 16] [--mlserver-infer 4x16,4x64,16x64,4x512]
        [--out F]

One run, one input of --rows hold-out-like rows (Parquet for us; the same rows as JSON lines,
one V2 request per row, for `mlserver infer`), the same server (the local stack: router + one
stable v1 replica, tuned settings):
  in-process  serving.batch.run.score on one core (pinned; BLAS threads 1), read + predict +
              write, and the model's predict + predict_proba alone
  stack       the same score() through the router over REST and gRPC at each rows-per-request
  mlserver    `mlserver infer` (MLServer 1.7, deprecated) at each workers x batch-size setting,
              its own "Time taken" (start-up excluded, as ours is); the best setting counts
  memory      peak RSS of `serving batch score` (in-process) on a --memory-rows input vs on the
              --rows input: bounded means about the same
Targets: stack >= 5x mlserver infer's best rows/s; in-process >= 200,000 rows/s on one core.
Figures are rows/s of the whole run (reading, scoring, writing the part files and manifest).
"""

from __future__ import annotations

import argparse
import json
import os
import re
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

import yaml

from ..cli_common import DEFAULT_VALUES
from ..router.stack import start_background, stop_background
from ..spec import load_spec
from ..training import MODEL_NAME

ONE_CORE_ENV = {"OMP_NUM_THREADS": "1", "OPENBLAS_NUM_THREADS": "1", "MKL_NUM_THREADS": "1"}


def log(message: str) -> None:
    print(message, file=sys.stderr, flush=True)


def write_inputs(rows: int, folder: Path, jsonl: bool = True) -> tuple[Path, Path | None]:
    """`rows` hold-out rows (sampled with a seed) as Parquet, and as JSON lines of one-row V2
    requests for `mlserver infer`."""
    import orjson
    import pyarrow as pa
    import pyarrow.parquet as pq

    from ..dataset import load, sample_rows

    x = sample_rows(rows, seed=7)
    names = load().feature_names
    parquet = folder / f"input-{rows}.parquet"
    columns: dict[str, Any] = {"claim_id": [f"r{i}" for i in range(rows)]}
    columns |= {n: x[:, j] for j, n in enumerate(names)}
    pq.write_table(pa.table(columns), parquet)
    if not jsonl:
        return parquet, None
    lines = folder / f"input-{rows}.jsonl"
    with lines.open("wb") as f:
        for row in x:
            f.write(orjson.dumps({"inputs": [{"name": "input-0", "datatype": "FP64",
                                              "shape": [1, 30], "data": row.tolist()}]}) + b"\n")
    return parquet, lines


def _in_process_child(values: str, models: str, source: str, out: str, repeat: int) -> None:
    """Runs in a child pinned to one core: prints JSON figures."""
    import numpy as np
    import pyarrow.parquet as pq

    from ..batch.run import Options, score
    from ..batch.scorers import in_process_from_spec

    os.sched_setaffinity(0, {sorted(os.sched_getaffinity(0))[-1]})
    scorer, features, key = in_process_from_spec(values, models)
    x = np.column_stack([pq.read_table(source).column(f).to_numpy() for f in features])
    scorer.score(x[:1000])  # warm-up
    predict, e2e = [], []
    for _ in range(repeat):
        started = time.perf_counter()
        scorer.score(x)
        predict.append(len(x) / (time.perf_counter() - started))
        started = time.perf_counter()
        summary = score(source, out, scorer, features, key, Options(progress=False,
                                                                    overwrite=True))
        e2e.append(summary.rows_scored / (time.perf_counter() - started))
    print(json.dumps({"predict": float(np.median(predict)), "e2e": float(np.median(e2e)),
                      "cores": len(os.sched_getaffinity(0))}))


def in_process(values: str, models: Path, source: Path, work: Path, repeat: int) -> dict[str, Any]:
    code = ("import sys; from serving.bench.batch_bench import _in_process_child as c; "
            "c(*sys.argv[1:5], int(sys.argv[5]))")
    done = subprocess.run([sys.executable, "-c", code, values, str(models), str(source),
                           str(work / "inproc-out"), str(repeat)], capture_output=True,
                          text=True, env={**os.environ, **ONE_CORE_ENV}, check=False)
    if done.returncode != 0:
        raise RuntimeError(done.stderr[-2000:])
    return dict(json.loads(done.stdout.strip().splitlines()[-1]))


def start_stack(values_path: str, models: Path, work: Path) -> tuple[Any, dict[str, Any]]:
    spec = load_spec(values_path)
    values = {
        "deployment": {"name": spec.deployment.name, "namespace": spec.deployment.namespace},
        "model": {"name": MODEL_NAME, "localRepository": str(models.resolve()),
                  "artifacts": dict(spec.model.artifacts)},
        "predictors": [{"name": "stable", "version": "v1", "traffic": 100, "replicas": 1}],
        "router": {"port": 0, "grpcPort": 0},
    }
    (work / "values.yaml").write_text(yaml.safe_dump(values))
    return start_background(work / "values.yaml", work / "state", work / "stack.log",
                            new_session=True, timeout=180)


def through_stack(state: dict[str, Any], source: Path, work: Path, transport: str,
                  rows_per_request: int, concurrency: int) -> dict[str, Any]:
    from ..batch.run import Options, score
    from ..batch.scorers import DeploymentScorer, GrpcScorer, RestScorer
    from ..dataset import load

    kw: dict[str, Any] = {"rows_per_request": rows_per_request, "concurrency": concurrency,
                          "retries": 5}
    scorer: DeploymentScorer
    if transport == "rest":
        scorer = RestScorer(state["seldonUrl"], MODEL_NAME, **kw)
    else:
        scorer = GrpcScorer(state["grpcTarget"], MODEL_NAME,
                            metadata={"seldon": state["deployment"],
                                      "namespace": state["namespace"]}, **kw)
    try:
        started = time.perf_counter()
        summary = score(str(source), str(work / f"{transport}-{rows_per_request}"), scorer,
                        load().feature_names, scorer.description, Options(progress=False,
                                                                          overwrite=True))
        elapsed = time.perf_counter() - started
    finally:
        scorer.close()
    return {"rows": summary.rows_scored, "rows_s": summary.rows_scored / elapsed,
            "requests": summary.requests, "retried": summary.retried}


def mlserver_infer(state: dict[str, Any], lines: Path, work: Path, workers: int,
                   batch: int, rows: int) -> dict[str, Any]:
    """`mlserver infer` against the router (the Seldon prefix in its URL: tritonclient appends
    /v2/models/<model>/infer to it)."""
    url = state["seldonUrl"].removeprefix("http://")
    out = work / f"mlserver-infer-{workers}x{batch}.jsonl"
    command = [str(Path(sys.executable).with_name("mlserver")), "infer", "-u", url, "-m",
               MODEL_NAME, "-i", str(lines), "-o", str(out), "-w", str(workers), "-s",
               str(batch), "--timeout", "60"]
    done = subprocess.run(command, capture_output=True, text=True, check=False)
    taken = re.search(r"Time taken: ([0-9.]+) seconds", done.stdout + done.stderr)
    answered = errors = 0
    if out.exists():
        with out.open() as f:
            for line in f:
                answered += 1
                errors += '"error"' in line[:200] or "error" in json.loads(line).get(
                    "parameters", {})
    if done.returncode != 0 or taken is None:
        raise RuntimeError(f"mlserver infer failed: {(done.stdout + done.stderr)[-1500:]}")
    seconds = float(taken.group(1))
    ok = answered - errors
    return {"rows_s": ok / seconds, "answered": answered, "errors": errors,
            "complete": ok == rows}


def peak_rss_mb(values: str, models: Path, source: Path, out: Path) -> float:
    """Peak resident memory of `serving batch score` in-process on `source`, in its own process:
    its VmHWM at exit (ru_maxrss would count the forking parent's memory too)."""
    code = ("import atexit, sys\n"
            "def peak():\n"
            "    for line in open('/proc/self/status'):\n"
            "        if line.startswith('VmHWM:'): sys.stderr.write('VmHWM ' + line.split()[1])\n"
            "atexit.register(peak)\n"
            "from serving.batch.commands import batch\n"
            "batch(['score', *sys.argv[1:]], prog_name='serving batch')\n")
    done = subprocess.run([sys.executable, "-c", code, str(source), "--out", str(out),
                           "--values", values, "--models", str(models), "--quiet",
                           "--overwrite"], stdout=subprocess.DEVNULL, stderr=subprocess.PIPE,
                          text=True, check=False)
    found = re.search(r"VmHWM (\d+)", done.stderr)
    if done.returncode != 0 or found is None:
        raise RuntimeError(f"batch score on {source} exited {done.returncode}: "
                           f"{done.stderr[-1500:]}")
    return int(found.group(1)) / 1024


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=(__doc__ or "").split("\n")[0])
    parser.add_argument("--models", type=Path, default=Path("models"))
    parser.add_argument("--values", default=DEFAULT_VALUES)
    parser.add_argument("--rows", type=int, default=100_000)
    parser.add_argument("--memory-rows", type=int, default=1_000_000)
    parser.add_argument("--rows-per-request", default="1,64,512")
    parser.add_argument("--concurrency", type=int, default=16)
    parser.add_argument("--single-row-limit", type=int, default=10_000,
                        help="at 1 row per request, score only the first N rows of the input "
                        "(100,000 one-row requests take many minutes on a loaded 2-core box); "
                        "0 = all")
    parser.add_argument("--mlserver-infer", default="4x16,4x64,16x64,4x512",
                        help="workers x batch-size settings of `mlserver infer` to try")
    parser.add_argument("--repeat", type=int, default=3, help="in-process repeats (median)")
    parser.add_argument("--out", type=Path)
    args = parser.parse_args(argv)
    sizes = [int(s) for s in args.rows_per_request.split(",")]
    settings = [tuple(int(v) for v in s.split("x")) for s in args.mlserver_infer.split(",")]
    lines_out: list[str] = []

    def say(line: str = "") -> None:
        print(line, flush=True)
        lines_out.append(line)

    with tempfile.TemporaryDirectory(prefix="batch-bench-") as tmp:
        work = Path(tmp)
        log(f"writing {args.rows} rows (Parquet + JSON lines) ...")
        source, lines = write_inputs(args.rows, work)
        assert lines is not None
        prefix = source  # the first rows of the same input, for 1 row per request
        if args.single_row_limit and args.single_row_limit < args.rows:
            import pyarrow.parquet as pq

            prefix = work / f"input-first-{args.single_row_limit}.parquet"
            pq.write_table(pq.read_table(source).slice(0, args.single_row_limit), prefix)
        log("in-process on one core ...")
        local = in_process(args.values, args.models, source, work, args.repeat)
        log("starting the local stack (router + one stable v1 replica) ...")
        process, state = start_stack(args.values, args.models, work)
        stack: dict[tuple[str, int], dict[str, Any]] = {}
        theirs: dict[tuple[int, int], dict[str, Any]] = {}
        try:
            for size in sizes:
                for transport in ("rest", "grpc"):
                    log(f"stack {transport} {size} rows/request ...")
                    stack[(transport, size)] = through_stack(
                        state, prefix if size == 1 else source, work, transport, size,
                        args.concurrency)
            for workers, batch in settings:
                log(f"mlserver infer -w {workers} -s {batch} ...")
                theirs[(workers, batch)] = mlserver_infer(state, lines, work, workers, batch,
                                                          args.rows)
        finally:
            stop_background(process)
        log(f"peak memory: {args.memory_rows} rows vs {args.rows} rows ...")
        big, _ = write_inputs(args.memory_rows, work, jsonl=False)
        rss_big = peak_rss_mb(args.values, args.models, big, work / "mem-big")
        rss_small = peak_rss_mb(args.values, args.models, source, work / "mem-small")
        big_mb = big.stat().st_size / 2**20

    say(f"# Batch scoring, {args.rows:,} rows, one run ({os.cpu_count()} cores, shared by the "
        "client, the router and the replica)")
    say()
    say("| how | setting | rows/s |")
    say("|---|---|---:|")
    say(f"| in-process, 1 core | predict + predict_proba only | {local['predict']:,.0f} |")
    say(f"| in-process, 1 core | score(): read, predict, write parts | {local['e2e']:,.0f} |")
    for (transport, size), r in stack.items():
        rows = "" if r["rows"] == args.rows else f", first {r['rows']:,} rows"
        say(f"| stack {transport} | {size} rows/request, {args.concurrency} in flight "
            f"({r['requests']} requests, {r['retried']} retried{rows}) | {r['rows_s']:,.0f} |")
    for (workers, batch), r in theirs.items():
        note = "" if r["complete"] else f" (INCOMPLETE: {r['errors']} errors)"
        say(f"| mlserver infer | -w {workers} -s {batch}{note} | {r['rows_s']:,.0f} |")
    complete = {k: r for k, r in theirs.items() if r["complete"]} or theirs
    best_key = max(complete, key=lambda k: complete[k]["rows_s"])
    best_theirs = complete[best_key]["rows_s"]
    best_stack_key = max(stack, key=lambda k: stack[k]["rows_s"])
    best_stack = stack[best_stack_key]["rows_s"]
    say()
    verdict = "met" if best_stack >= 5 * best_theirs else "MISSED"
    say(f"stack best ({best_stack_key[0]}, {best_stack_key[1]} rows/request) / mlserver infer "
        f"best (-w {best_key[0]} -s {best_key[1]}): {best_stack / best_theirs:.1f}x "
        f"(target >= 5x: {verdict})")
    for size in sizes:
        say(f"  at {size} rows/request: REST {stack[('rest', size)]['rows_s'] / best_theirs:.1f}x,"
            f" gRPC {stack[('grpc', size)]['rows_s'] / best_theirs:.1f}x")
    verdict = "met" if local["e2e"] >= 200_000 else "MISSED"
    say(f"in-process on one core: {local['e2e']:,.0f} rows/s end to end (target >= 200,000: "
        f"{verdict}); the model alone {local['predict']:,.0f} rows/s")
    say(f"peak memory (RSS) of `serving batch score` in-process: {rss_big:,.0f} MB for "
        f"{args.memory_rows:,} rows ({big_mb:,.0f} MB of Parquet) vs {rss_small:,.0f} MB for "
        f"{args.rows:,} rows")
    if args.out:
        args.out.parent.mkdir(parents=True, exist_ok=True)
        args.out.write_text("\n".join(lines_out) + "\n")
    return 0


if __name__ == "__main__":
    sys.exit(main())
