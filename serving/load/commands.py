"""CLI commands for load tests (registered on `serving` by serving/cli.py)."""

from __future__ import annotations

import sys
from dataclasses import replace
from pathlib import Path

import click

from ..cli_common import DEFAULT_STATE_DIR, DEFAULT_VALUES, friendly_errors
from ..spec import Spec, load_spec
from .errors import LoadTestError
from .hpa import follow_cluster
from .local import format_scaling, local_stack, running_state, scaling_plan, scaling_runs
from .plots import make_plots
from .replicas import ReplicaFollower, local_replicas
from .report import new_report_dir, write_markdown
from .run import LoadPlan, LocustRun, Protocol, run_locust
from .shapes import SHAPES

PROTOCOLS = {"rest": "REST", "grpc": "gRPC", "both": "REST and gRPC"}


def _counts(text: str) -> list[int]:
    try:
        counts = [int(c) for c in text.split(",") if c.strip()]
    except ValueError:
        counts = [0]
    if not counts or any(not 1 <= c <= 8 for c in counts):
        raise LoadTestError(f"--scaling {text!r}: expected replica counts 1..8, e.g. 1,2")
    return counts


@click.command()
@click.option(
    "--target",
    default=None,
    help="REST base of any ingress, e.g. http://host/seldon/<namespace>/<deployment>. "
    "Default: the local stack in --state-dir.",
)
@click.option("--grpc-target", default=None, help="gRPC host:port of that ingress (optional).")
@click.option(
    "--seldon",
    "deployment",
    default=None,
    help="Deployment name (gRPC 'seldon' metadata); default from the values.",
)
@click.option(
    "--namespace", default=None, help="Namespace (gRPC metadata); default from the values."
)
@click.option(
    "--values",
    "values_path",
    default=DEFAULT_VALUES,
    show_default=True,
    type=click.Path(path_type=Path),
    help="The spec: its slo section is the gate.",
)
@click.option(
    "--state-dir", default=DEFAULT_STATE_DIR, show_default=True, type=click.Path(path_type=Path)
)
@click.option(
    "--models",
    default=None,
    type=click.Path(path_type=Path),
    help="Model repository for a stack this command starts.",
)
@click.option(
    "--start-stack/--no-start-stack",
    default=True,
    show_default=True,
    help="Start the local stack when none runs (and stop it at the end).",
)
@click.option(
    "--protocol",
    type=click.Choice(["rest", "grpc", "both"]),
    default=None,
    help="Default: both when a gRPC target is known, else rest.",
)
@click.option("--shape", type=click.Choice(sorted(SHAPES)), default="constant", show_default=True)
@click.option("--users", default=10, show_default=True, help="Peak users.")
@click.option(
    "--rps",
    default=100.0,
    show_default=True,
    help="Requests/s at the peak (0 = as fast as answers come).",
)
@click.option("--duration", default=20, show_default=True, help="Seconds.")
@click.option(
    "--weights",
    default="",
    help="Configured split (stable=90,canary=10); default: router, cluster or values.",
)
@click.option("--out", default="reports", show_default=True, type=click.Path(path_type=Path))
@click.option(
    "--scaling",
    default="",
    help="Also measure throughput at these stable replica counts locally, e.g. 1,2.",
)
@click.option("--scaling-duration", default=10, show_default=True, help="Seconds per count.")
@click.option("--scaling-users", default=16, show_default=True, help="Closed-loop users.")
@click.option(
    "--cluster",
    is_flag=True,
    help="With --target: read the weights from the SeldonDeployment and follow the "
    "predictors' HPAs during the run.",
)
@click.option("--kubeconfig", default=None, help="With --cluster (default $KUBECONFIG).")
@click.option("--context", default=None, help="With --cluster: kubeconfig context.")
@friendly_errors
def loadtest(
    target: str | None,
    grpc_target: str | None,
    deployment: str | None,
    namespace: str | None,
    values_path: Path,
    state_dir: Path,
    models: Path | None,
    start_stack: bool,
    protocol: Protocol | None,
    shape: str,
    users: int,
    rps: float,
    duration: int,
    weights: str,
    out: Path,
    scaling: str,
    scaling_duration: int,
    scaling_users: int,
    cluster: bool,
    kubeconfig: str | None,
    context: str | None,
) -> None:
    """Headless locust load test with a per-predictor report and the spec's SLO gate.

    Against the local stack by default (started for the run if none is running), or any ingress
    with --target. Writes <out>/<timestamp>/: locust's CSV and HTML, summary.md, PNG plots.
    Exits 1 when an SLO is missed (or too few requests were seen to judge).
    """
    spec = load_spec(values_path)
    local = target is None and grpc_target is None
    counts = _counts(scaling) if scaling else []
    if cluster and local:
        raise LoadTestError("--cluster needs --target (the ingress URL of the cluster)")
    if counts and not local:
        raise LoadTestError("--scaling runs local stacks only; drop --target or --scaling")
    chosen: Protocol = protocol or ("both" if local or grpc_target else "rest")
    plan = LoadPlan(values_path.resolve(), chosen, shape, users, rps, duration, weights)
    plan.check()
    if local and not start_stack and running_state(state_dir) is None:
        raise LoadTestError(
            f"no local stack is running in {state_dir}; start one with 'make up', drop "
            "--no-start-stack, or pass --target for another ingress"
        )
    report_dir = new_report_dir(out)
    pace = f"{rps:g} req/s" if rps else "as fast as answered"
    what = f"{PROTOCOLS[chosen]}, {shape} shape, {users} users at {pace} for {duration}s"
    follower: ReplicaFollower | None
    if local:
        with local_stack(
            state_dir, values_path, models, report_dir / "stack.log", start=start_stack
        ) as (state, started):
            if started:
                click.echo(
                    f"started a local stack for this run (stopped at the end): {state['seldonUrl']}"
                )
            what += f" against the local stack at {state['seldonUrl']} (gRPC {state['grpcTarget']})"
            follower = ReplicaFollower(local_replicas(state["restUrl"]), interval_s=1.0)
            click.echo(f"load test: {what}")
            run = run_locust(plan, ["--state-dir", str(state_dir.resolve())], report_dir, follower)
    else:
        args = (["--host", target] if target else []) + (
            ["--grpc-target", grpc_target] if grpc_target else []
        )
        args += [
            "--seldon",
            deployment or spec.deployment.name,
            "--namespace",
            namespace or spec.deployment.namespace,
        ]
        what += f" against {target or ''} {grpc_target or ''}".rstrip()
        follower = None
        if cluster:
            ns, dep = namespace or spec.deployment.namespace, deployment or spec.deployment.name
            follower, cluster_weights = follow_cluster(ns, dep, kubeconfig, context)
            what += "; HPAs followed"
            if not plan.weights:
                plan = replace(plan, weights=cluster_weights)
                what += f"; weights {cluster_weights} from SeldonDeployment {ns}/{dep}"
        click.echo(f"load test: {what}")
        run = run_locust(plan, args, report_dir, follower)
    _finish(run, spec, what, follower, counts, models, scaling_users, scaling_duration)


