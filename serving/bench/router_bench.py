"""What the router costs: direct MLServer vs through the router, and with 100% shadow mirroring.

    python -m serving.bench.router_bench --models models [--duration 8] [--repeat 1] [--out F]
        [--concurrency 1,16] [--shadow-batch-wait SECONDS] [--shadow-batch-rows ROWS]

Starts the local stack (`serving up`, tuned MLServer settings) with a stable predictor (v1, one
replica) and a shadow (v3) mirroring 0%, then measures single-row requests at 1 and 16
concurrent clients, REST and gRPC, three ways, interleaved so drift hits all alike:
  direct   straight to the stable replica's MLServer
  router   through /seldon/<ns>/<deployment>/ (REST) or the seldon/namespace metadata (gRPC)
  shadow   through the router with the shadow mirroring 100% of requests
With --repeat N, each figure is over the N runs pooled (percentiles of all their latencies), and
the modes run in turn ABC, CBA, ... Prints the figures, then the ratios and differences the
targets are stated in:
router keeps >= 80% of direct throughput, adds <= 0.5 ms at p50 and <= 2 ms at p99;
100% shadow raises the primary's p99 by <= 10%. All on the same 2 cores: the driver, the router
and the model servers share them, as they would on one node.
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

import httpx
import yaml

from ..dataset import sample_rows
from ..router.stack import start_background, stop_background
from ..training import MODEL_NAME
from .driver import LoadResult, Target, pooled_cpu_us, pooled_percentile, run_load
from .mlserver_bench import log, machine_cpu_s, session_cpu_s

MODES = ("direct", "router", "shadow")
PERCENTILES = {"p50_ms": 50, "p99_ms": 99}


def start_stack(models: Path, workdir: Path, shadow: dict[str, Any] | None = None,
                with_shadow: bool = True) -> tuple[subprocess.Popen[bytes], dict[str, Any]]:
    """The stack measured: a stable predictor (v1, one replica) and, `with_shadow`, a shadow
    (v3) mirroring 0% (`shadow`: router.shadow settings)."""
    predictors = [{"name": "stable", "version": "v1", "traffic": 100, "replicas": 1}]
    if with_shadow:
        predictors.append({"name": "shadow", "version": "v3", "shadow": True, "traffic": 0})
    values = {
        "deployment": {"name": "breast-cancer", "namespace": "models"},
        "model": {"name": MODEL_NAME, "localRepository": str(models.resolve())},
        "predictors": predictors,
        "router": {"port": 0, "grpcPort": 0, "shadow": shadow or {}},
    }
    (workdir / "values.yaml").write_text(yaml.safe_dump(values))
    # its own session, so its CPU can be read apart from the driver's
    return start_background(workdir / "values.yaml", workdir / "state", workdir / "stack.log",
                            new_session=True, timeout=120)


def set_mirror(state: dict[str, Any], percent: int) -> None:
    resp = httpx.put(state["restUrl"] + "/admin/traffic", json={"mirrorPercent": percent},
                     headers={"authorization": f"Bearer {state['adminToken']}"})
    resp.raise_for_status()


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--models", type=Path, default=Path("models"))
    parser.add_argument("--duration", type=float, default=8.0)
    parser.add_argument("--warmup", type=float, default=2.0)
    parser.add_argument("--repeat", type=int, default=1)
    parser.add_argument("--concurrency", default="1,16")
    parser.add_argument("--out", type=Path)
    # to compare shadow batching settings (router.shadow.*); the spec's defaults otherwise
    parser.add_argument("--shadow-batch-wait", type=float, metavar="SECONDS")
    parser.add_argument("--shadow-batch-rows", type=int, metavar="ROWS")
    args = parser.parse_args(argv)
    shadow = {key: value for key, value in (("batchWaitSeconds", args.shadow_batch_wait),
                                            ("batchRows", args.shadow_batch_rows))
              if value is not None}
    levels = [int(c) for c in args.concurrency.split(",")]
    rows = sample_rows(1000, seed=5)
    results: dict[tuple[str, str, int], list[LoadResult]] = {}
    with tempfile.TemporaryDirectory(prefix="router-bench-") as tmp:
        process, state = start_stack(args.models, Path(tmp), shadow)
        try:
            status = httpx.get(state["restUrl"] + "/admin/status").json()
            replica = next(p for p in status["predictors"] if p["name"] == "stable")[
                "replicas"][0]
            ml_pid = replica["pid"]
            probes = {"router": lambda: session_cpu_s(process.pid),
                      "mlserver": lambda: session_cpu_s(ml_pid), "machine": machine_cpu_s}
            metadata = {"seldon": state["deployment"], "namespace": state["namespace"]}
            targets = {
                ("direct", "rest"): Target.rest(replica["url"], MODEL_NAME),
                ("direct", "grpc"): Target.grpc(replica["grpc"], MODEL_NAME),
                ("router", "rest"): Target.rest(state["seldonUrl"], MODEL_NAME),
                ("router", "grpc"): Target.grpc(state["grpcTarget"], MODEL_NAME, metadata=metadata),
            }
            for round_ in range(args.repeat):
                # ABC, CBA, ...: drift of the host over a round hits every mode alike
                modes = MODES if round_ % 2 == 0 else MODES[::-1]
                for protocol in ("rest", "grpc"):
                    for c in levels:
                        for mode in modes:
                            set_mirror(state, 100 if mode == "shadow" else 0)
                            target = targets[("direct" if mode == "direct" else "router",
                                              protocol)]
                            log(f"{mode:<7} {protocol:<5} c={c:<3} {target.describe()}")
                            r = run_load(target, c, args.duration, args.warmup, rows,
                                         cpu_probes=probes)
                            results.setdefault((mode, protocol, c), []).append(r)
            set_mirror(state, 0)
            time.sleep(2)  # the last hand-over and the worker's last report
            mirrored = httpx.get(state["restUrl"] + "/admin/status").json()["shadow"]
        finally:
            stop_background(process, timeout=60)

    def figure(mode: str, protocol: str, c: int, metric: str) -> float:
        """Over all runs pooled: requests/s on average, percentiles of all their latencies."""
        runs = results[(mode, protocol, c)]
        if metric == "rps":
            return statistics.fmean(r.rps for r in runs)
        return pooled_percentile(runs, PERCENTILES[metric])

    def cpu_us(mode: str, protocol: str, c: int, who: str) -> float:
        return pooled_cpu_us(results[(mode, protocol, c)], who)

    lines = [f"router benchmark: {os.cpu_count()} cores, {args.duration:g}s per run, "
             f"{args.repeat} runs pooled; single-row requests, closed loop; shadow batches "
             f"{shadow or 'as the spec defaults'}",
             "",
             f"{'mode':<7} {'proto':<5} {'conc':>4} {'req/s':>8} {'p50 ms':>7} {'p99 ms':>7} "
             f"{'errors':>6} {'router us/req':>13} {'mlserver us/req':>15}"]
    lines.insert(1, f"mirrored in all shadow runs: sent {mirrored['sent']}, dropped "
                    f"{mirrored['dropped']}, failed {mirrored['failed']}, timed out "
                    f"{mirrored['timeout']}")
    for protocol in ("rest", "grpc"):
        for c in levels:
            for mode in MODES:
                errors = sum(r.errors for r in results[(mode, protocol, c)])
                lines.append(
                    f"{mode:<7} {protocol:<5} {c:>4} {figure(mode, protocol, c, 'rps'):>8.0f} "
                    f"{figure(mode, protocol, c, 'p50_ms'):>7.2f} "
                    f"{figure(mode, protocol, c, 'p99_ms'):>7.2f} {errors:>6} "
                    f"{cpu_us(mode, protocol, c, 'router'):>13.0f} "
                    f"{cpu_us(mode, protocol, c, 'mlserver'):>15.0f}")
    lines += ["", "against the targets (router vs direct; shadow vs router):",
              f"{'proto':<5} {'conc':>4} {'rps ratio':>9} {'+p50 ms':>8} {'+p99 ms':>8} "
              f"{'shadow p99':>10}   verdict"]
    summary = []
    for protocol in ("rest", "grpc"):
        for c in levels:
            ratio = figure("router", protocol, c, "rps") / figure("direct", protocol, c, "rps")
            add50 = figure("router", protocol, c, "p50_ms") - figure("direct", protocol, c, "p50_ms")
            add99 = figure("router", protocol, c, "p99_ms") - figure("direct", protocol, c, "p99_ms")
            shadow99 = figure("shadow", protocol, c, "p99_ms") / figure("router", protocol, c, "p99_ms")
            misses = [name for name, ok in (("throughput", ratio >= 0.8), ("p50", add50 <= 0.5),
                                            ("p99", add99 <= 2.0), ("shadow", shadow99 <= 1.10))
                      if not ok]
            verdict = "meets all" if not misses else "misses " + ", ".join(misses)
            lines.append(f"{protocol:<5} {c:>4} {ratio:>9.2f} {add50:>+8.2f} {add99:>+8.2f} "
                         f"{shadow99:>9.2f}x   {verdict}")
            summary.append({"protocol": protocol, "concurrency": c, "rps_ratio": ratio,
                            "added_p50_ms": add50, "added_p99_ms": add99,
                            "shadow_p99_ratio": shadow99, "misses": misses})
    text = "\n".join(lines)
    print(text)
    if args.out:
        if args.out.suffix == ".json":
            args.out.write_text(json.dumps({"summary": summary, "runs": {
                f"{m}/{p}/{c}": [r.as_dict() for r in rs] for (m, p, c), rs in results.items()}},
                indent=2))
        else:
            args.out.write_text(text + "\n")
    return 0


if __name__ == "__main__":
    sys.exit(main())
