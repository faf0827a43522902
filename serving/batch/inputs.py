"""Input files -> fixed-size chunks of feature rows, streamed (memory stays bounded).

A source is a file, a folder (its *.csv / *.parquet files, not recursive) or a glob. Chunks are cut
at the same rows on every run with the same arguments, which is what lets a manifest of finished
chunks resume a killed run exactly: chunk <file>:<n> is always the same rows.

Feature columns are found by name when the file has every feature name the model was trained on
(any order, other columns ignored), else by position (the first N columns that are not the id
column); `columns="name"` or `"position"` forces one. Row numbers are 0-based data rows of their
file (the header is not a row). Rows that cannot be scored (wrong number of fields, empty cells,
non-numbers, NaN/inf) come out as rejects with their row number and the reason.
"""

from __future__ import annotations

import glob as globlib
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Literal

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc
import pyarrow.csv as pacsv
import pyarrow.parquet as pq

from .errors import BatchError
from .rejects import Reject

FORMATS = {".csv": "csv", ".parquet": "parquet", ".pq": "parquet"}
ColumnsBy = Literal["auto", "name", "position"]
CSV_BLOCK_BYTES = 4 << 20  # pyarrow reads CSV in blocks of this size: bounds memory


@dataclass
class Chunk:
    file_index: int
    file: str
    index: int
    """Chunk number within its file."""
    rows: np.ndarray
    """0-based data row numbers of the scorable rows."""
    x: np.ndarray
    """float64 [len(rows), n_features]."""
    ids: list[str] | None
    rejects: list[Reject] = field(default_factory=list)

    @property
    def key(self) -> str:
        return f"{self.file_index:05d}-{self.index:06d}"


def resolve(source: str) -> list[Path]:
    """The input files of a file, folder or glob, sorted (the order is part of the chunk keys)."""
    path = Path(source)
    if any(c in source for c in "*?["):
        files = [Path(p) for p in sorted(globlib.glob(source))]
    elif path.is_dir():
        files = sorted(p for p in path.iterdir() if p.suffix.lower() in FORMATS
                       and not p.name.startswith((".", "_")))
    elif path.is_file():
        files = [path]
    else:
        raise BatchError(f"input {source}: no such file or folder; pass a CSV or Parquet file, a "
                         "folder of them or a glob such as 'data/*.parquet'")
    files = [f for f in files if f.is_file()]
    if not files:
        raise BatchError(f"input {source}: no .csv or .parquet files there")
    for f in files:
        if f.suffix.lower() not in FORMATS:
            raise BatchError(f"input {f}: unknown format {f.suffix!r}; use .csv or .parquet")
    return files


def identity(files: list[Path]) -> list[list[object]]:
    """What a resumed run must find unchanged: path, size and modification time of each file."""
    out: list[list[object]] = []
    for f in files:
        st = f.stat()
        out.append([str(f.resolve()), st.st_size, st.st_mtime_ns])
    return out


def count_rows(path: Path, header: bool = True) -> int | None:
    """Rows in a file, for the progress bar's ETA: Parquet's metadata, a CSV's newlines."""
    if FORMATS[path.suffix.lower()] == "parquet":
        return int(pq.ParquetFile(path).metadata.num_rows)
    lines, last = 0, b"\n"
    with path.open("rb") as f:
        while block := f.read(1 << 22):
            lines += block.count(b"\n")
            last = block[-1:]
    lines += last != b"\n"
    return max(lines - int(header), 0)


def schema_names(path: Path, header: bool) -> list[str]:
    if FORMATS[path.suffix.lower()] == "parquet":
        return list(pq.ParquetFile(path).schema_arrow.names)
    with path.open("rb") as f:
        first = f.readline().decode("utf-8", errors="replace").rstrip("\r\n")
    fields: dict[str, object] = {}
    if first:  # parsed by pyarrow, so quoted names with commas come out whole
        options = pacsv.ReadOptions(autogenerate_column_names=True)
        rows = pacsv.read_csv(pa.py_buffer(first.encode() + b"\n"), read_options=options)
        fields = rows.to_pylist()[0]
    if header:
        return [str(v) for v in fields.values()]
    return [f"column {i}" for i in range(len(fields))]


