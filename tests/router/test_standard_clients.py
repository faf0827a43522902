"""A standard V2 client works against the router: tritonclient.http and tritonclient.grpc, in a
process of their own that knows nothing of this project, get the answers the router's own client
gets (real MLServer behind the real router)."""

from __future__ import annotations

import json
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path

import httpx
import numpy as np
import pytest

from serving import dataset

from .conftest import Stack, start_stack, stop_stack

pytestmark = pytest.mark.slow
CLIENT = Path(__file__).with_name("outside_v2_client.py")


@pytest.fixture(scope="module")
def lone_stack(models_root: Path, tmp_path_factory: pytest.TempPathFactory) -> Iterator[Stack]:
    values = {"deployment": {"name": "breast-cancer", "namespace": "models"},
              "predictors": [{"name": "stable", "version": "v1"}]}
    stack = start_stack(values, tmp_path_factory.mktemp("standard-clients"), models_root)
    yield stack
    stop_stack(stack)


def test_tritonclient_over_rest_and_grpc_gets_the_routers_answers(lone_stack: Stack) -> None:
    rows = dataset.sample_rows(5, seed=3)
    result = subprocess.run(
        [sys.executable, str(CLIENT), lone_stack.seldon_url, lone_stack.state["grpcTarget"],
         "models", "breast-cancer", "breast-cancer", json.dumps(rows.tolist())],
        capture_output=True, text=True, timeout=120)
    assert result.returncode == 0, result.stderr
    answers = json.loads(result.stdout)

    ours = httpx.post(lone_stack.infer_url, timeout=30, json={"inputs": [
        {"name": "input-0", "datatype": "FP64", "shape": list(rows.shape),
         "data": rows.ravel().tolist()}]}).json()
    expected = {o["name"]: np.asarray(o["data"]).reshape(o["shape"]) for o in ours["outputs"]}
    for transport in ("rest", "grpc"):
        got = answers[transport]
        assert got["ready"] is True, transport
        assert np.asarray(got["predict"]).ravel().tolist() == expected["predict"].ravel().tolist()
        np.testing.assert_allclose(np.asarray(got["predict_proba"]), expected["predict_proba"],
                                   rtol=1e-12)
    assert answers["grpc"]["inputs"] == ["input-0"]
