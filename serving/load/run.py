"""Run locust headless on loadtest/ as a subprocess, bounded in time, into one report folder.

The folder receives locust's own CSVs (locust_stats.csv, locust_stats_history.csv with a row per
predictor per second, locust_failures.csv, locust_exceptions.csv) and HTML report (report.html),
one row per request (requests.csv), the run's summary (summary.json: per-predictor table, split,
SLO verdict), locust's log and, when a follower is given, replicas.csv.
"""

from __future__ import annotations

import contextlib
import subprocess
import sys
from dataclasses import dataclass
from pathlib import Path
from typing import Literal

from .errors import LoadTestError
from .replicas import ReplicaFollower
from .shapes import SHAPES
from .summary import RunSummary, read_summary

LOADTEST_DIR = Path(__file__).resolve().parents[2] / "loadtest"
USERS = {"rest": ["RestUser"], "grpc": ["GrpcUser"], "both": ["RestUser", "GrpcUser"]}
MAX_DURATION_S = 3600
GRACE_S = 120
"""Extra seconds locust gets (start, stop, reports) before it is killed."""

Protocol = Literal["rest", "grpc", "both"]


@dataclass(frozen=True)
class LoadPlan:
    values: Path
    """Values file: the slo section and default names and weights."""
    protocol: Protocol = "both"
    shape: str = "constant"
    users: int = 10
    """Peak users; each sends rps / users requests per second."""
    rps: float = 100.0
    """Requests per second at the peak (0 = closed loop: as fast as answers come)."""
    duration_s: int = 20
    weights: str = ""
    """Configured split as 'stable=90,canary=10'; empty = the router's or the values'."""
    min_requests: int = 20

    def check(self) -> None:
        problems = []
        if self.shape not in SHAPES:
            problems.append(f"--shape {self.shape!r}: choose one of {sorted(SHAPES)}")
        if not 1 <= self.duration_s <= MAX_DURATION_S:
            problems.append(f"--duration {self.duration_s}: must be 1..{MAX_DURATION_S} seconds")
        if self.users < 1:
            problems.append(f"--users {self.users}: must be at least 1")
        if self.rps < 0:
            problems.append(f"--rps {self.rps}: must be 0 (closed loop) or more")
        if problems:
            raise LoadTestError("\n".join(problems))


@dataclass(frozen=True)
class LocustRun:
    exit_code: int
    report_dir: Path
    summary: RunSummary | None
    """None when locust ended before writing summary.json (see locust.log)."""


def locust_command(plan: LoadPlan, target_args: list[str], report_dir: Path) -> list[str]:
    locustfiles = f"{LOADTEST_DIR / 'locustfile.py'},{LOADTEST_DIR / f'shape_{plan.shape}.py'}"
    return [
        sys.executable, "-m", "locust", "-f", locustfiles, "--headless", "--only-summary",
        "-u", str(plan.users), "-t", f"{plan.duration_s}s",
        "--csv", str(report_dir / "locust"), "--csv-full-history",
        "--html", str(report_dir / "report.html"),
        "--logfile", str(report_dir / "locust.log"),
        "--values", str(plan.values), "--rps", str(plan.rps),
        "--min-requests", str(plan.min_requests),
        "--summary-json", str(report_dir / "summary.json"),
        "--requests-csv", str(report_dir / "requests.csv"),
        *(["--weights", plan.weights] if plan.weights else []),
        *target_args,
        *USERS[plan.protocol],
    ]  # fmt: skip


def run_locust(
    plan: LoadPlan,
    target_args: list[str],
    report_dir: Path,
    follower: ReplicaFollower | None = None,
    quiet: bool = False,
) -> LocustRun:
    """Run and wait; locust's exit code is the SLO gate's (0 passed, 1 failed or inconclusive).
    `quiet` sends locust's console output to locust.out in the report folder."""
    plan.check()
    if not (LOADTEST_DIR / "locustfile.py").exists():
        raise LoadTestError(
            f"{LOADTEST_DIR}/locustfile.py not found: run from a source checkout of this project"
        )
    report_dir.mkdir(parents=True, exist_ok=True)
    command = locust_command(plan, target_args, report_dir)
    console = (report_dir / "locust.out").open("wb") if quiet else None
    try:
        with follower if follower is not None else contextlib.nullcontext():
            done = subprocess.run(
                command, stdout=console, stderr=console, timeout=plan.duration_s + GRACE_S
            )
    except subprocess.TimeoutExpired:
        raise LoadTestError(
            f"locust did not finish within {plan.duration_s + GRACE_S}s; see "
            f"{report_dir / 'locust.log'}"
        ) from None
    finally:
        if console is not None:
            console.close()
    if follower is not None:
        follower.write_csv(report_dir / "replicas.csv")
    summary_path = report_dir / "summary.json"
    summary = read_summary(summary_path) if summary_path.exists() else None
    return LocustRun(done.returncode, report_dir, summary)
