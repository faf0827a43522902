"""What every CLI module shares: default paths and the error-to-exit-code wrapper."""

from __future__ import annotations

import functools
import sys
from collections.abc import Callable
from typing import Any

import click

from .errors import ServingError

DEFAULT_VALUES = "charts/seldon-model/values.yaml"
DEFAULT_STATE_DIR = ".serving"


def friendly_errors(fn: Callable[..., Any]) -> Callable[..., Any]:
    """ServingError -> its message in red and its exit code; anything else is a bug (traceback)."""

    @functools.wraps(fn)
    def wrapper(*args: Any, **kwargs: Any) -> Any:
        try:
            return fn(*args, **kwargs)
        except ServingError as e:
            click.secho(f"error: {e.message}", fg="red", err=True)
            sys.exit(e.exit_code)

    return wrapper
