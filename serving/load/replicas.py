"""Replicas per predictor over a run: a background thread that asks a source every few seconds.

Sources: the local router (`local_replicas`: live model server processes per predictor) and, on a
cluster, the predictors' HorizontalPodAutoscalers (serving/load/hpa.py). Samples go to
`replicas.csv` in the report folder; a source that fails is retried and its error kept, so a
flaky API server never stops the load test.
"""

from __future__ import annotations

import csv
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path

import httpx

Counts = dict[str, tuple[int, int | None]]
"""predictor -> (replicas now, replicas wanted or None when unknown)."""
COLUMNS = ("timestamp", "predictor", "replicas", "desired")


@dataclass(frozen=True)
class ReplicaSample:
    timestamp: float
    predictor: str
    replicas: int
    desired: int | None


@dataclass
class ReplicaFollower:
    source: Callable[[], Counts]
    interval_s: float = 2.0
    samples: list[ReplicaSample] = field(default_factory=list)
    errors: list[str] = field(default_factory=list)
    _stop: threading.Event = field(default_factory=threading.Event)
    _thread: threading.Thread | None = None

    def sample(self) -> None:
        now = time.time()
        try:
            counts = self.source()
        except Exception as e:  # any failure of the source: keep it, try again next time
            message = getattr(e, "message", None) or f"{type(e).__name__}: {e}"
            if message not in self.errors:
                self.errors.append(message)
            return
        for predictor, (replicas, desired) in sorted(counts.items()):
            self.samples.append(ReplicaSample(now, predictor, replicas, desired))

    def _run(self) -> None:
        while True:
            self.sample()
            if self._stop.wait(self.interval_s):
                return

    def __enter__(self) -> ReplicaFollower:
        self._thread = threading.Thread(target=self._run, name="replica-follower", daemon=True)
        self._thread.start()
        return self

    def __exit__(self, *_: object) -> None:
        self._stop.set()
        if self._thread is not None:
            self._thread.join(10)
        self.sample()  # the count at the end

    def write_csv(self, path: Path) -> None:
        with path.open("w", newline="") as f:
            writer = csv.writer(f)
            writer.writerow(COLUMNS)
            for s in self.samples:
                writer.writerow(
                    (
                        f"{s.timestamp:.3f}",
                        s.predictor,
                        s.replicas,
                        "" if s.desired is None else s.desired,
                    )
                )


def local_replicas(rest_url: str) -> Callable[[], Counts]:
    """Live replicas per predictor of the local stack, and how many it runs."""

    def read() -> Counts:
        status = httpx.get(f"{rest_url}/admin/status", timeout=5).json()
        return {
            p["name"]: (sum(bool(r["alive"]) for r in p["replicas"]), len(p["replicas"]))
            for p in status["predictors"]
        }

    return read
