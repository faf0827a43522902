"""`serving comparator`: the shadow-agreement service (registered on `serving` by serving/cli.py)."""

from __future__ import annotations

from pathlib import Path

import click

from ..cli_common import friendly_errors
from .matching import Settings


@click.command("comparator")
@click.option("--host", default="127.0.0.1", show_default=True,
              help="Address to listen on (the chart's pod listens on 0.0.0.0, behind its "
                   "NetworkPolicy).")
@click.option("--port", default=8080, show_default=True, type=click.IntRange(0, 65535))
@click.option("--deployment", "deployments", multiple=True,
              help="A SeldonDeployment whose events are taken (repeatable); events of others "
                   "get 404. None: any.")
@click.option("--ttl", "ttl_seconds", default=Settings.ttl_seconds, show_default=True,
              type=click.FloatRange(min=0.1), help="Seconds a half, a shadow's answer or a "
              "primary's answer waits for its other half.")
@click.option("--max-pending", default=Settings.max_pending, show_default=True,
              type=click.IntRange(min=1), help="Entries each waiting room holds at most (the "
              "oldest is evicted, and counted).")
@click.option("--rtol", default=Settings.rtol, show_default=True, type=click.FloatRange(min=0),
              help="Relative tolerance for numeric outputs (router.shadow.rtol).")
@click.option("--telemetry", type=click.Path(path_type=Path), default=None, hidden=True,
              help="Local stack: also report verdicts to the control process's socket.")
@click.option("--idle-cpu", is_flag=True, hidden=True,
              help="Local stack: move to the idle CPU class once listening.")
@friendly_errors
def comparator(host: str, port: int, deployments: tuple[str, ...], ttl_seconds: float,
               max_pending: int, rtol: float, telemetry: Path | None, idle_cpu: bool) -> None:
    """Compare a shadow's answers with the primary's from Seldon's payload-logger CloudEvents;
    export the agreement on /metrics (seldon_shadow_rows) and examples on /disagreements."""
    from .service import run

    run(host, port, Settings(rtol=rtol, ttl_seconds=ttl_seconds, max_pending=max_pending,
                             deployments=frozenset(deployments)), telemetry, idle_cpu)


COMMANDS: list[click.Command] = [comparator]
