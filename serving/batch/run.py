"""score(): read chunks, score them, write each chunk's predictions, record it as finished.

The command, the Metaflow flow and the chart's CronJob all call this. A run can be one shard of
several (the flow's foreach): shard i of n takes the chunks whose key hashes to i, keeps its own
manifest, and finish() puts the shards' rejects and counts together.
"""

from __future__ import annotations

import time
import zlib
from collections.abc import Sequence
from dataclasses import dataclass
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import numpy as np
import pyarrow as pa

from . import inputs, manifest, outputs, rejects
from .errors import BatchError
from .manifest import ChunkRecord, Manifest
from .progress import Progress
from .rejects import Reject
from .scorers import Scored, Scorer
from .summary import Summary

DEFAULT_CHUNK_ROWS = 50_000


@dataclass
class Options:
    chunk_rows: int = DEFAULT_CHUNK_ROWS
    id_column: str | None = None
    columns: inputs.ColumnsBy = "auto"
    header: bool = True
    fmt: str | None = None
    table: str = "predictions"
    state_dir: Path | None = None
    batch_id: str | None = None
    overwrite: bool = False
    shard: tuple[int, int] = (0, 1)
    progress: bool = True


def shard_of(key: str, shards: int) -> int:
    return zlib.crc32(key.encode()) % shards


def manifest_name(shard: tuple[int, int]) -> str:
    i, n = shard
    return "manifest.jsonl" if n == 1 else f"manifest-{i}-of-{n}.jsonl"


def _repeated(values: np.ndarray) -> pa.Array:
    """A string column that repeats a few values (version, predictor), dictionary-encoded:
    cheaper to build and to store than one string per row."""
    if len(values) and (values == values[0]).all():
        return _constant(str(values[0]), len(values))
    return pa.array(values, pa.string()).dictionary_encode()


def _constant(value: str, n: int) -> pa.Array:
    return pa.DictionaryArray.from_arrays(pa.array(np.zeros(n, dtype=np.int32)),
                                          pa.array([value], pa.string()))


def output_table(chunk: inputs.Chunk, scored: Scored, keep: np.ndarray, batch_id: str,
                 scored_at: datetime) -> pa.Table:
    m = int(keep.sum())
    columns: dict[str, Any] = {
        "file": _constant(chunk.file, m),
        "row": pa.array(chunk.rows[keep], pa.int64()),
    }
    if chunk.ids is not None:
        columns["id"] = pa.array([i for i, k in zip(chunk.ids, keep, strict=True) if k],
                                 pa.string())
    columns["prediction"] = pa.array(scored.labels[keep], pa.int64())
    for j in range(scored.proba.shape[1]):
        columns[f"proba_{j}"] = pa.array(scored.proba[keep, j], pa.float64())
    columns["model_version"] = _repeated(scored.versions[keep])
    columns["predictor"] = _repeated(scored.predictors[keep])
    columns["batch_id"] = _constant(batch_id, m)
    at = np.datetime64(int(scored_at.timestamp() * 1000), "ms")
    columns["scored_at"] = pa.array(np.full(m, at), pa.timestamp("ms", tz="UTC"))
    return pa.table(columns)


def score(
    source: str | Sequence[str],
    out: str,
    scorer: Scorer,
    features: list[str],
    scorer_key: str,
    options: Options | None = None,
) -> Summary:
    """Score every row of `source` into `out` with `scorer`, resuming from the manifest.
    `scorer_key` says what scores (model version and digest, or the URL) for the manifest's
    check that a resumed run is the same run."""
    o = options or Options()
    if o.chunk_rows < 1:
        raise BatchError(f"--chunk-rows {o.chunk_rows}: must be at least 1")
    i, n = o.shard
    if not 0 <= i < n:
        raise BatchError(f"shard {i} of {n}: the index must be in 0..{n - 1}")
    sources = [source] if isinstance(source, str) else list(source)
    files = [f for s in sources for f in inputs.resolve(s)]
    output = outputs.open_output(out, o.fmt, o.table, o.state_dir)
    resuming = not o.overwrite and any(output.state_dir.glob("manifest*.jsonl"))
    output.prepare(o.overwrite, resuming)
    run = {"inputs": inputs.identity(files), "scorer": scorer_key, "chunkRows": o.chunk_rows,
           "idColumn": o.id_column, "columns": o.columns, "header": o.header,
           "shard": [i, n], "output": output.location, "format": o.fmt or "parquet"}
    book = Manifest(output.state_dir / manifest_name(o.shard), run, o.batch_id)
    done = frozenset(book.done)
    names = inputs.schema_names(files[0], o.header)
    _, columns_by = inputs.feature_columns(names, features, o.id_column, o.columns,
                                           f"input {files[0]}")
    total = sum(inputs.count_rows(f, o.header) or 0 for f in files)
    already = sum(r.rows + len(r.rejects) for r in book.done.values())
    progress = Progress(total // n if n > 1 else total, already, enabled=o.progress)
    started = time.monotonic()
    resumed = this_run = 0
    try:
        for chunk in inputs.iter_chunks(
            files, features, o.chunk_rows, o.id_column, o.columns, o.header,
            convert=lambda key: key not in done and shard_of(key, n) == i,
        ):
            if shard_of(chunk.key, n) != i:
                continue
            if chunk.key in done:
                resumed += 1
                continue
            record = _score_chunk(chunk, scorer, output, book.batch_id)
            book.record(record)
            this_run += record.rows
            progress.advance(record.rows + len(record.rejects))
    finally:
        progress.close()
    summary = finish(output, {"columns_by": columns_by})
    summary.chunks_resumed = resumed
    summary.rows_this_run = this_run
    summary.elapsed_seconds = time.monotonic() - started
    return summary


def _score_chunk(chunk: inputs.Chunk, scorer: Scorer, output: outputs.Output,
                 batch_id: str) -> ChunkRecord:
    found = list(chunk.rejects)
    record = ChunkRecord(chunk.key, chunk.file, 0)
    if len(chunk.x):
        scored = scorer.score(chunk.x)
        keep = np.ones(len(chunk.x), dtype=bool)
        for at, reason in scored.refused.items():
            keep[at] = False
            found.append(Reject(chunk.file, int(chunk.rows[at]), reason))
        table = output_table(chunk, scored, keep, batch_id, datetime.now(UTC))
        if table.num_rows:
            output.write(chunk.key, table)
        record.rows = table.num_rows
        record.requests, record.retried = scored.requests, scored.retried
        record.predictors, record.versions = scored.counts()
    record.rejects = sorted(found, key=lambda r: r.row)
    return record


def finish(output: outputs.Output, fields: dict[str, Any] | None = None) -> Summary:
    """Put every shard's manifest together: the rejects file and the summary (also written to
    <state>/summary.json)."""
    books = manifest.read_all(output.state_dir)
    if not books:
        raise BatchError(f"{output.state_dir}: no manifest; nothing was scored into "
                         f"{output.location}")
    records = {r.key: r for _, rs in books for r in rs}
    batch_id = books[0][0]["batchId"]
    found = [rej for r in records.values() for rej in r.rejects]
    rejects.write(output.rejects_path, found)
    summary = Summary.of(list(records.values()), batch_id=batch_id, output=output.location,
                         rejects_file=str(output.rejects_path), **(fields or {}))
    (output.state_dir / "summary.json").write_text(summary.to_json() + "\n")
    return summary
