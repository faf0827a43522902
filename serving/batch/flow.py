# Metaflow's Parameters are class attributes typed Parameter that read as their values at run
# time, which mypy cannot know:
# mypy: disable-error-code="arg-type,call-overload"
"""Batch predictions as a Metaflow flow: start -> load_model -> score (foreach shard) -> join ->
end, scheduled hourly once deployed to a scheduler (Argo Workflows).

Locally (no cloud configuration; `make batch` does this on the hold-out set):
    METAFLOW_HOME=/tmp/mf METAFLOW_DATASTORE_SYSROOT_LOCAL=/tmp/mf \\
        python serving/batch/flow.py run --input data.parquet --out predictions/
Every step calls the same functions as `serving batch score` (serving.batch.run): each shard is a
resumable run of its own into the shared output folder, join puts their rejects and counts
together. `python flow.py resume` after a failure reruns only what did not finish, and a shard
that is run again skips its finished chunks.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

from metaflow import FlowSpec, Parameter, current, schedule, step  # type: ignore[attr-defined]

from serving.batch import inputs
from serving.batch.outputs import open_output
from serving.batch.run import DEFAULT_CHUNK_ROWS, Options, finish, score
from serving.batch.scorers import RestScorer, Scorer, in_process_from_spec
from serving.cli_common import DEFAULT_VALUES


@schedule(hourly=True)
class BatchScoreFlow(FlowSpec):
    """Score CSV/Parquet files with a verified model version (or a deployment's URL)."""

    source = Parameter("input", required=True, help="CSV/Parquet file, folder or glob to score.")
    out = Parameter("out", default="", help="Output folder (default: ./predictions/<run id>).")
    values = Parameter("values", default=DEFAULT_VALUES,
                       help="Deployment spec: stable version and artifact digests.")
    models = Parameter("models", default="", help="Model repository (default from --values).")
    version = Parameter("version", default="", help="Model version (default: the stable one).")
    url = Parameter("url", default="",
                    help="Score through this deployment (V2 REST base URL) instead of in-process.")
    shards = Parameter("shards", default=2, type=int, help="Parallel score tasks.")
    chunk_rows = Parameter("chunk-rows", default=DEFAULT_CHUNK_ROWS, type=int)
    id_column = Parameter("id-column", default="", help="Input column carried as 'id'.")

    def _scorer(self) -> tuple[Scorer, list[str], str]:
        if self.url:
            from serving.dataset import load
            from serving.spec import load_spec

            model = load_spec(self.values).model.name
            rest = RestScorer(self.url, model, self.version or None, rows_per_request=512,
                              concurrency=8, retries=5)
            return rest, load().feature_names, rest.description
        return in_process_from_spec(self.values, self.models or None, self.version or None)

    @step
    def start(self) -> None:
        """The input files and where the predictions go."""
        self.files = [str(f.resolve()) for f in inputs.resolve(self.source)]
        self.output = str(Path(self.out or Path("predictions") / str(current.run_id)).resolve())
        self.batch_id = f"{current.flow_name}-{current.run_id}"
        self.next(self.load_model)

    @step
    def load_model(self) -> None:
        """Verify the model version against the spec's digests (or reach the deployment) and
        record what scores; each score task loads it again, verified, in its own process."""
        scorer, self.features, self.scorer_key = self._scorer()
        meta = getattr(scorer, "meta", None)
        self.model = meta.model_dump(mode="json") if meta is not None else {"url": self.url}
        scorer.close()
        self.shard_ids = list(range(max(int(self.shards), 1)))
        self.next(self.score, foreach="shard_ids")

    @step
    def score(self) -> None:
        """One shard of the chunks, resumable on its own."""
        shard = int(self.input or 0)
        scorer, features, key = self._scorer()
        try:
            summary = score(self.files, self.output, scorer, features, key, Options(
                chunk_rows=int(self.chunk_rows), id_column=self.id_column or None,
                shard=(shard, len(self.shard_ids)), batch_id=self.batch_id, progress=False))
        finally:
            scorer.close()
        self.shard_rows = summary.rows_this_run
        self.next(self.join)

    @step
    def join(self, shards: Any) -> None:
        """All shards' rejects and counts together."""
        self.merge_artifacts(shards, exclude=["shard_rows"])
        self.summary = json.loads(finish(open_output(self.output)).to_json())
        self.next(self.end)

    @step
    def end(self) -> None:
        s = self.summary
        print(f"{s['rows_scored']} rows scored, {s['rows_rejected']} rejected, batch "
              f"{s['batch_id']}, by {', '.join(sorted(s['per_predictor']))}")
        print(f"predictions: {self.output}")
        if s["rows_rejected"]:
            print(f"rejects: {s['rejects_file']}")


if __name__ == "__main__":
    BatchScoreFlow()
