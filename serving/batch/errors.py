"""Errors of batch scoring; each names the file, row or option and the fix."""

from __future__ import annotations

from ..errors import ServingError


class BatchError(ServingError):
    """Bad input or options: nothing was scored for it."""

    exit_code = 2


class BatchAborted(ServingError):
    """The deployment kept failing: finished chunks are kept, the same command resumes."""

    exit_code = 1


class RowsRejected(ServingError):
    """The run finished but some rows could not be scored (see the rejects file)."""

    exit_code = 5
