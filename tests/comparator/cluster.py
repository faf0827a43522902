"""A cluster's data plane, played against a live SeldonDeployment (the in-test API server's): Istio
splits calls by the predictors' traffic and mirrors them to the shadow; each predictor's executor
records its request metrics (Seldon's names, served for Prometheus) and logs its request and
answer to the URL its graph's logger names (the chart's comparator URL; the comparator here runs
on loopback, like a Service's cluster DNS name resolving to it)."""

from __future__ import annotations

import random
import threading
import uuid
from collections.abc import Callable
from typing import Any
from urllib.parse import urlparse

import httpx
import numpy as np
from prometheus_client import start_http_server

from serving.router.metrics import RouterMetrics
from serving.server import free_port

from .executors import ROWS, Executor, Labeller, post, stable_labels


class PlayedCluster:
    def __init__(self, sdep: Callable[[], dict[str, Any]], comparator_url: str,
                 candidate_labels: dict[str, Labeller]) -> None:
        self.sdep = sdep
        self.comparator_url = comparator_url
        self.candidate_labels = candidate_labels
        """Each version's answers (by the predictor's version label); others answer as v1."""
        self.metrics = RouterMetrics(sdep()["metadata"]["name"])
        self.port = free_port()
        self._server, _ = start_http_server(self.port, "127.0.0.1", self.metrics.registry)
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, daemon=True)
        self.calls = 0
        self.seen: set[tuple[str, str, str]] = set()
        """(predictor, version, role) of every executor that logged events."""
        self.events_refused = 0
        self.rng = random.Random(0)

    @property
    def metrics_target(self) -> str:
        return f"127.0.0.1:{self.port}"

    def start(self) -> PlayedCluster:
        self._thread.start()
        return self

    def stop(self) -> None:
        self._stop.set()
        self._thread.join(10)
        self._server.shutdown()

    def _executor(self, p: dict[str, Any], deployment: str) -> tuple[Executor, str | None]:
        logger = p["graph"].get("logger")
        path = urlparse(logger["url"]).path if logger else None
        role = "shadow" if path == "/events/shadow" else "primary"
        version = p["labels"]["version"]
        return Executor(deployment, p["name"], role,
                        self.candidate_labels.get(version, stable_labels)), path

    def _run(self) -> None:
        with httpx.Client(timeout=10) as client:
            while not self._stop.is_set():
                sdep = self.sdep()
                self.play(client, sdep, 20)
                self._stop.wait(0.05)

    def play(self, client: httpx.Client, sdep: dict[str, Any], n: int) -> None:
        deployment = sdep["metadata"]["name"]
        predictors = sdep["spec"]["predictors"]
        primaries = [p for p in predictors if not p.get("shadow")]
        shadows = [p for p in predictors if p.get("shadow")]
        weights = [p.get("traffic", 0) for p in primaries]
        for _ in range(n):
            rows = ROWS[self.rng.sample(range(len(ROWS)), 1)]
            puid = str(uuid.uuid4())  # a caller that sends Seldon-Puid: Istio copies it
            [primary] = self.rng.choices(primaries, weights=weights or None)
            called = [primary] + [s for s in shadows if self.rng.random() * 100 < s["traffic"]]
            for p in called:
                executor, path = self._executor(p, deployment)
                self.metrics.observe(p["name"], p["labels"]["version"], "infer", "POST", "200",
                                     0.004 + 0.001 * float(np.random.random()))
                if path is None:
                    continue
                self.seen.add((p["name"], p["labels"]["version"], executor.role))
                for message in executor.call(rows, puid):
                    resp = post(client, self.comparator_url, path.rsplit("/", 1)[-1], message)
                    if resp.status_code >= 400:
                        self.events_refused += 1
            self.calls += 1
