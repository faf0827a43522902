"""Scoring through a deployment: the real local stack (`serving up`: nginx router + MLServer
replicas), over REST and gRPC, with the Seldon prefix and metadata, against in-process."""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

import numpy as np
import pytest

from serving.batch.errors import BatchAborted
from serving.batch.run import Options, score
from serving.batch.scorers import GrpcScorer, RestScorer, Scorer, in_process_from_spec
from serving.dataset import load
from serving.server import free_port

from ..router.conftest import Stack, start_stack, stop_stack
from .conftest import read_parts, run_cli

MODEL = "breast-cancer"
FEATURES = load().feature_names
# Two predictors of the same version: 'flaky' fails about 30% of its requests with a 500 (the
# runtime's fault switch), so retries can be seen against real processes.
VALUES = {
    "deployment": {"name": "breast-cancer", "namespace": "models"},
    "predictors": [
        {"name": "stable", "version": "v1", "traffic": 50},
        {"name": "flaky", "version": "v1", "traffic": 50,
         "env": {"SERVING_FAULT_ERROR_RATE": "0.3"}},
    ],
}


@pytest.fixture(scope="module")
def stack(models_root: Path, tmp_path_factory: pytest.TempPathFactory) -> Iterator[Stack]:
    from ..conftest import TRAINED_DIGESTS

    values = {**VALUES, "model": {"artifacts": dict(TRAINED_DIGESTS)}}
    s = start_stack(values, tmp_path_factory.mktemp("batch-stack"), models_root)
    yield s
    stop_stack(s)


def run(scorer: Scorer, source: Path, out: Path, key: str) -> None:
    try:
        score(str(source), str(out), scorer, FEATURES, key,
              Options(progress=False, id_column="claim_id", chunk_rows=60))
    finally:
        scorer.close()


def test_rest_and_grpc_through_the_stack_give_the_in_process_predictions(
    stack: Stack, holdout: Path, spec_file: Path, models_root: Path, tmp_path: Path
) -> None:
    scorer, features, key = in_process_from_spec(spec_file, models_root)
    score(str(holdout), str(tmp_path / "local"), scorer, features, key,
          Options(progress=False, id_column="claim_id"))
    pin = stack.pin("stable")
    run(RestScorer(stack.seldon_url, MODEL, headers=pin, rows_per_request=16, concurrency=4,
                   retries=0), holdout, tmp_path / "rest", "rest")
    grpc = GrpcScorer(stack.state["grpcTarget"], MODEL,
                      metadata={"seldon": "breast-cancer", "namespace": "models", **pin},
                      rows_per_request=7, concurrency=3, retries=0)
    run(grpc, holdout, tmp_path / "grpc", "grpc")
    local = read_parts(tmp_path / "local")
    for name in ("rest", "grpc"):
        got = read_parts(tmp_path / name)
        assert got["id"].tolist() == local["id"].tolist(), name
        assert np.array_equal(got["prediction"], local["prediction"]), name
        assert np.allclose(got[["proba_0", "proba_1"]], local[["proba_0", "proba_1"]],
                           rtol=0, atol=1e-9), name
        assert set(got["predictor"]) == {"stable"}, name  # from x-seldon-predictor
        assert set(got["model_version"]) == {"v1"}, name
    assert set(local["predictor"]) == {"in-process"}


def test_the_cli_over_grpc_splits_by_the_routers_weights_and_counts_each_predictor(
    stack: Stack, holdout: Path, tmp_path: Path, spec_file: Path
) -> None:
    # no pin: the router splits 50/50 between stable and flaky; flaky's 500s are retried
    out = tmp_path / "out"
    done = run_cli(str(holdout), "--grpc", stack.state["grpcTarget"], "--values",
                   str(spec_file), "--out", str(out), "--rows-per-request", "1",
                   "--concurrency", "8", "--retries", "10", "--json", "--quiet")
    assert done.returncode == 0, done.stderr
    import json

    summary = json.loads(done.stdout)
    assert summary["rows_scored"] == 143
    assert set(summary["per_predictor"]) == {"stable", "flaky"}
    assert sum(summary["per_predictor"].values()) == 143
    assert summary["retried"] > 0 and summary["requests"] == 143 + summary["retried"]
    assert sorted(read_parts(out)["row"]) == list(range(143))


def test_failed_requests_are_retried_and_the_summary_counts_them(
    stack: Stack, holdout: Path, tmp_path: Path
) -> None:
    scorer = RestScorer(stack.seldon_url, MODEL, headers=stack.pin("flaky"),
                        rows_per_request=5, concurrency=4, retries=10, backoff_base=0.01)
    try:
        summary = score(str(holdout), str(tmp_path / "out"), scorer, FEATURES, "flaky",
                        Options(progress=False, chunk_rows=50))
    finally:
        scorer.close()
    requests = -(-50 // 5) * 2 + -(-43 // 5)  # 29 requests of at most 5 rows
    assert summary.rows_scored == 143 and summary.rows_rejected == 0
    assert summary.retried > 0, "30% of 29 requests failed and none was retried?"
    assert summary.requests == requests + summary.retried
    assert summary.per_predictor == {"flaky": 143}
    got = read_parts(tmp_path / "out")
    assert sorted(got["row"]) == list(range(143))


def test_a_deployment_that_stays_down_stops_the_run_and_says_how_to_resume(
    holdout: Path, tmp_path: Path
) -> None:
    url = f"http://127.0.0.1:{free_port()}/seldon/models/breast-cancer"  # nothing listens
    scorer = RestScorer(url, MODEL, rows_per_request=50, concurrency=1, retries=2,
                        backoff_base=0.01, timeout=2)
    with pytest.raises(BatchAborted, match="failed 3 times.*ConnectError.*resume"):
        score(str(holdout), str(tmp_path / "out"), scorer, FEATURES, "down",
              Options(progress=False))
    scorer.close()


def test_the_cronjobs_rendered_command_scores_through_the_deployment(
    stack: Stack, holdout: Path, tmp_path: Path
) -> None:
    """The chart's command as rendered, its volumes as local folders, its Service as the
    local router (the Job's pod would reach the stable predictor's executor)."""
    from serving.k8s import chart

    [job] = [o for o in chart.render({"batch": {"enabled": True, "idColumn": "claim_id",
                                                "input": "/data/in/holdout.parquet"}}).objects
             if o["kind"] == "CronJob"]
    cmd = job["spec"]["jobTemplate"]["spec"]["template"]["spec"]["containers"][0]["command"]
    (tmp_path / "in").mkdir()
    (tmp_path / "in" / "holdout.parquet").write_bytes(holdout.read_bytes())
    job_name = "breast-cancer-batch-29412345"
    args = [a.replace("/data/in", str(tmp_path / "in")).replace("/data/out", str(tmp_path / "out"))
            .replace("$(JOB_NAME)", job_name)
            .replace("http://breast-cancer-stable.models.svc:8000", stack.seldon_url)
            for a in cmd]
    assert args[:3] == ["serving", "batch", "score"]
    done = run_cli(*args[3:], "--values", str(tmp_path / "no-values-in-the-pod.yaml"))
    assert done.returncode == 0, done.stderr
    got = read_parts(tmp_path / "out" / "predictions" / job_name)
    assert sorted(got["row"]) == list(range(143)) and set(got["batch_id"]) == {job_name}
