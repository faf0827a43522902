"""Does CPU work in the idle class slow a lone client's requests? (Why a 100% shadow shows in p99.)

    python -m serving.bench.idle_interference --models models [--duration 5] [--repeat 3]

Starts the local stack with one stable predictor and no shadow, then measures one closed-loop
REST client through the router three ways, interleaved: alone; next to a CPU burner in the idle
CPU class (SCHED_IDLE, what the shadow worker and shadow replicas run in); next to an idle-class
burner that works 2 ms every 20 ms (10% of a core, about what 100% mirroring costs at one
client). On a machine where the idle class is truly free, all three have the same p99.
"""

from __future__ import annotations

import argparse
import statistics
import subprocess
import sys
import tempfile
from pathlib import Path

from ..dataset import sample_rows
from ..router.stack import stop_background
from ..server import child_setup
from ..training import MODEL_NAME
from .driver import Target, run_load
from .router_bench import start_stack

BURNERS = {
    "alone": None,
    "idle burner, 100%": "while True: pass",
    "idle burner, 10%": ("import time\nwhile True:\n t = time.perf_counter()\n"
                         " while time.perf_counter() - t < 0.002: pass\n time.sleep(0.018)"),
}


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--models", type=Path, default=Path("models"))
    parser.add_argument("--duration", type=float, default=5.0)
    parser.add_argument("--repeat", type=int, default=3)
    args = parser.parse_args(argv)
    rows = sample_rows(1000, seed=5)
    p99: dict[str, list[float]] = {name: [] for name in BURNERS}
    p50: dict[str, list[float]] = {name: [] for name in BURNERS}
    with tempfile.TemporaryDirectory(prefix="idle-bench-") as tmp:
        process, state = start_stack(args.models, Path(tmp), with_shadow=False)
        try:
            target = Target.rest(state["seldonUrl"], MODEL_NAME)
            for _ in range(args.repeat):
                for name, code in BURNERS.items():
                    burner = None if code is None else subprocess.Popen(
                        [sys.executable, "-c", code], preexec_fn=child_setup(niceness=19))
                    try:
                        r = run_load(target, 1, args.duration, 0.5, rows)
                    finally:
                        if burner is not None:
                            burner.kill()
                            burner.wait()
                    p50[name].append(r.p50_ms)
                    p99[name].append(r.p99_ms)
        finally:
            stop_background(process, timeout=60)
    print(f"one REST client through the router, {args.duration:g}s per run, {args.repeat} runs")
    print(f"{'next to':<20} {'p50 ms (median)':>16} {'p99 ms (median)':>16}   p99 of each run")
    base = statistics.median(p99["alone"])
    for name in BURNERS:
        m99 = statistics.median(p99[name])
        runs = ", ".join(f"{v:.2f}" for v in p99[name])
        print(f"{name:<20} {statistics.median(p50[name]):>16.2f} {m99:>16.2f}   {runs}"
              f"   ({m99 / base:.2f}x)")
    return 0


if __name__ == "__main__":
    sys.exit(main())
