"""`make bench`: every performance figure in one run on one machine, written to reports/<time>/.

    python -m serving.bench.all --models models [--duration 8]

1. one MLServer: MLServer's defaults vs the tuned settings, REST and gRPC, 1 and 16 clients;
2. the router: direct MLServer vs through the router vs with 100% shadow, REST and gRPC;
3. whether idle-class CPU work (what the shadow runs in) disturbs a lone client on this machine;
4. the floor under the router's cost: bare nginx and bare HAProxy (if installed) at 16 gRPC
   clients, where the router is closest to its targets;
5. speed: the plain FastAPI app users would write vs MLServer's defaults vs ours vs the local
   stack, with wrk, and model compute per row, scikit-learn vs compiled (serving.bench.speed);
6. the comparator: events per core (vs a no-op HTTP handler), memory with 10,000 pending pairs,
   event-to-verdict lag at half the target rate (serving.bench.comparator_bench);
7. batch scoring: in-process on one core, through the stack at 1/64/512 rows per request, vs
   `mlserver infer`; peak memory for 1,000,000 rows (serving.bench.batch_bench).
Each part prints its figures and its ratios; they land in the report folder as markdown.
"""

from __future__ import annotations

import argparse
import contextlib
import sys
import time
from pathlib import Path

from . import (
    batch_bench,
    comparator_bench,
    idle_interference,
    mlserver_bench,
    proxy_floor,
    router_bench,
    speed,
)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m serving.bench.all")
    parser.add_argument("--models", type=Path, default=Path("models"))
    parser.add_argument("--duration", type=float, default=8.0)
    parser.add_argument("--reports", type=Path, default=Path("reports"))
    args = parser.parse_args(argv)
    out = args.reports / time.strftime("%Y%m%d-%H%M%S")
    out.mkdir(parents=True, exist_ok=True)
    duration = str(args.duration)
    print("== 1/4 one MLServer: defaults vs tuned ==", flush=True)
    first = mlserver_bench.main(
        ["--models", str(args.models), "--duration", duration, "--out", str(out / "mlserver.md")]
    )
    print("\n== 2/4 direct vs router vs router with 100% shadow ==", flush=True)
    second = router_bench.main(
        ["--models", str(args.models), "--duration", duration, "--out", str(out / "router.md")]
    )
    print("\n== 3/4 idle-class CPU work next to one client ==", flush=True)
    with open(out / "idle-interference.md", "w") as f, contextlib.redirect_stdout(f):
        third = idle_interference.main(["--models", str(args.models)])
    print((out / "idle-interference.md").read_text(), end="")
    print("\n== 4/4 bare proxies vs the router, gRPC, 16 clients ==", flush=True)
    with open(out / "proxy-floor.md", "w") as f, contextlib.redirect_stdout(f):
        fourth = proxy_floor.main(["--models", str(args.models), "--duration", duration])
    print((out / "proxy-floor.md").read_text(), end="")
    print("\n== 5/5 plain FastAPI app vs MLServer vs the stack (wrk); compute per row ==",
          flush=True)
    fifth = speed.main(["--models", str(args.models), "--duration", duration,
                        "--out", str(out / "speed.md")])
    print("\n== 6/6 the comparator: events per core, memory with 10,000 pending pairs, lag ==",
          flush=True)
    with open(out / "comparator.md", "w") as f, contextlib.redirect_stdout(f):
        sixth = comparator_bench.main([])
    print((out / "comparator.md").read_text(), end="")
    print("\n== 7/7 batch scoring: in-process, through the stack, mlserver infer; memory ==",
          flush=True)
    seventh = batch_bench.main(["--models", str(args.models), "--out", str(out / "batch.md")])
    print(f"\nreports written to {out}/")
    return first or second or third or fourth or fifth or sixth or seventh


if __name__ == "__main__":
    sys.exit(main())