def _finish(
    run: LocustRun,
    spec: Spec,
    what: str,
    follower: ReplicaFollower | None,
    counts: list[int],
    models: Path | None,
    scaling_users: int,
    scaling_duration: int,
) -> None:
    plots = make_plots(run.report_dir, spec.slo)
    scaling_text = None
    if counts:
        click.echo(f"scaling: {len(counts)} short runs, stable replicas {counts} ...")
        plan = scaling_plan(scaling_users, scaling_duration)
        scaling_text = format_scaling(
            scaling_runs(spec, models, counts, plan, run.report_dir), plan
        )
        click.echo(scaling_text)
    md = write_markdown(
        run.report_dir,
        what=what,
        summary=run.summary,
        plots=plots,
        follower=follower,
        scaling=scaling_text,
    )
    if follower is not None and follower.errors:
        click.echo(f"replica sampling errors: {'; '.join(follower.errors)}")
    if run.summary is not None:
        click.echo(run.summary.verdict())
    else:
        click.echo(
            f"locust exited with code {run.exit_code} before judging the run; see "
            f"{run.report_dir / 'locust.log'}"
        )
    click.echo(f"report: {md} (plots: {', '.join(p.name for p in plots) or 'none'})")
    sys.exit(run.exit_code)


COMMANDS: list[click.Command] = [loadtest]
