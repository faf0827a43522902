"""No request fails, or gets another answer, because of another caller's request.

A real MLServer with the tuned settings (batching 32 requests / 1 ms) gets many concurrent good
requests over REST and gRPC (flat, nested, several rows, INT64, FP32, gRPC raw contents, one output
only) interleaved with a wide set of malformed ones (serving.bench.isolation): every good one must
be answered 200 / OK with what the model gives on its rows alone, every malformed one refused with
400 / INVALID_ARGUMENT naming the field (422 naming it for bodies that are not V2 JSON at all).
With MLServer's own adaptive batching, 232 of 2,270 good requests failed in one probe, and others
got wrong answers (another request's datatype, outputs or misaligned rows).
"""

from __future__ import annotations

import asyncio
from collections.abc import Iterator
from pathlib import Path

import joblib
import pytest

from serving.bench import isolation
from serving.server import MLServerProcess

from .conftest import MODEL, start_mlserver, tuned


@pytest.fixture(scope="module")
def tuned_v1(models_root: Path, tmp_path_factory: pytest.TempPathFactory
             ) -> Iterator[MLServerProcess]:
    # scikit-learn serves (the spec names no digest for v1's model.onnx): the runtime batches
    # only models that answer a row slower than a batch costs, and the compiled v1 does not
    settings = tuned()
    settings = settings.model_copy(update={"artifact_digests": {
        k: d for k, d in settings.artifact_digests.items() if k != "v1/model.onnx"}})
    assert settings.max_batch_size == 32 and settings.max_batch_time == 0.001
    server = start_mlserver(models_root / MODEL / "v1", tmp_path_factory.mktemp("logs"), settings)
    assert "batching 32 requests / 1 ms, of checked rows" in server.recent_log()
    yield server
    server.stop()


def test_malformed_requests_never_fail_or_change_the_answers_of_concurrent_good_ones(
    tuned_v1: MLServerProcess, models_root: Path
) -> None:
    model = joblib.load(models_root / MODEL / "v1" / "model.joblib")
    cases = len(isolation.MALFORMED_REST) + len(isolation.MALFORMED_GRPC)
    # one malformed request after every second good one: each case is sent about 4 times
    report = asyncio.run(isolation.probe(tuned_v1.rest_url, tuned_v1.grpc_target, model,
                                         n_good=8 * cases, concurrency=32, bad_every=2))
    lines: list[str] = []
    isolation.print_report(report, "tuned", out=lines.append)
    text = "\n".join(lines)
    assert report.good_right == 8 * cases, text
    assert not report.good_failed and not report.good_wrong, text
    assert set(report.bad) == {f"REST {c}" for c in isolation.MALFORMED_REST} | {
        f"gRPC {c}" for c in isolation.MALFORMED_GRPC}, text
    for case, verdicts in report.bad.items():
        assert set(verdicts) == {"refused, names the field"}, f"{case}: {verdicts}\n{text}"
