"""CLI commands for the local stack: up, down, status (registered on `serving` by serving/cli.py)."""

from __future__ import annotations

import logging
import os
import signal
import time
from pathlib import Path
from typing import Any

import click
import httpx

from ..cli_common import DEFAULT_STATE_DIR, DEFAULT_VALUES, friendly_errors
from ..errors import ServingError
from ..server import ServerSettings
from ..spec import load_spec
from .stack import end_leftovers, pid_alive, read_state, run_stack, stack_running


@click.command()
@click.option(
    "--values",
    "values_path",
    default=DEFAULT_VALUES,
    show_default=True,
    help="The deployment spec (the chart's values file).",
)
@click.option(
    "--models",
    "models_root",
    default=None,
    help="Model repository (default: model.localRepository from the values).",
)
@click.option(
    "--state-dir", default=DEFAULT_STATE_DIR, show_default=True, type=click.Path(path_type=Path)
)
@click.option("--port", type=int, default=None, help="REST port (overrides router.port; 0=any).")
@click.option("--grpc-port", type=int, default=None, help="gRPC port (overrides router.grpcPort).")
@click.option("--defaults", is_flag=True, help="MLServer's default settings instead of tuned.")
@click.option("-v", "--verbose", is_flag=True)
@friendly_errors
def up(
    values_path: str,
    models_root: str | None,
    state_dir: Path,
    port: int | None,
    grpc_port: int | None,
    defaults: bool,
    verbose: bool,
) -> None:
    """Start the local stack: MLServer per predictor replica behind the router (Ctrl-C stops)."""
    logging.basicConfig(
        level=logging.INFO if verbose else logging.WARNING,
        format="%(asctime)s %(name)s %(levelname)s %(message)s",
    )
    spec = load_spec(values_path)
    overrides: dict[str, Any] = {}
    if port is not None:
        overrides["port"] = port
    if grpc_port is not None:
        overrides["grpc_port"] = grpc_port
    if overrides:
        spec = spec.model_copy(update={"router": spec.router.model_copy(update=overrides)})
    state_dir.mkdir(parents=True, exist_ok=True)
    try:
        existing: dict[str, Any] | None = read_state(state_dir)
    except ServingError:
        existing = None
    if existing is not None:
        if stack_running(existing):
            raise ServingError(
                f"a local stack is already running (pid {existing['pid']}); "
                "stop it with 'serving down'"
            )
        if done := end_leftovers(existing):  # its control process died without stopping them
            click.echo(f"cleaned up after the stack (pid {existing['pid']}) that was not "
                       f"stopped: {'; '.join(done)}")
    root = Path(models_root or spec.model.local_repository)
    settings = ServerSettings.mlserver_defaults() if defaults else ServerSettings.tuned()
    run_stack(spec, root, state_dir, settings)


@click.command()
@click.option(
    "--state-dir", default=DEFAULT_STATE_DIR, show_default=True, type=click.Path(path_type=Path)
)
@friendly_errors
def down(state_dir: Path) -> None:
    """Stop the local stack started by 'serving up' (or clean up after one that crashed)."""
    state = read_state(state_dir)
    pid = int(state["pid"])
    if not stack_running(state):
        # Its control process died without stopping the others: end what it left, by the state.
        done = end_leftovers(state)
        (state_dir / "stack.json").unlink(missing_ok=True)
        click.echo(f"stack (pid {pid}) was not running; cleaned up its state file"
                   + "".join(f"\n  {d}" for d in done))
        return
    os.kill(pid, signal.SIGTERM)
    deadline = time.monotonic() + 30
    while pid_alive(pid) and time.monotonic() < deadline:
        time.sleep(0.2)
    if pid_alive(pid):
        raise ServingError(f"stack (pid {pid}) did not stop within 30s; kill it with kill {pid}")
    done = end_leftovers(state)  # nothing, unless its shutdown was cut short
    click.echo(f"stopped the local stack (pid {pid})" + "".join(f"\n  {d}" for d in done))


