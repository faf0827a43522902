"""A steady background load for demos and tests: closed-loop callers on threads, every answer
recorded with its time, status and the predictor that served it. (Load *tests* use locust; this
is the small, dependency-light generator that keeps traffic flowing while something else runs.)"""

from __future__ import annotations

import threading
import time
from collections import Counter
from dataclasses import dataclass, field
from typing import Any

import httpx
import numpy as np

from . import dataset
from .client import PREDICTOR_HEADER


def infer_body(row: np.ndarray) -> dict[str, Any]:
    return {"inputs": [{"name": "input-0", "datatype": "FP64", "shape": [1, int(row.size)],
                        "data": row.tolist()}]}


@dataclass
class BackgroundLoad:
    url: str
    threads: int = 3
    pause_s: float = 0.0
    """Sleep between a caller's requests (0 = as fast as answers come)."""
    results: list[tuple[float, int, str | None]] = field(default_factory=list)
    _stop: threading.Event = field(default_factory=threading.Event)
    _workers: list[threading.Thread] = field(default_factory=list)

    def start(self) -> BackgroundLoad:
        rows = dataset.sample_rows(500, seed=7)
        bodies = [infer_body(r) for r in rows]
        for n in range(self.threads):
            t = threading.Thread(target=self._run, args=(n, bodies), daemon=True)
            t.start()
            self._workers.append(t)
        return self

    def _run(self, n: int, bodies: list[dict[str, Any]]) -> None:
        with httpx.Client(timeout=30) as client:
            i = n
            while not self._stop.is_set():
                try:
                    r = client.post(self.url, json=bodies[i % len(bodies)])
                    self.results.append((time.time(), r.status_code,
                                         r.headers.get(PREDICTOR_HEADER)))
                except httpx.HTTPError:
                    self.results.append((time.time(), -1, None))
                i += self.threads
                if self.pause_s:
                    time.sleep(self.pause_s)

    def stop(self) -> BackgroundLoad:
        self._stop.set()
        for t in self._workers:
            t.join()
        return self

    def statuses(self) -> Counter[int]:
        return Counter(status for _, status, _ in self.results)

    def served_by(self) -> Counter[str | None]:
        return Counter(predictor for _, _, predictor in self.results)
