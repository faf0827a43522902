"""Rows that could not be scored: the file, the row number (0-based data row) and why.

They are kept per chunk in the manifest (so a resumed run neither loses nor repeats them) and
written out as one CSV, `<out>/_rejects.csv`, at the end of every run.
"""

from __future__ import annotations

import csv
import os
from collections.abc import Iterable
from dataclasses import dataclass
from pathlib import Path

FIELDS = ("file", "row", "reason")


@dataclass(frozen=True)
class Reject:
    file: str
    row: int
    reason: str


def write(path: Path, rejects: Iterable[Reject]) -> int:
    """Write the rejects CSV atomically (a temporary file, then a rename); returns the count."""
    tmp = path.with_name(f".{path.name}.tmp-{os.getpid()}")
    count = 0
    with tmp.open("w", newline="") as f:
        out = csv.writer(f)
        out.writerow(FIELDS)
        for r in sorted(rejects, key=lambda r: (r.file, r.row)):
            out.writerow((r.file, r.row, r.reason))
            count += 1
        f.flush()
        os.fsync(f.fileno())
    os.replace(tmp, path)
    return count
