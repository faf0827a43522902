"""The manifest of a run: which chunks are finished, so a killed run resumes exactly.

One JSON line per finished chunk, appended and fsynced only after the chunk's output is durable
(an atomic part file, or a committed SQL transaction). Writing a chunk's output is idempotent (the
part file of a chunk is replaced; its SQL rows are deleted and inserted in one transaction), so a
kill -9 between the output and the manifest line only means the chunk is done again. A line cut
short by a kill is dropped when the manifest is opened.

The first line records the run's arguments (input files with size and mtime, model, chunking):
the same output with other arguments is refused instead of mixing two runs.
"""

from __future__ import annotations

import json
import os
import uuid
from dataclasses import asdict, dataclass, field
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

from .errors import BatchError
from .rejects import Reject

FORMAT = 1


@dataclass
class ChunkRecord:
    key: str
    file: str
    rows: int
    """Rows scored (written to the output)."""
    rejects: list[Reject] = field(default_factory=list)
    retried: int = 0
    """Requests sent again (429, 5xx, connection errors, timeouts)."""
    requests: int = 0
    predictors: dict[str, int] = field(default_factory=dict)
    """Rows per predictor that answered."""
    versions: dict[str, int] = field(default_factory=dict)
    """Rows per model version."""

    def to_json(self) -> str:
        return json.dumps({"chunk": asdict(self)}, separators=(",", ":"))

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> ChunkRecord:
        data = dict(data)
        data["rejects"] = [Reject(**r) for r in data.get("rejects", [])]
        return cls(**data)


class Manifest:
    def __init__(self, path: Path, run: dict[str, Any], batch_id: str | None = None):
        self.path = path
        self.run = run
        self.done: dict[str, ChunkRecord] = {}
        self.batch_id = batch_id or ""
        self.started = ""
        self._open(batch_id)

    def _open(self, batch_id: str | None) -> None:
        self.path.parent.mkdir(parents=True, exist_ok=True)
        if not self.path.exists() or self.path.stat().st_size == 0:
            self.batch_id = batch_id or uuid.uuid4().hex[:12]
            self.started = datetime.now(UTC).isoformat(timespec="seconds")
            header = {"manifest": FORMAT, "batchId": self.batch_id, "started": self.started,
                      "run": self.run}
            self._append(json.dumps(header, separators=(",", ":")))
            return
        raw = self.path.read_bytes()
        if not raw.endswith(b"\n"):  # the last line was cut short by a kill: drop it
            raw = raw[: raw.rfind(b"\n") + 1]
            with self.path.open("r+b") as f:
                f.truncate(len(raw))
                os.fsync(f.fileno())
        lines = raw.decode().splitlines()
        try:
            header = json.loads(lines[0])
            self.batch_id, self.started = header["batchId"], header["started"]
        except (IndexError, ValueError, KeyError, TypeError):
            raise BatchError(f"{self.path}: not a batch manifest; remove it (and the output "
                             "next to it) to start over") from None
        if header.get("run") != self.run:
            raise BatchError(
                f"{self.path} belongs to a run with other arguments or input files "
                f"({_difference(header.get('run') or {}, self.run)}); resume with the same "
                "arguments, write to another output, or pass --overwrite to start over")
        if batch_id and batch_id != self.batch_id:
            raise BatchError(f"{self.path}: batch id {self.batch_id} was started, not "
                             f"{batch_id}; pass --overwrite to start over")
        for line in lines[1:]:
            record = ChunkRecord.from_dict(json.loads(line)["chunk"])
            self.done[record.key] = record

    def _append(self, line: str) -> None:
        with self.path.open("a") as f:
            f.write(line + "\n")
            f.flush()
            os.fsync(f.fileno())

    def record(self, chunk: ChunkRecord) -> None:
        self._append(chunk.to_json())
        self.done[chunk.key] = chunk


def _difference(before: dict[str, Any], now: dict[str, Any]) -> str:
    changed = sorted(k for k in set(before) | set(now) if before.get(k) != now.get(k))
    return "changed: " + ", ".join(changed) if changed else "unknown difference"


def read_all(folder: Path) -> list[tuple[dict[str, Any], list[ChunkRecord]]]:
    """Every manifest in a folder (one per shard): header and finished chunks."""
    out = []
    for path in sorted(folder.glob("manifest*.jsonl")):
        lines = [ln for ln in path.read_text().splitlines() if ln.strip()]
        records = []
        for line in lines[1:]:
            try:
                records.append(ChunkRecord.from_dict(json.loads(line)["chunk"]))
            except (ValueError, KeyError, TypeError):
                continue  # a line cut short by a kill
        out.append((json.loads(lines[0]), records))
    return out
