"""Errors of the load tests; all are ServingErrors so the CLI prints them and exits."""

from __future__ import annotations

from ..errors import ServingError


class LoadTestError(ServingError):
    """A load test cannot start or run: a missing target, a bad option, locust failing."""

    exit_code = 2