def feature_columns(
    names: list[str], features: list[str], id_column: str | None, by: ColumnsBy, where: str
) -> tuple[list[str], str]:
    """The file's columns holding the model's features, in the model's order, and how they were
    found ('name' or 'position')."""
    if id_column is not None and id_column not in names:
        raise BatchError(f"{where}: no id column {id_column!r} (columns: {', '.join(names[:40])})")
    present = [f for f in features if f in names]
    if by == "name" or (by == "auto" and present):
        missing = [f for f in features if f not in names]
        if missing:
            raise BatchError(
                f"{where}: {len(missing)} of the model's {len(features)} feature columns are "
                f"missing: {', '.join(missing[:5])}{' ...' if len(missing) > 5 else ''}; name "
                "every feature column as in training, or pass --columns position to take the "
                "first columns in the model's order")
        return present, "name"
    candidates = [n for n in names if n != id_column]
    if len(candidates) < len(features):
        raise BatchError(
            f"{where}: {len(candidates)} columns besides the id column, but the model needs "
            f"{len(features)} features (by position); check the file or the --id-column")
    if by == "auto" and len(candidates) != len(features):
        raise BatchError(
            f"{where}: no column is named like a feature and there are {len(candidates)} columns "
            f"for {len(features)} features; pass --columns position to use the first "
            f"{len(features)}, or name the columns as in training")
    return candidates[: len(features)], "position"


def _to_float(table: pa.Table, columns: list[str]) -> tuple[np.ndarray, np.ndarray, list[str]]:
    """The feature matrix, a mask of the rows that can be scored and, for the others, why."""
    n = table.num_rows
    x = np.empty((n, len(columns)), dtype=np.float64)
    reasons = np.full(n, None, dtype=object)
    for j, name in enumerate(columns):
        col = table.column(name)
        if pa.types.is_float64(col.type) and col.null_count == 0:  # Parquet's usual case
            x[:, j] = col.to_numpy()
            continue
        try:
            values = pc.cast(col, pa.float64()).to_numpy(zero_copy_only=False)
        except (pa.ArrowInvalid, pa.ArrowNotImplementedError):
            # some cell is not a number: parse cell by cell, each bad one becomes a reject
            raw = col.to_pylist()
            values = np.array([_parse(v) for v in raw], dtype=np.float64)
            for i in np.flatnonzero(np.isnan(values) & (col.is_valid().to_numpy(
                    zero_copy_only=False))):
                if reasons[i] is None and _parse(raw[i], strict=True) is None:
                    reasons[i] = f"column {name!r}: not a number: {str(raw[i])[:40]!r}"
        x[:, j] = values
        if col.null_count:
            for i in np.flatnonzero(~col.is_valid().to_numpy(zero_copy_only=False)):
                if reasons[i] is None:
                    reasons[i] = f"column {name!r}: empty"
    finite = np.isfinite(x).all(axis=1)  # one pass over the matrix; reasons only for the rest
    for i in np.flatnonzero(~finite):
        if reasons[i] is None:
            j = int(np.flatnonzero(~np.isfinite(x[i]))[0])
            reasons[i] = f"column {columns[j]!r}: not a finite number: {x[i, j]!r}"
    ok = finite & np.array([r is None for r in reasons], dtype=bool) if n else np.zeros(0, bool)
    return x, ok, [str(r) for r in reasons[~ok]]


def _parse(value: object, strict: bool = False) -> float | None:
    try:
        return float(value)  # type: ignore[arg-type]
    except (TypeError, ValueError):
        return None if strict else float("nan")


def _csv_pieces(
    path: Path, header: bool, columns: list[str], skipped: list[tuple[int, str]]
) -> Iterator[pa.RecordBatch]:
    """The CSV as string batches; rows with the wrong number of fields go to `skipped`
    (physical row number, reason), noted before the batch that follows them is yielded."""

    def invalid(row: pacsv.InvalidRow) -> str:
        skipped.append((-1 if row.number is None else row.number,
                        f"{row.actual_columns} fields, expected {row.expected_columns}"))
        return "skip"

    names = schema_names(path, header)
    read = pacsv.ReadOptions(use_threads=False, block_size=CSV_BLOCK_BYTES,
                             column_names=None if header else names, skip_rows=0)
    convert = pacsv.ConvertOptions(column_types={c: pa.string() for c in names},
                                   include_columns=columns, strings_can_be_null=True,
                                   null_values=[""])
    try:
        reader = pacsv.open_csv(path, read_options=read, convert_options=convert,
                                parse_options=pacsv.ParseOptions(invalid_row_handler=invalid))
        yield from reader
    except pa.ArrowInvalid as e:
        raise BatchError(f"input {path}: cannot be read as CSV: {e}") from None


