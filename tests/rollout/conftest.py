"""A local stack for rollouts, and a steady background load that records what callers saw."""

from __future__ import annotations

import threading
import time
from collections import Counter
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path

import httpx
import pytest

from serving.rollout.state import FileStateStore

from ..router.conftest import Stack, infer_body, start_stack, stop_stack

BASELINE = [
    {"name": "stable", "version": "v1", "traffic": 100},
    {"name": "shadow", "version": "v3", "shadow": True, "traffic": 50},
]
FAST_ANALYSIS = {"intervalSeconds": 1, "minRequests": 60, "maxErrorRateIncrease": 0.05,
                 "maxP99Ratio": 2.0, "minAgreement": 0.85, "failureLimit": 2}


@dataclass
class Load:
    """Closed-loop callers; every answer recorded with its time, status and predictor."""

    url: str
    threads: int = 3
    results: list[tuple[float, int, str | None]] = field(default_factory=list)
    _stop: threading.Event = field(default_factory=threading.Event)
    _workers: list[threading.Thread] = field(default_factory=list)

    def start(self) -> Load:
        for n in range(self.threads):
            t = threading.Thread(target=self._run, args=(n,), daemon=True)
            t.start()
            self._workers.append(t)
        return self

    def _run(self, n: int) -> None:
        with httpx.Client(timeout=30) as client:
            i = n
            while not self._stop.is_set():
                try:
                    r = client.post(self.url, json=infer_body(i))
                    self.results.append((time.time(), r.status_code,
                                         r.headers.get("x-seldon-predictor")))
                except httpx.HTTPError:
                    self.results.append((time.time(), -1, None))
                i += self.threads

    def stop(self) -> Load:
        self._stop.set()
        for t in self._workers:
            t.join()
        return self

    def statuses(self) -> Counter[int]:
        return Counter(status for _, status, _ in self.results)


@pytest.fixture(scope="module")
def rollout_stack(models_root: Path, tmp_path_factory: pytest.TempPathFactory
                  ) -> Iterator[Stack]:
    values = {"deployment": {"name": "breast-cancer", "namespace": "models"},
              "predictors": BASELINE}
    stack = start_stack(values, tmp_path_factory.mktemp("rollout-stack"), models_root)
    yield stack
    stop_stack(stack)


@pytest.fixture
def fresh_stack(rollout_stack: Stack) -> Stack:
    """The stack back at its baseline predictors, with no rollout on record."""
    resp = rollout_stack.admin.put("/admin/predictors", json={"predictors": BASELINE})
    assert resp.status_code == 200, resp.text
    FileStateStore(rollout_stack.state_dir).clear()
    rollout_stack.wait_all_live()
    return rollout_stack
