"""A small real HTTP server (aiohttp, its own thread) that answers like a V2 deployment but sends
429s and refuses some rows with 400: retries honour Retry-After, and a refused request is split
down to the rows it refuses, which become rejects; the others are scored."""

from __future__ import annotations

import asyncio
import threading
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd
import pytest
from aiohttp import web

from serving.batch.run import Options, score
from serving.batch.scorers import RestScorer
from serving.dataset import load
from serving.server import free_port

from .conftest import frame, read_parts

MARK = -1.0  # a row whose first feature is this is refused by the server


class FussyServer:
    def __init__(self) -> None:
        self.port = free_port()
        self.requests = 0
        self.too_many = 0
        self._loop = asyncio.new_event_loop()
        self._runner: web.AppRunner | None = None

    async def infer(self, request: web.Request) -> web.Response:
        self.requests += 1
        if self.requests % 4 == 1:  # every fourth request: slow down, retry after 0 s
            self.too_many += 1
            return web.json_response({"error": "slow down"}, status=429,
                                     headers={"retry-after": "0"})
        body: dict[str, Any] = await request.json()
        x = np.asarray(body["inputs"][0]["data"], dtype=float).reshape(body["inputs"][0]["shape"])
        if (x[:, 0] == MARK).any():
            return web.json_response({"error": "row out of range"}, status=400)
        p = (x[:, 0] > 15).astype(float)
        return web.json_response(
            {"model_name": "breast-cancer", "model_version": "v9", "outputs": [
                {"name": "predict", "datatype": "INT64", "shape": [len(x), 1],
                 "data": p.astype(int).tolist()},
                {"name": "predict_proba", "datatype": "FP64", "shape": [len(x), 2],
                 "data": np.column_stack([1 - p, p]).ravel().tolist()}]},
            headers={"x-seldon-predictor": "fussy"})

    def start(self) -> FussyServer:
        app = web.Application()
        app.router.add_post("/v2/models/breast-cancer/infer", self.infer)

        async def up() -> None:
            self._runner = web.AppRunner(app)
            await self._runner.setup()
            await web.TCPSite(self._runner, "127.0.0.1", self.port).start()

        threading.Thread(target=self._loop.run_forever, daemon=True).start()
        asyncio.run_coroutine_threadsafe(up(), self._loop).result(10)
        return self

    def stop(self) -> None:
        assert self._runner is not None
        asyncio.run_coroutine_threadsafe(self._runner.cleanup(), self._loop).result(10)
        self._loop.call_soon_threadsafe(self._loop.stop)


@pytest.fixture
def fussy() -> Iterator[FussyServer]:
    server = FussyServer().start()
    yield server
    server.stop()


def test_refused_rows_are_found_and_rejected_and_429s_are_retried(
    fussy: FussyServer, tmp_path: Path
) -> None:
    df = frame()
    refused = [5, 77, 78, 140]
    df.loc[refused, "mean radius"] = MARK
    source = tmp_path / "in.parquet"
    df.to_parquet(source)
    scorer = RestScorer(f"http://127.0.0.1:{fussy.port}", "breast-cancer", rows_per_request=32,
                        concurrency=2, retries=6, backoff_base=0.01)
    try:
        summary = score(str(source), str(tmp_path / "out"), scorer, load().feature_names, "x",
                        Options(progress=False, id_column="claim_id", chunk_rows=100))
    finally:
        scorer.close()
    assert summary.rows_scored == 143 - len(refused) and summary.rows_rejected == len(refused)
    assert summary.retried == fussy.too_many > 0 and summary.requests == fussy.requests
    rejects = pd.read_csv(tmp_path / "out" / "_rejects.csv")
    assert rejects["row"].tolist() == refused
    assert all("refused the row: 400" in r for r in rejects["reason"])
    got = read_parts(tmp_path / "out")
    assert sorted(got["row"]) == sorted(set(range(143)) - set(refused))
    assert set(got["predictor"]) == {"fussy"} and set(got["model_version"]) == {"v9"}
    expected = (df.drop(index=refused)["mean radius"] > 15).astype(int).to_numpy()
    assert np.array_equal(got["prediction"].to_numpy(), expected)
