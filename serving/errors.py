"""One base error for the package.

Every error carries what its boundary needs: an HTTP status for the router and admin API, an exit
code for the CLI. Subclasses build their message from typed arguments so the text always names the
thing that is wrong and how to fix it.
"""

from __future__ import annotations


class ServingError(Exception):
    """Base error: a message a user can act on, an HTTP status and a CLI exit code."""

    status_code: int = 500
    exit_code: int = 1

    def __init__(self, message: str, status_code: int | None = None):
        super().__init__(message)
        self.message = message
        if status_code is not None:
            self.status_code = status_code


class ArtifactError(ServingError):
    """A model artifact is missing, malformed or not the one that was recorded."""

    exit_code = 3


class ChecksumMismatch(ArtifactError):
    def __init__(self, path: str, recorded: str, actual: str):
        super().__init__(
            f"refusing to load {path}: its sha256 is {actual} but metadata.json records "
            f"{recorded}; the file was changed after training. Re-run 'serving train' or "
            "restore the artifact."
        )


class LibraryVersionMismatch(ArtifactError):
    def __init__(self, path: str, library: str, recorded: str, installed: str):
        super().__init__(
            f"refusing to load {path}: it was trained with {library} {recorded} but "
            f"{installed} is installed; unpickling across versions is unsafe. "
            f"Install {library}=={recorded} or retrain."
        )


class SpecError(ServingError):
    """The deployment spec (values file) breaks a rule; the message names the field and the fix."""

    status_code = 400
    exit_code = 2