def replica_problem(replica: dict[str, Any]) -> str | None:
    """One line on a replica that is not live: what it waits for and why it last exited."""
    if replica["alive"]:
        return None
    due = replica.get("restartInSeconds")
    state = (f"restarting in {due:g}s" if due else "restarting" if due is not None
             else f"out of rotation ({replica['failedChecks']} failed health checks)"
             if replica.get("failedChecks") else "starting")
    last = replica.get("lastExit")
    return f"{replica['name']}: {state}" + (f"; last exit: {last}" if last else "")


def format_status(status: dict[str, Any]) -> str:
    lines = [
        f"SeldonDeployment {status['namespace']}/{status['deployment']} "
        f"(model {status['model']}, routes generation {status['routes']['generation']})",
        f"{'PREDICTOR':<10} {'VERSION':<8} {'TRAFFIC':<16} {'REPLICAS':<12} "
        f"{'REQUESTS':>9} {'ERRORS':>7}",
    ]
    counts = status["requests"]
    for p in status["predictors"]:
        live = sum(r["alive"] for r in p["replicas"])
        restarts = sum(r["restarts"] for r in p["replicas"])
        traffic = f"mirror {p['traffic']}%" if p["shadow"] else f"{p['traffic']}%"
        health = f"{live}/{len(p['replicas'])} live" + (f" ({restarts}r)" if restarts else "")
        c = counts.get(p["name"], {"requests": 0, "errors": 0})
        lines.append(
            f"{p['name']:<10} {p['version']:<8} {traffic:<16} {health:<12} "
            f"{c['requests']:>9} {c['errors']:>7}"
        )
        lines += [f"  {line}" for r in p["replicas"] if (line := replica_problem(r))]
    shadow = status["shadow"]
    agreement = shadow["agreement"]
    if any(p["shadow"] for p in status["predictors"]):
        rate = agreement["agreementRate"]
        lines.append(
            f"shadow: sent {shadow['sent']}, dropped {shadow['dropped']}, failed "
            f"{shadow['failed']}, timeout {shadow['timeout']}, in flight {shadow['inFlight']}; "
            f"agreement {'n/a' if rate is None else f'{rate:.1%}'} over "
            f"{agreement['rowsCompared']} rows"
        )
        for d in agreement["recentDisagreements"][-3:]:
            lines.append(f"  disagreed with {d['primary']}: {d['detail']}")
    return "\n".join(lines)


def stack_status(state_dir: Path, timeout: float = 5) -> dict[str, Any]:
    """The local router's GET /admin/status (what `serving status` and the console show)."""
    state = read_state(state_dir)
    try:
        return dict(httpx.get(state["restUrl"] + "/admin/status", timeout=timeout).json())
    except (httpx.HTTPError, ValueError) as e:
        raise ServingError(
            f"router at {state['restUrl']} does not answer ({e}); is it "
            "running? 'serving up' starts it"
        ) from e


@click.command()
@click.option(
    "--state-dir", default=DEFAULT_STATE_DIR, show_default=True, type=click.Path(path_type=Path)
)
@click.option("--cluster", is_flag=True, help="Show the SeldonDeployment on the cluster instead.")
@click.option("--values", "values_path", default=DEFAULT_VALUES, show_default=True)
@click.option("--context", default=None, help="kubeconfig context (with --cluster).")
@click.option("--json", "as_json", is_flag=True)
@friendly_errors
def status(
    state_dir: Path, cluster: bool, values_path: str, context: str | None, as_json: bool
) -> None:
    """Predictors, weights, health, request and error counts, shadow agreement."""
    if cluster:
        from ..k8s.status import cluster_status

        click.echo(cluster_status(values_path, context=context))
        return
    data = stack_status(state_dir)
    if as_json:
        import json

        click.echo(json.dumps(data, indent=2))
    else:
        click.echo(format_status(data))


COMMANDS: list[click.Command] = [up, down, status]