def iter_chunks(
    files: list[Path],
    features: list[str],
    chunk_rows: int,
    id_column: str | None = None,
    by: ColumnsBy = "auto",
    header: bool = True,
    convert: Callable[[str], bool] = lambda key: True,
) -> Iterator[Chunk]:
    """Every file's chunks of `chunk_rows` rows, in order. Chunks whose key `convert` refuses
    (done already, another shard's) are yielded without their rows converted (x empty)."""
    for file_index, path in enumerate(files):
        names = schema_names(path, header)
        cols, _ = feature_columns(names, features, id_column, by, f"input {path}")
        wanted = list(dict.fromkeys(cols + ([id_column] if id_column else [])))
        yield from _file_chunks(file_index, path, header, cols, wanted, id_column, chunk_rows,
                                convert)


def _file_chunks(
    file_index: int, path: Path, header: bool, cols: list[str], wanted: list[str],
    id_column: str | None, chunk_rows: int, convert: Callable[[str], bool],
) -> Iterator[Chunk]:
    skipped: list[tuple[int, str]] = []  # CSV rows of the wrong width (physical row numbers)
    first_physical = 2 if header else 1  # pyarrow numbers physical rows from 1, the header too
    is_csv = FORMATS[path.suffix.lower()] == "csv"
    if is_csv:
        pieces: Iterator[pa.RecordBatch] = _csv_pieces(path, header, wanted, skipped)
    else:
        try:
            pieces = pq.ParquetFile(path).iter_batches(batch_size=chunk_rows, columns=wanted)
        except (pa.ArrowInvalid, OSError) as e:
            raise BatchError(f"input {path}: cannot be read as Parquet: {e}") from None
    buffered: list[pa.RecordBatch] = []
    numbers: list[np.ndarray] = []
    held = 0
    last = first_physical - 1
    index = 0
    taken = 0  # skipped rows already given to a chunk

    def cut(n: int, final: bool) -> Chunk:
        nonlocal buffered, numbers, held, index, taken
        table = pa.Table.from_batches(buffered) if buffered else None
        physical = np.concatenate(numbers) if numbers else np.zeros(0, dtype=np.int64)
        part, physical_part = (table.slice(0, n) if table is not None else None), physical[:n]
        if table is not None and n < table.num_rows:
            buffered, numbers = table.slice(n).to_batches(), [physical[n:]]
        else:
            buffered, numbers = [], []
        held -= n
        upto = int(physical_part[-1]) if n else last
        mine = [s for s in skipped[taken:] if final or s[0] <= upto]
        taken += len(mine)
        chunk = Chunk(file_index, str(path), index, np.zeros(0, dtype=np.int64),
                      np.zeros((0, len(cols))), None,
                      [Reject(str(path), p - first_physical, reason) for p, reason in mine])
        index += 1
        if part is None or not convert(chunk.key):
            return chunk
        x, ok, reasons = _to_float(part, cols)
        rows = physical_part - first_physical
        chunk.rows, chunk.x = rows[ok], x[ok]
        if id_column is not None:
            chunk.ids = [str(v) for v, keep in zip(part.column(id_column).to_pylist(), ok,
                                                   strict=True) if keep]
        chunk.rejects += [Reject(str(path), int(r), why) for r, why in zip(rows[~ok], reasons,
                                                                          strict=True)]
        chunk.rejects.sort(key=lambda r: r.row)
        return chunk

    for batch in pieces:
        n = batch.num_rows
        if is_csv:  # the batch's rows are the next physical rows that were not skipped
            gaps = np.array([p for p, _ in skipped if p > last], dtype=np.int64)
            candidates = np.arange(last + 1, last + 1 + n + len(gaps), dtype=np.int64)
            physical = np.setdiff1d(candidates, gaps, assume_unique=True)[:n]
        else:
            physical = np.arange(last + 1, last + 1 + n, dtype=np.int64)
        if n:
            last = int(physical[-1])
            buffered.append(batch)
            numbers.append(physical)
            held += n
        while held >= chunk_rows:
            yield cut(chunk_rows, final=False)
    if held or len(skipped) > taken:
        yield cut(held, final=True)
