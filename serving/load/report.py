"""The report folder's front page, summary.md: what ran, the per-predictor table with the split,
the SLO verdict, replicas, the scaling table and links to locust's HTML report and the plots."""

from __future__ import annotations

import time
from datetime import datetime
from pathlib import Path

from .replicas import ReplicaFollower
from .summary import RunSummary


def new_report_dir(root: Path) -> Path:
    """reports/<timestamp>/, unique even for two runs in the same second."""
    stamp = datetime.now().strftime("%Y%m%d-%H%M%S")
    path = root / stamp
    n = 1
    while path.exists():
        n += 1
        path = root / f"{stamp}-{n}"
    path.mkdir(parents=True)
    return path


def write_markdown(
    report_dir: Path,
    *,
    what: str,
    summary: RunSummary | None,
    plots: list[Path],
    follower: ReplicaFollower | None = None,
    scaling: str | None = None,
) -> Path:
    lines = [f"# Load test {report_dir.name}", "", what, ""]
    if summary is None:
        lines += ["locust ended before judging the run: see `locust.log`.", ""]
    else:
        lines += [
            "## Per predictor",
            "",
            "```",
            summary.table(),
            "```",
            "",
            "## SLO gate",
            "",
            "```",
            summary.verdict(),
            "```",
            "",
        ]
    if follower is not None:
        lines += ["## Replicas", ""]
        last: dict[str, str] = {}
        for s in follower.samples:
            last[s.predictor] = f"{s.replicas}" + (f" (wanted {s.desired})" if s.desired else "")
        lines += [f"- {p}: {n} at the end" for p, n in sorted(last.items())] or ["- no samples"]
        lines += [f"- sampling error: {e}" for e in follower.errors]
        lines.append("")
    if scaling:
        lines += ["## Scaling", "", "```", scaling, "```", ""]
    lines += [
        "## Files",
        "",
        "- [locust's HTML report](report.html)",
        "- locust's CSVs: `locust_stats.csv`, `locust_stats_history.csv`, "
        "`locust_failures.csv`; one row per request: `requests.csv`",
    ]
    lines += [f"- ![{p.stem}]({p.name})" for p in plots]
    lines += ["", f"_written {time.strftime('%Y-%m-%d %H:%M:%S')}_", ""]
    path = report_dir / "summary.md"
    path.write_text("\n".join(lines))
    return path
