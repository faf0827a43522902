"""Errors of the Kubernetes side; all are ServingErrors so the CLI prints them and exits."""

from __future__ import annotations

from ..errors import ServingError


class ChartError(ServingError):
    """The chart refused the values (schema, validateValues) or failed to render or lint."""

    status_code = 400
    exit_code = 2


class ManifestInvalid(ServingError):
    """A rendered object breaks a Kubernetes, CRD or Seldon rule; the message lists every problem."""

    status_code = 400
    exit_code = 2

    def __init__(self, source: str, problems: list[str]):
        super().__init__(f"{source} is invalid:\n" + "\n".join(f"  {p}" for p in problems))
        self.problems = problems


class ClusterError(ServingError):
    """The API server refused a request, or could not be reached."""

    status_code = 502
    exit_code = 4


class ApplyConflict(ClusterError):
    """Server-side apply found fields owned by another field manager."""

    def __init__(self, obj: str, manager: str, conflicts: list[str]):
        super().__init__(
            f"server-side apply of {obj} conflicts with fields owned by other managers:\n"
            + "\n".join(f"  {c}" for c in conflicts)
            + f"\nthey were changed since '{manager}' last applied them (by another tool, or by a "
            "traffic change such as a rollout step); re-run with --force-conflicts to reset them "
            "to the values, or update the values to match the cluster"
        )
        self.conflicts = conflicts


class NotAvailable(ClusterError):
    """The SeldonDeployment did not become Available (failed, or timed out)."""

    exit_code = 5
