"""Fixtures for the local stack: the real `serving up` process (router + MLServer replicas)."""

from __future__ import annotations

import asyncio
import json
import subprocess
import time
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import httpx
import pytest
import yaml

from serving import dataset
from serving.router.stack import start_background, stop_background

ROWS = dataset.sample_rows(200, seed=11)


@dataclass
class Stack:
    """A running `serving up`, with what the tests need to talk to it."""

    process: subprocess.Popen[bytes]
    state_dir: Path
    log: Path

    @property
    def state(self) -> dict[str, Any]:
        return dict(json.loads((self.state_dir / "stack.json").read_text()))

    @property
    def seldon_url(self) -> str:
        return str(self.state["seldonUrl"])

    @property
    def infer_url(self) -> str:
        return f"{self.seldon_url}/v2/models/breast-cancer/infer"

    @property
    def admin(self) -> httpx.Client:
        return httpx.Client(base_url=self.state["restUrl"], timeout=60,
                            headers={"authorization": f"Bearer {self.state['adminToken']}"})

    def pin(self, predictor: str) -> dict[str, str]:
        """Headers (or gRPC metadata) that pin a predictor: the header and the pin token."""
        return {"x-seldon-predictor": predictor, "x-serving-pin-token": self.state["pinToken"]}

    def status(self) -> dict[str, Any]:
        return dict(httpx.get(self.state["restUrl"] + "/admin/status", timeout=10).json())

    def set_weights(self, weights: dict[str, int], mirror: int | None = None) -> None:
        body: dict[str, Any] = {"weights": weights}
        if mirror is not None:
            body["mirrorPercent"] = mirror
        resp = self.admin.put("/admin/traffic", json=body)
        assert resp.status_code == 200, resp.text

    def replica_pid(self, predictor: str, index: int = 0) -> int:
        for p in self.status()["predictors"]:
            if p["name"] == predictor:
                return int(p["replicas"][index]["pid"])
        raise KeyError(predictor)

    def reset(self, predictors: list[dict[str, Any]]) -> Stack:
        """Back to these predictors, with no rollout on record, every replica live."""
        from serving.rollout.state import FileStateStore

        resp = self.admin.put("/admin/predictors", json={"predictors": predictors})
        assert resp.status_code == 200, resp.text
        FileStateStore(self.state_dir).clear()
        self.wait_all_live()
        return self

    def wait_all_live(self, timeout: float = 60) -> None:
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            if all(r["alive"] for p in self.status()["predictors"] for r in p["replicas"]):
                return
            time.sleep(0.2)
        raise AssertionError(f"replicas not live after {timeout}s: {self.status()}")


def infer_body(i: int = 0) -> dict[str, Any]:
    row = ROWS[i % len(ROWS)]
    return {"inputs": [{"name": "input-0", "datatype": "FP64", "shape": [1, 30],
                        "data": row.tolist()}]}


def send_many(url: str, n: int, concurrency: int = 8,
              headers: Any = None) -> list[tuple[int, str | None, dict[str, Any] | None]]:
    """n inference requests, `concurrency` at a time; (status, served-by header, json body).
    `headers` may be a dict or a function of the request index."""

    async def run() -> list[tuple[int, str | None, dict[str, Any] | None]]:
        results: list[tuple[int, str | None, dict[str, Any] | None]] = [(0, None, None)] * n
        queue = iter(range(n))
        async with httpx.AsyncClient(timeout=30) as client:
            async def worker() -> None:
                for i in queue:
                    h = headers(i) if callable(headers) else headers
                    try:
                        r = await client.post(url, json=infer_body(i), headers=h)
                        body = r.json() if r.headers.get("content-type", "").startswith(
                            "application/json") else None
                        results[i] = (r.status_code, r.headers.get("x-seldon-predictor"), body)
                    except httpx.HTTPError as e:
                        results[i] = (-1, None, {"error": repr(e)})
            await asyncio.gather(*(worker() for _ in range(concurrency)))
        return results

    return asyncio.run(run())


def start_stack(values: dict[str, Any], tmp: Path, models_root: Path) -> Stack:
    # Shadow batches of 0.5 s rather than the default 2 s: the tests wait for comparisons
    values = {**values, "model": {**values.get("model", {}), "localRepository": str(models_root)},
              "router": {"port": 0, "grpcPort": 0, "shadow": {"batchWaitSeconds": 0.5},
                         **values.get("router", {})}}
    values_path = tmp / "values.yaml"
    values_path.write_text(yaml.safe_dump(values))
    process, _ = start_background(values_path, tmp / "state", tmp / "up.log")
    return Stack(process, tmp / "state", tmp / "up.log")


def stop_stack(stack: Stack) -> None:
    stop_background(stack.process)


SPLIT_VALUES = {
    "deployment": {"name": "breast-cancer", "namespace": "models"},
    "predictors": [
        {"name": "stable", "version": "v1", "traffic": 90, "replicas": 2},
        {"name": "canary", "version": "v2", "traffic": 10},
        # the naive baseline as shadow: it disagrees with stable on about a third of rows
        {"name": "shadow", "version": "v4", "shadow": True, "traffic": 100},
    ],
    "router": {"stickyHeader": "x-user-id", "maxBodyBytes": 65536},
}


@pytest.fixture(scope="module")
def stack(models_root: Path, tmp_path_factory: pytest.TempPathFactory) -> Iterator[Stack]:
    s = start_stack(SPLIT_VALUES, tmp_path_factory.mktemp("stack"), models_root)
    yield s
    stop_stack(s)
