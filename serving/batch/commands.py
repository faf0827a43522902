"""`serving batch score`: score files in-process or through a deployment (see run.score)."""

from __future__ import annotations

from pathlib import Path

import click

from ..cli_common import DEFAULT_VALUES, friendly_errors
from .errors import BatchError, RowsRejected
from .run import DEFAULT_CHUNK_ROWS, Options, score
from .scorers import DeploymentScorer, GrpcScorer, RestScorer, Scorer, in_process_from_spec


def _headers(values: tuple[str, ...]) -> dict[str, str]:
    out = {}
    for item in values:
        name, sep, value = item.partition(":")
        if not sep or not name.strip():
            raise BatchError(f"--header {item!r}: use 'Name: value'")
        out[name.strip()] = value.strip()
    return out


def _shard(value: str) -> tuple[int, int]:
    try:
        i, n = (int(v) for v in value.split("/"))
    except ValueError:
        raise BatchError(f"--shard {value!r}: use i/n, e.g. 0/4") from None
    return i, n


@click.group("batch")
def batch() -> None:
    """Batch predictions: score CSV/Parquet files, resumable (see README, 'Batch predictions')."""


@batch.command("score")
@click.argument("source", nargs=-1, required=True)
@click.option("--out", required=True,
              help="Output folder of part files (Parquet, or CSV with --format csv), or a SQL "
              "URL (sqlite:///predictions.db, postgresql+psycopg://user@host/db).")
@click.option("--format", "fmt", type=click.Choice(["parquet", "csv"]), default=None,
              help="Part file format (default parquet).")
@click.option("--table", default="predictions", show_default=True, help="SQL table.")
@click.option("--values", "values_path", default=DEFAULT_VALUES, show_default=True,
              help="The deployment spec: model name, stable version, artifact digests, "
              "deployment name/namespace (gRPC metadata).")
@click.option("--models", type=click.Path(path_type=Path), default=None,
              help="Model repository for in-process scoring (default model.localRepository).")
@click.option("--version", default=None,
              help="Model version (in-process default: the stable predictor's; through a "
              "deployment: /versions/<version>/infer, default whatever the deployment serves).")
@click.option("--url", default=None,
              help="Score through a deployment over V2 REST: its base URL, e.g. "
              "http://127.0.0.1:8003/seldon/models/breast-cancer (router or ingress) or "
              "http://breast-cancer-stable.models.svc:8000 (a predictor's Service).")
@click.option("--grpc", "grpc_target", default=None,
              help="Score through a deployment over V2 gRPC: host:port (the seldon and "
              "namespace metadata come from --values).")
@click.option("--model", "model_name", default=None,
              help="Through a deployment: the model in /v2/models/<model>/infer (default: "
              "model.name of --values; with --model the values file is optional).")
@click.option("--header", "headers", multiple=True,
              help="'Name: value' sent with every request (REST header, gRPC metadata); "
              "repeatable.")
@click.option("--rows-per-request", default=512, show_default=True, type=click.IntRange(1))
@click.option("--concurrency", default=8, show_default=True, type=click.IntRange(1),
              help="Requests in flight at once.")
@click.option("--retries", default=5, show_default=True, type=click.IntRange(0),
              help="Times a request is sent again after a 429, 5xx, connection error or "
              "timeout (exponential backoff with jitter).")
@click.option("--timeout", default=30.0, show_default=True, type=click.FloatRange(0.001),
              help="Per-request timeout, seconds.")
@click.option("--chunk-rows", default=DEFAULT_CHUNK_ROWS, show_default=True,
              type=click.IntRange(1), help="Rows per chunk (one part file, one manifest line).")
@click.option("--id-column", default=None, help="Column carried to the output as 'id'.")
@click.option("--columns", type=click.Choice(["auto", "name", "position"]), default="auto",
              show_default=True,
              help="Find the features by name, by position, or auto: by name when the file "
              "names them, else by position.")
@click.option("--no-header", is_flag=True, help="CSV files have no header row.")
@click.option("--state-dir", type=click.Path(path_type=Path), default=None,
              help="Manifest folder for SQL outputs (default .serving/batch/<table>-<hash>).")
@click.option("--batch-id", default=None, help="Batch id (default: a new one, kept on resume).")
@click.option("--overwrite", is_flag=True, help="Start over: drop the output's parts and "
              "manifest (SQL: a new batch id; old rows stay, keyed by batch_id).")
@click.option("--shard", default="0/1", show_default=True,
              help="Score only shard i of n (parallel runs into one output).")
@click.option("--quiet", is_flag=True, help="No progress output.")
@click.option("--json", "as_json", is_flag=True, help="Print the summary as JSON.")
@friendly_errors
def score_command(
    source: tuple[str, ...], out: str, fmt: str | None, table: str, values_path: str,
    models: Path | None, version: str | None, url: str | None, grpc_target: str | None,
    model_name: str | None, headers: tuple[str, ...], rows_per_request: int, concurrency: int, retries: int,
    timeout: float, chunk_rows: int, id_column: str | None, columns: str, no_header: bool,
    state_dir: Path | None, batch_id: str | None, overwrite: bool, shard: str, quiet: bool,
    as_json: bool,
) -> None:
    """Score SOURCE (CSV or Parquet files, folders or globs) into --out, in-process from a
    verified model version, or through a deployment with --url (REST) or --grpc.

    Every output row: file, row (0-based data row), id (with --id-column), prediction,
    proba_<class>, model_version, predictor (x-seldon-predictor, or in-process), batch_id,
    scored_at. Killed and run again with the same arguments, it resumes: every row exactly
    once. Exit code 5: the run finished but rows were rejected (<out>/_rejects.csv)."""
    from ..dataset import load
    from ..spec import load_spec

    if url and grpc_target:
        raise BatchError("pass --url (REST) or --grpc, not both")
    scorer: Scorer
    if url or grpc_target:
        # The CronJob passes --model and no values file; the gRPC metadata the Seldon ingress
        # routes by then comes from --header, if it is needed at all (not for a Service).
        spec = None if model_name and not Path(values_path).exists() else load_spec(values_path)
        model = model_name or (spec.model.name if spec else "")
        kw = {"rows_per_request": rows_per_request, "concurrency": concurrency,
              "retries": retries}
        extra = _headers(headers)
        deployment: DeploymentScorer
        if url:
            deployment = RestScorer(url, model, version, extra, timeout, **kw)
        else:
            seldon = ({"seldon": spec.deployment.name, "namespace": spec.deployment.namespace}
                      if spec else {})
            deployment = GrpcScorer(str(grpc_target), model, version, {**seldon, **extra},
                                    timeout, **kw)
        scorer, features = deployment, load().feature_names
        key = deployment.description + (f" version {version}" if version else "")
    else:
        scorer, features, key = in_process_from_spec(values_path, models, version)
    options = Options(chunk_rows=chunk_rows, id_column=id_column, columns=columns,  # type: ignore[arg-type]
                      header=not no_header, fmt=fmt, table=table, state_dir=state_dir,
                      batch_id=batch_id, overwrite=overwrite, shard=_shard(shard),
                      progress=not quiet)
    try:
        summary = score(list(source), out, scorer, features, key, options)
    finally:
        scorer.close()
    click.echo(summary.to_json() if as_json else summary.text())
    if summary.rows_rejected:
        raise RowsRejected(f"{summary.rows_rejected} rows rejected; see {summary.rejects_file}")


COMMANDS: list[click.Command] = [batch]
