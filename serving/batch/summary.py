"""The summary of a batch: counts from every finished chunk (also those of earlier, killed runs)
and from this run."""

from __future__ import annotations

import json
from collections import Counter
from dataclasses import asdict, dataclass, field
from typing import Any

from .manifest import ChunkRecord


@dataclass
class Summary:
    batch_id: str
    output: str
    rejects_file: str
    rows_scored: int = 0
    rows_rejected: int = 0
    requests: int = 0
    retried: int = 0
    """Requests sent again after a 429, 5xx, connection error or timeout."""
    chunks: int = 0
    chunks_resumed: int = 0
    """Chunks finished by an earlier run and skipped by this one."""
    rows_this_run: int = 0
    elapsed_seconds: float = 0.0
    per_predictor: dict[str, int] = field(default_factory=dict)
    per_version: dict[str, int] = field(default_factory=dict)
    columns_by: str = ""
    """How the feature columns were found: by name or by position."""

    @classmethod
    def of(cls, records: list[ChunkRecord], **fields: Any) -> Summary:
        s = cls(**fields)
        predictors: Counter[str] = Counter()
        versions: Counter[str] = Counter()
        for r in records:
            s.chunks += 1
            s.rows_scored += r.rows
            s.rows_rejected += len(r.rejects)
            s.requests += r.requests
            s.retried += r.retried
            predictors.update(r.predictors)
            versions.update(r.versions)
        s.per_predictor, s.per_version = dict(predictors), dict(versions)
        return s

    @property
    def rows_per_second(self) -> float:
        return self.rows_this_run / self.elapsed_seconds if self.elapsed_seconds > 0 else 0.0

    def text(self) -> str:
        per = ", ".join(f"{k} {v}" for k, v in sorted(self.per_predictor.items())) or "none"
        lines = [
            f"batch {self.batch_id}: {self.rows_scored} rows scored, {self.rows_rejected} "
            f"rejected, {self.retried} requests retried (of {self.requests})",
            f"  per predictor: {per}; per version: "
            + (", ".join(f"{k} {v}" for k, v in sorted(self.per_version.items())) or "none"),
            f"  this run: {self.rows_this_run} rows in {self.elapsed_seconds:.1f}s "
            f"({self.rows_per_second:,.0f} rows/s); {self.chunks_resumed} of {self.chunks} "
            "chunks were done by an earlier run",
            f"  features by {self.columns_by}; predictions: {self.output}",
        ]
        if self.rows_rejected:
            lines.append(f"  rejects: {self.rejects_file}")
        return "\n".join(lines)

    def to_json(self) -> str:
        return json.dumps({**asdict(self), "rows_per_second": round(self.rows_per_second, 1)},
                          indent=2)
