"""`serving console`: the Streamlit page for people, against the local stack or a cluster
(registered on `serving` by serving/cli.py)."""

from __future__ import annotations

import os
import secrets
import sys
from pathlib import Path

import click

from ..cli_common import DEFAULT_STATE_DIR, DEFAULT_VALUES, friendly_errors
from ..errors import ServingError
from .config import TOKEN_ENV, ConsoleConfig

APP = Path(__file__).with_name("app.py")
#: Streamlit refuses larger uploads itself; the page's own limit (try_model) is smaller
MAX_UPLOAD_MB = 1


def streamlit_command(host: str, port: int) -> list[str]:
    """`streamlit run` of the page: no usage statistics, no file watcher, no browser opened."""
    return [sys.executable, "-m", "streamlit", "run", str(APP),
            "--server.address", host, "--server.port", str(port),
            "--server.headless", "true", "--browser.gatherUsageStats", "false",
            "--server.fileWatcherType", "none", "--server.runOnSave", "false",
            "--server.maxUploadSize", str(MAX_UPLOAD_MB), "--global.developmentMode", "false",
            "--client.toolbarMode", "minimal", "--theme.base", "light"]


def console_env(config: ConsoleConfig, token: str | None = None) -> dict[str, str]:
    env = {k: v for k, v in os.environ.items() if k != TOKEN_ENV}
    env.update(config.to_env())
    env["STREAMLIT_BROWSER_GATHER_USAGE_STATS"] = "false"
    if token:
        env[TOKEN_ENV] = token
    return env


@click.command("console")
@click.option("--values", "values_path", default=DEFAULT_VALUES, show_default=True,
              help="Deployment spec (rollout plan, deployment name).")
@click.option("--state-dir", default=DEFAULT_STATE_DIR, show_default=True,
              type=click.Path(path_type=Path), help="The local stack's state ('serving up').")
@click.option("--kubernetes", is_flag=True, help="Watch and steer the cluster instead.")
@click.option("--context", default=None, help="kubeconfig context (with --kubernetes).")
@click.option("--prometheus", default=None,
              help="Prometheus base URL (figures and rollout analysis; needed with "
                   "--kubernetes).")
@click.option("--ingress", default=None,
              help="With --kubernetes: REST base for Try the model, "
                   "http://<istio-ingress>/seldon/<namespace>/<deployment>.")
@click.option("--comparator", default=None,
              help="The comparator's URL for examples of disagreements (default: the local "
                   "stack's; on a cluster e.g. through kubectl port-forward).")
@click.option("--host", default="127.0.0.1", show_default=True,
              help="Address the page listens on (loopback: only this machine).")
@click.option("--port", default=8501, show_default=True, type=int)
@click.option("--refresh", default=2.0, show_default=True, type=float,
              help="Seconds between the page's refreshes.")
@friendly_errors
def console(values_path: str, state_dir: Path, kubernetes: bool, context: str | None,
            prometheus: str | None, ingress: str | None, comparator: str | None, host: str,
            port: int,
            refresh: float) -> None:
    """A page to watch a rollout, steer it and try the model (Streamlit)."""
    if kubernetes and not prometheus:
        raise ServingError("--prometheus URL is required with --kubernetes (the page's figures "
                           "and the rollout analysis read the Seldon executor metrics there)")
    if refresh <= 0:
        raise ServingError(f"--refresh {refresh:g}: must be more than 0 seconds")
    config = ConsoleConfig(values_path=values_path, state_dir=state_dir,
                           kubernetes=kubernetes, context=context, prometheus=prometheus,
                           ingress=ingress, comparator=comparator, refresh_seconds=refresh)
    token = None
    if kubernetes:
        # The cluster's admin is whoever holds the kubeconfig; the page's buttons need this
        # token, so people who can only open the page can watch but not steer.
        token = os.environ.get(TOKEN_ENV) or secrets.token_urlsafe(24)
        click.echo(f"admin token for the page's buttons: {token}")
    else:
        click.echo(f"steering {config.where}; the page's buttons ask for the stack's admin "
                   f"token (adminToken in {state_dir / 'stack.json'})")
    if host not in ("127.0.0.1", "localhost", "::1"):
        click.echo(f"warning: listening on {host}: anyone who reaches it sees the page")
    click.echo(f"console: http://{host}:{port}  (Ctrl-C stops it)")
    sys.stdout.flush()
    command = streamlit_command(host, port)
    os.execve(command[0], command, console_env(config, token))


COMMANDS: list[click.Command] = [console]
