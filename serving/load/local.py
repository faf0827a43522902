"""The local side of load tests: use the running local stack or start one for the run, and
measure throughput against the number of model server replicas.

`local_stack` starts `serving up` in the background only when no stack is running in the state
dir, and stops it afterwards; a stack someone else started is used and left alone. The scaling
runs start their own short-lived stacks (the stable predictor alone, on free loopback ports), one
per replica count, and drive each closed loop for the same time.
"""

from __future__ import annotations

import csv
import os
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import astuple, dataclass, fields, replace
from pathlib import Path
from typing import Any

import yaml

from ..errors import ServingError
from ..router.stack import pid_alive, read_state, start_background, stop_background
from ..spec import Spec, spec_to_values
from .errors import LoadTestError
from .run import LoadPlan, run_locust

START_TIMEOUT_S = 180


def running_state(state_dir: Path) -> dict[str, Any] | None:
    """The state of a live local stack in `state_dir`, or None."""
    try:
        state = read_state(state_dir)
    except ServingError:
        return None
    return state if pid_alive(int(state["pid"])) else None


@contextmanager
def local_stack(
    state_dir: Path, values: Path, models: Path | None, log_path: Path, start: bool = True
) -> Iterator[tuple[dict[str, Any], bool]]:
    """Yields (stack state, whether this call started it)."""
    state = running_state(state_dir)
    if state is not None:
        yield state, False
        return
    if not start:
        raise LoadTestError(
            f"no local stack is running in {state_dir}; start one with 'make up' or pass "
            "--start-stack (or --target for another ingress)"
        )
    try:
        process, state = start_background(values, state_dir, log_path, models,
                                          timeout=START_TIMEOUT_S)
    except ServingError as e:
        raise LoadTestError(e.message) from None
    try:
        yield state, True
    finally:
        stop_background(process)


@dataclass(frozen=True)
class ScalingRow:
    replicas: int
    requests: int
    failures: int
    rps: float
    p50_ms: float
    p95_ms: float
    p99_ms: float


def scaling_values(spec: Spec, replicas: int) -> dict[str, Any]:
    """The spec with its stable predictor alone at `replicas`, the router on free loopback ports."""
    values = spec_to_values(spec)
    primary = next(p for p in values["predictors"] if not p.get("shadow"))
    values["predictors"] = [
        {
            **primary,
            "traffic": 100,
            "replicas": replicas,
            "hpa": {**primary["hpa"], "enabled": False},
        }
    ]
    values["router"] |= {"host": "127.0.0.1", "port": 0, "grpcPort": 0}
    return values


def scaling_plan(users: int, duration_s: int) -> LoadPlan:
    """REST, closed loop (as fast as answers come), constant users: the most a stack serves."""
    return LoadPlan(Path(), "rest", "constant", users, 0.0, duration_s, min_requests=0)


def scaling_runs(
    spec: Spec, models: Path | None, counts: list[int], plan: LoadPlan, report_dir: Path
) -> list[ScalingRow]:
    """One run of `plan` per replica count, each against a fresh stack of its own; the rows also
    go to scaling.csv in the report folder."""
    rows = []
    for n in counts:
        run_dir = report_dir / "scaling" / f"replicas-{n}"
        run_dir.mkdir(parents=True, exist_ok=True)
        values = run_dir / "values.yaml"
        values.write_text(yaml.safe_dump(scaling_values(spec, n), sort_keys=False))
        with local_stack(run_dir / "state", values, models, run_dir / "stack.log"):
            run = run_locust(
                replace(plan, values=values.resolve()),
                ["--state-dir", str((run_dir / "state").resolve())],
                run_dir,
                quiet=True,
            )
        if run.summary is None or not run.summary.overall.requests or run.summary.task_errors:
            raise LoadTestError(
                f"the scaling run with {n} replicas measured nothing (exit code "
                f"{run.exit_code}); see {run_dir / 'locust.log'} and {run_dir / 'locust.out'}"
            )
        o = run.summary.overall
        rows.append(ScalingRow(n, o.requests, o.failures, o.rps, o.p50_ms, o.p95_ms, o.p99_ms))
    with (report_dir / "scaling.csv").open("w", newline="") as f:
        writer = csv.writer(f)
        writer.writerow([field.name for field in fields(ScalingRow)])
        writer.writerows(astuple(r) for r in rows)
    return rows


def format_scaling(rows: list[ScalingRow], plan: LoadPlan) -> str:
    base = rows[0].rps if rows and rows[0].rps else None
    lines = [
        f"Throughput against stable replicas ({plan.protocol.upper()}, closed loop, {plan.users} users, "
        f"{plan.duration_s}s each, {os.cpu_count()} CPU cores shared by locust, router and "
        "model servers)",
        f"{'REPLICAS':>8} {'REQ/S':>8} {'P50 MS':>7} {'P95 MS':>7} {'P99 MS':>7} "
        f"{'FAILED':>7} {'SPEEDUP':>8}",
    ]
    for r in rows:
        speedup = f"{r.rps / base:.2f}x" if base else "-"
        lines.append(
            f"{r.replicas:>8} {r.rps:>8.1f} {r.p50_ms:>7.1f} {r.p95_ms:>7.1f} {r.p99_ms:>7.1f} "
            f"{r.failures:>7} {speedup:>8}"
        )
    return "\n".join(lines)
