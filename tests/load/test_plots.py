"""Plots from a report folder's CSVs: latency, throughput, errors and replicas over time."""

from __future__ import annotations

import csv
from pathlib import Path

import numpy as np
from matplotlib.image import imread

from serving.load.plots import make_plots
from serving.load.replicas import ReplicaFollower
from serving.spec import Slo


def test_every_plot_is_drawn_from_the_per_request_log(tmp_path: Path) -> None:
    rng = np.random.default_rng(0)
    with (tmp_path / "requests.csv").open("w", newline="") as f:
        w = csv.writer(f)
        w.writerow(["timestamp", "request_type", "name", "response_time_ms", "response_length",
                    "status_code", "exception"])  # fmt: skip
        for i in range(600):
            predictor = "canary" if i % 10 == 0 else "stable"
            failed = "HTTP 503" if i % 97 == 0 else ""
            w.writerow([1000 + i / 60, "POST", f"infer [{predictor}]",
                        round(float(rng.gamma(2, 5)), 2), 300, 200, failed])  # fmt: skip
    counts = iter([{"stable": (2, 2)}, {"stable": (1, 2)}, {"stable": (2, 2)}])
    follower = ReplicaFollower(lambda: next(counts))
    for _ in range(3):
        follower.sample()
    follower.write_csv(tmp_path / "replicas.csv")

    made = make_plots(tmp_path, Slo())

    assert [p.name for p in made] == ["latency.png", "throughput.png", "errors.png", "replicas.png"]
    for png in made:
        assert png.stat().st_size > 10_000
        assert imread(png).shape[1] >= 800


def test_no_requests_no_plots(tmp_path: Path) -> None:
    assert make_plots(tmp_path) == []


def test_a_failing_replica_source_keeps_its_error_and_no_samples() -> None:
    def broken() -> dict[str, tuple[int, int | None]]:
        raise ConnectionError("refused")

    follower = ReplicaFollower(broken)
    follower.sample()
    follower.sample()
    assert follower.samples == [] and follower.errors == ["ConnectionError: refused"]
