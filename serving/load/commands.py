"""CLI commands for load tests (registered on `serving` by serving/cli.py)."""

from __future__ import annotations

import click

COMMANDS: list[click.Command] = []
