"""PNG plots of a run, from the files in its report folder (matplotlib, no display needed).

    latency.png     p50/p95/p99 per predictor per second, with the SLO budgets
    throughput.png  requests/s per predictor and users over time
    errors.png      failed requests/s per predictor
    replicas.png    replicas per predictor over time (when replicas.csv has samples)

Inputs: requests.csv (one row per request, locust's CsvRequestLogger), locust_stats_history.csv
(locust's --csv history, for the user count) and replicas.csv (serving/load/replicas.py).
"""

from __future__ import annotations

import csv
from collections import defaultdict
from pathlib import Path

import numpy as np
from matplotlib.figure import Figure
from matplotlib.ticker import MaxNLocator

from ..spec import Slo
from .stats import predictor_of

Series = dict[str, tuple[np.ndarray, np.ndarray]]


def _rows(path: Path) -> list[dict[str, str]]:
    if not path.exists():
        return []
    with path.open(newline="") as f:
        return list(csv.DictReader(f))


def read_requests(path: Path) -> dict[str, dict[str, np.ndarray]]:
    """predictor -> {'t': start times, 'ms': response times, 'failed': bools}."""
    grouped: dict[str, list[tuple[float, float, bool]]] = defaultdict(list)
    for r in _rows(path):
        predictor = predictor_of(r["name"])
        if predictor is None or not r["response_time_ms"]:
            continue
        grouped[predictor].append(
            (float(r["timestamp"]), float(r["response_time_ms"]), bool(r["exception"]))
        )
    out = {}
    for predictor, items in grouped.items():
        a = np.array(items, dtype=float)
        out[predictor] = {"t": a[:, 0], "ms": a[:, 1], "failed": a[:, 2].astype(bool)}
    return out


def _save(fig: Figure, path: Path) -> Path:
    fig.tight_layout()
    fig.savefig(path, dpi=100)
    return path


def plot_latency(
    requests: dict[str, dict[str, np.ndarray]], t0: float, slo: Slo | None, path: Path
) -> Path:
    fig = Figure(figsize=(10, 3 * max(1, len(requests))))
    axes = fig.subplots(max(1, len(requests)), 1, squeeze=False)[:, 0]
    for ax, (predictor, r) in zip(axes, sorted(requests.items()), strict=False):
        seconds = np.floor(r["t"] - t0).astype(int)
        bins = np.unique(seconds)
        for q, style in ((50, "-"), (95, "--"), (99, ":")):
            ax.plot(
                bins, [np.percentile(r["ms"][seconds == b], q) for b in bins], style, label=f"p{q}"
            )
        if slo is not None:
            ax.axhline(slo.p95_ms, color="tab:orange", alpha=0.4, label="slo.p95Ms")
            ax.axhline(slo.p99_ms, color="tab:red", alpha=0.4, label="slo.p99Ms")
        ax.set_ylim(bottom=0)
        ax.set_title(f"latency, predictor {predictor}")
        ax.set_ylabel("ms")
        ax.legend(loc="upper right", fontsize="small")
    axes[-1].set_xlabel("seconds since start")
    return _save(fig, path)


def _per_second(t: np.ndarray, t0: float, length: int) -> np.ndarray:
    return np.bincount(np.floor(t - t0).astype(int), minlength=length)[:length]


def plot_throughput(
    requests: dict[str, dict[str, np.ndarray]],
    t0: float,
    users: tuple[np.ndarray, np.ndarray],
    path: Path,
) -> Path:
    fig = Figure(figsize=(10, 4))
    ax = fig.subplots()
    length = 1 + max(int(np.floor(r["t"].max() - t0)) for r in requests.values())
    total = np.zeros(length)
    for predictor, r in sorted(requests.items()):
        counts = _per_second(r["t"], t0, length)
        total += counts
        ax.plot(np.arange(length), counts, label=predictor)
    ax.plot(np.arange(length), total, color="black", label="all")
    ax.set_xlabel("seconds since start")
    ax.set_ylabel("requests/s")
    ax.set_ylim(bottom=0)
    ax.set_title("throughput per predictor")
    if len(users[0]):
        twin = ax.twinx()
        twin.step(users[0] - t0, users[1], where="post", color="grey", alpha=0.5, label="users")
        twin.set_ylabel("users")
        twin.legend(loc="upper left", fontsize="small")
    ax.legend(loc="upper right", fontsize="small")
    return _save(fig, path)


def plot_errors(requests: dict[str, dict[str, np.ndarray]], t0: float, path: Path) -> Path:
    fig = Figure(figsize=(10, 3.5))
    ax = fig.subplots()
    length = 1 + max(int(np.floor(r["t"].max() - t0)) for r in requests.values())
    total_failed = 0
    for predictor, r in sorted(requests.items()):
        failed = _per_second(r["t"][r["failed"]], t0, length)
        total_failed += int(failed.sum())
        ax.plot(np.arange(length), failed, label=f"{predictor} ({int(r['failed'].sum())} failed)")
    ax.set_ylim(bottom=0, top=None if total_failed else 1)
    ax.set_title("failed requests/s" + ("" if total_failed else " (none failed)"))
    ax.set_xlabel("seconds since start")
    ax.set_ylabel("failures/s")
    ax.legend(loc="upper right", fontsize="small")
    return _save(fig, path)


def read_replicas(path: Path) -> Series:
    grouped: dict[str, list[tuple[float, int]]] = defaultdict(list)
    for r in _rows(path):
        grouped[r["predictor"]].append((float(r["timestamp"]), int(r["replicas"])))
    return {
        p: (np.array([t for t, _ in v]), np.array([n for _, n in v])) for p, v in grouped.items()
    }


def plot_replicas(replicas: Series, t0: float, path: Path) -> Path:
    fig = Figure(figsize=(10, 3.5))
    ax = fig.subplots()
    # equal counts overlap: each line is drawn thinner than the one before, so all stay visible
    for i, (predictor, (t, n)) in enumerate(sorted(replicas.items())):
        ax.step(t - t0, n, where="post", label=predictor, linewidth=2 + 2 * (len(replicas) - i))
    ax.set_ylim(0, 1 + max(int(n.max()) for _, n in replicas.values()))
    ax.set_title("replicas per predictor")
    ax.set_xlabel("seconds since start")
    ax.set_ylabel("replicas")
    ax.yaxis.set_major_locator(MaxNLocator(integer=True))
    ax.legend(loc="upper right", fontsize="small")
    return _save(fig, path)


def read_users(path: Path) -> tuple[np.ndarray, np.ndarray]:
    rows = [r for r in _rows(path) if r.get("Name") == "Aggregated"]
    return (
        np.array([float(r["Timestamp"]) for r in rows]),
        np.array([int(r["User Count"]) for r in rows]),
    )


def make_plots(report_dir: Path, slo: Slo | None = None) -> list[Path]:
    """Every plot the report folder has data for; returns the files written."""
    requests = read_requests(report_dir / "requests.csv")
    if not requests:
        return []
    t0 = min(float(r["t"].min()) for r in requests.values())
    made = [
        plot_latency(requests, t0, slo, report_dir / "latency.png"),
        plot_throughput(
            requests,
            t0,
            read_users(report_dir / "locust_stats_history.csv"),
            report_dir / "throughput.png",
        ),
        plot_errors(requests, t0, report_dir / "errors.png"),
    ]
    replicas = read_replicas(report_dir / "replicas.csv")
    if replicas:
        made.append(plot_replicas(replicas, t0, report_dir / "replicas.png"))
    return made
