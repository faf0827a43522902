"""Where predictions go: Parquet (default) or CSV part files in a folder, or a SQL table.

Part files: one per chunk, `part-<file>-<chunk>.parquet|csv`, written to a hidden temporary file,
fsynced and renamed, so a reader (or a resumed run) never sees half a file; Parquet readers
(pyarrow.dataset, pandas, Spark, DuckDB) skip the `_batch/` folder and the `_`/`.` files next to
them. The manifest lives in `<out>/_batch/`, the rejects in `<out>/_rejects.csv`.

SQL (any SQLAlchemy URL; SQLite is embedded): each chunk's rows are deleted and inserted in one
transaction, keyed by (batch_id, chunk), so doing a chunk again never duplicates it. PostgreSQL:
`postgresql+psycopg://user:password@host:5432/db` with the psycopg driver installed
(`pip install 'psycopg[binary]'`; not in this project's dependencies). The manifest of a SQL run
lives in --state-dir (default .serving/batch/<table>-<hash of the URL>).
"""

from __future__ import annotations

import hashlib
import os
import shutil
from pathlib import Path
from typing import Any, Protocol

import pyarrow as pa
import pyarrow.csv as pacsv
import pyarrow.parquet as pq

from .errors import BatchError

PART_PREFIX = "part-"
STATE_FOLDER = "_batch"
REJECTS_FILE = "_rejects.csv"


class Output(Protocol):
    location: str
    state_dir: Path
    rejects_path: Path

    def prepare(self, overwrite: bool, resuming: bool) -> None: ...

    def write(self, key: str, table: pa.Table) -> None: ...


def is_sql_url(out: str) -> bool:
    return "://" in out and not out.startswith("file://")


def open_output(out: str, fmt: str | None = None, table: str = "predictions",
                state_dir: Path | None = None) -> Output:
    """The output `out` names: a SQL URL (dialect://...) or a folder of part files."""
    if is_sql_url(out):
        return SqlOutput(out, table, state_dir)
    fmt = fmt or "parquet"
    if fmt not in ("parquet", "csv"):
        raise BatchError(f"--format {fmt}: use parquet or csv (or a SQL URL as --out)")
    return PartFiles(Path(out.removeprefix("file://")), fmt)


class PartFiles:
    def __init__(self, folder: Path, fmt: str):
        self.folder = folder
        self.fmt = fmt
        self.location = str(folder)
        self.state_dir = folder / STATE_FOLDER
        self.rejects_path = folder / REJECTS_FILE

    def parts(self) -> list[Path]:
        return sorted(self.folder.glob(f"{PART_PREFIX}*"))

    def prepare(self, overwrite: bool, resuming: bool) -> None:
        if self.folder.exists() and not self.folder.is_dir():
            raise BatchError(f"--out {self.folder} is a file; pass a folder (or a SQL URL)")
        if overwrite and self.folder.exists():
            for path in self.parts():
                path.unlink()
            shutil.rmtree(self.state_dir, ignore_errors=True)
            self.rejects_path.unlink(missing_ok=True)
        elif not resuming and self.parts():
            raise BatchError(f"--out {self.folder} holds part files but no manifest of this run; "
                             "pass another folder, or --overwrite to replace them")
        self.folder.mkdir(parents=True, exist_ok=True)
        for stale in self.folder.glob(f".{PART_PREFIX}*.tmp-*"):  # left by a killed run
            stale.unlink(missing_ok=True)

    def write(self, key: str, table: pa.Table) -> None:
        final = self.folder / f"{PART_PREFIX}{key}.{self.fmt}"
        tmp = self.folder / f".{final.name}.tmp-{os.getpid()}"
        if self.fmt == "parquet":
            pq.write_table(table, tmp, compression="zstd")
        else:
            pacsv.write_csv(table, tmp)
        fd = os.open(tmp, os.O_RDONLY)
        try:
            os.fsync(fd)
        finally:
            os.close(fd)
        os.replace(tmp, final)
        _fsync_dir(self.folder)


def _fsync_dir(folder: Path) -> None:
    fd = os.open(folder, os.O_RDONLY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


class SqlOutput:
    def __init__(self, url: str, table: str, state_dir: Path | None):
        import sqlalchemy as sa

        self.url = url
        self.table_name = table
        try:
            self.engine = sa.create_engine(url)
        except (sa.exc.ArgumentError, sa.exc.NoSuchModuleError, ImportError) as e:
            raise BatchError(f"--out {_redact(url)}: not a usable database URL ({e}); e.g. "
                             "sqlite:///predictions.db or postgresql+psycopg://user@host/db "
                             "(needs the psycopg driver)") from None
        self.location = f"{_redact(url)} table {table}"
        digest = hashlib.sha256(url.encode()).hexdigest()[:10]
        self.state_dir = state_dir or Path(".serving") / "batch" / f"{table}-{digest}"
        self.rejects_path = self.state_dir / "rejects.csv"
        self._table: Any = None

    def prepare(self, overwrite: bool, resuming: bool) -> None:
        if overwrite:
            shutil.rmtree(self.state_dir, ignore_errors=True)

    def _sql_table(self, schema: pa.Schema) -> Any:
        import sqlalchemy as sa

        if self._table is not None:
            return self._table
        types: dict[pa.DataType, Any] = {pa.int64(): sa.BigInteger, pa.float64(): sa.Float(53),
                                         pa.string(): sa.Text}
        columns = [sa.Column("chunk", sa.String(32), nullable=False)]
        for f in schema:
            value = f.type.value_type if pa.types.is_dictionary(f.type) else f.type
            kind: Any = (sa.DateTime(timezone=True) if pa.types.is_timestamp(value)
                         else types[value])
            columns.append(sa.Column(f.name, kind))
        table = sa.Table(self.table_name, sa.MetaData(), *columns,
                         sa.Index(f"ix_{self.table_name}_batch_chunk", "batch_id", "chunk"))
        try:
            table.metadata.create_all(self.engine)
        except sa.exc.SQLAlchemyError as e:
            raise BatchError(f"{self.location}: cannot create the table: {e}") from None
        existing = {c["name"] for c in sa.inspect(self.engine).get_columns(self.table_name)}
        if existing != {c.name for c in columns}:
            raise BatchError(f"{self.location} exists with other columns ({sorted(existing)}); "
                             "pass another --table")
        self._table = table
        return table

    def write(self, key: str, table: pa.Table) -> None:
        import sqlalchemy as sa

        sql = self._sql_table(table.schema)
        rows = table.to_pylist()
        for row in rows:
            row["chunk"] = key
        batch_id = table.column("batch_id")[0].as_py() if table.num_rows else None
        with self.engine.begin() as conn:  # delete + insert in one transaction: idempotent
            if batch_id is not None:
                conn.execute(sa.delete(sql).where(sql.c.batch_id == batch_id,
                                                  sql.c.chunk == key))
                conn.execute(sa.insert(sql), rows)


def _redact(url: str) -> str:
    from sqlalchemy.engine import make_url

    try:
        return make_url(url).render_as_string(hide_password=True)
    except Exception:  # an unparsable URL: show only its scheme
        return url.split("://", 1)[0] + "://..."
