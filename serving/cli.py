"""The `serving` command: thin wrappers over the package's functions.

Errors derived from ServingError print their message and exit with their exit code; anything else
is a bug and shows its traceback.
"""

from __future__ import annotations

import json
import signal
import sys
import time
from pathlib import Path

import click

from . import artifacts, training
from .cli_common import friendly_errors
from .errors import ServingError


@click.group(context_settings={"help_option_names": ["-h", "--help"]})
def main() -> None:
    """Ship scikit-learn models on MLServer / Seldon Core: train, serve, split, mirror, roll out."""


@main.command()
@click.option(
    "--out",
    default="models",
    show_default=True,
    type=click.Path(path_type=Path),
    help="Folder that receives <model>/<version>/.",
)
@click.option("--version", "versions", multiple=True, help="Train only these versions.")
@friendly_errors
def train(out: Path, versions: tuple[str, ...]) -> None:
    """Train the model versions (deterministic: same bytes every run)."""
    try:
        metas = training.train_all(out, list(versions) or None)
    except ValueError as e:
        raise ServingError(str(e)) from e
    for m in metas:
        click.echo(
            f"{m.model}/{m.version}  {m.estimator:<40} accuracy={m.metrics['accuracy']:.3f} "
            f"roc_auc={m.metrics['roc_auc']:.3f}  sha256={m.artifact.sha256[:12]}"
        )


@main.command("models")
@click.option(
    "--models", "root", default="models", show_default=True, type=click.Path(path_type=Path)
)
@click.option("--json", "as_json", is_flag=True, help="Print metadata as JSON.")
@friendly_errors
def list_models(root: Path, as_json: bool) -> None:
    """List the trained model versions and whether their artifacts verify."""
    metas = artifacts.list_versions(root)
    if as_json:
        click.echo(json.dumps([m.model_dump(mode="json") for m in metas], indent=2))
        return
    if not metas:
        click.echo(f"no models under {root}; run 'make models'")
        return
    click.echo(f"{'MODEL/VERSION':<20} {'ESTIMATOR':<40} {'ACC':>6} {'SHA256':<12}  CHECK")
    for m in metas:
        try:
            artifacts.verify(root / m.model / m.version)
            check = "ok"
        except ServingError as e:
            check = f"FAILED: {e.message}"
        click.echo(
            f"{m.model + '/' + m.version:<20} {m.estimator:<40} "
            f"{m.metrics['accuracy']:>6.3f} {m.artifact.sha256[:12]}  {check}"
        )


@main.command()
@click.option(
    "--models",
    "root",
    default="models",
    show_default=True,
    type=click.Path(path_type=Path, exists=True, file_okay=False),
)
@click.option("--http-port", default=8080, show_default=True)
@click.option("--grpc-port", default=8081, show_default=True)
@click.option("--metrics-port", default=8082, show_default=True)
@click.option("--host", default="127.0.0.1", show_default=True)
@click.option(
    "--defaults",
    is_flag=True,
    help="MLServer's default settings (1 inference worker, no batching) instead of tuned.",
)
@friendly_errors
def serve(
    root: Path, http_port: int, grpc_port: int, metrics_port: int, host: str, defaults: bool
) -> None:
    """Serve every model version under --models in one MLServer (REST and gRPC)."""
    from .server import MLServerProcess, ServerSettings

    ports = {
        "http_port": http_port,
        "grpc_port": grpc_port,
        "metrics_port": metrics_port,
        "host": host,
    }
    settings = (
        ServerSettings.mlserver_defaults(**ports) if defaults else ServerSettings.tuned(**ports)
    )
    metas = artifacts.list_versions(root)
    if not metas:
        raise ServingError(f"no models under {root}; run 'make models' first")
    server = MLServerProcess(root, settings).start()
    try:
        server.wait_ready(sorted({m.model for m in metas}))
        click.echo(f"MLServer ready ({'defaults' if defaults else 'tuned'} settings)")
        click.echo(f"  REST  {server.rest_url}/v2/models/<model>/versions/<version>/infer")
        click.echo(f"  gRPC  {server.grpc_target}  (inference.GRPCInferenceService)")
        click.echo(f"  metrics http://{host}:{metrics_port}/metrics")
        for m in metas:
            click.echo(f"  model {m.model} version {m.version}: {m.description}")
        click.echo("Ctrl-C to stop.")
        signal.signal(signal.SIGTERM, lambda *_: sys.exit(0))
        assert server.process is not None
        while server.process.poll() is None:
            time.sleep(0.5)
        raise ServingError(f"MLServer exited with code {server.process.returncode}")
    except KeyboardInterrupt:
        pass
    finally:
        server.stop()


@main.command()
@click.argument("rows_file", type=click.Path(exists=True, dir_okay=False))
@click.option(
    "--url",
    help="REST base URL, e.g. http://127.0.0.1:8080 or "
    "http://127.0.0.1:8003/seldon/models/breast-cancer",
)
@click.option("--grpc", "grpc_target", help="gRPC host:port")
@click.option("--model", default="breast-cancer", show_default=True)
@click.option("--version", default=None, help="Model version (default: the server's choice).")
@click.option("--seldon", "seldon_deployment", help="gRPC: 'seldon' metadata (deployment name).")
@click.option("--namespace", help="gRPC: 'namespace' metadata.")
@click.option("-H", "--header", "headers", multiple=True, help="Extra header / metadata K=V.")
@click.option("--json", "as_json", is_flag=True, help="Print the V2 response as JSON.")
@friendly_errors
def predict(
    rows_file: str,
    url: str | None,
    grpc_target: str | None,
    model: str,
    version: str | None,
    seldon_deployment: str | None,
    namespace: str | None,
    headers: tuple[str, ...],
    as_json: bool,
) -> None:
    """Send rows from a CSV or JSON file to a V2 endpoint (REST or gRPC) and print predictions."""
    from .client import GrpcClient, Prediction, RestClient, read_rows

    if bool(url) == bool(grpc_target):
        raise ServingError("pass exactly one of --url (REST) or --grpc (host:port)")
    extra: dict[str, str] = {}
    for h in headers:
        key, sep, value = h.partition("=")
        if not sep:
            raise ServingError(f"--header {h!r}: expected KEY=VALUE")
        extra[key.strip().lower()] = value.strip()
    try:
        rows = read_rows(rows_file)
    except (ValueError, KeyError, TypeError) as e:
        raise ServingError(f"{rows_file}: cannot read rows of numbers ({e})") from e
    result: Prediction
    if url:
        rest = RestClient(url, headers=extra)
        result = rest.infer(model, rows, version)
    else:
        if seldon_deployment:
            extra["seldon"] = seldon_deployment
        if namespace:
            extra["namespace"] = namespace
        assert grpc_target is not None
        result = GrpcClient(grpc_target, metadata=extra).infer(model, rows, version)
    if as_json:
        click.echo(result.raw.model_dump_json(indent=2))
        return
    served = f"model version {result.model_version}" + (
        f", predictor {result.predictor}" if result.predictor else ""
    )
    click.echo(f"{len(rows)} rows -> {served} in {result.latency_s * 1000:.1f} ms")
    for i, label in enumerate(result.labels):
        proba = ""
        if result.probabilities is not None:
            proba = "  p=" + ", ".join(f"{p:.3f}" for p in result.probabilities[i])
        click.echo(f"  row {i}: {int(label)}{proba}")


def _register(commands: list[click.Command]) -> None:
    for command in commands:
        main.add_command(command)


# Each area keeps its commands next to its code; this file only assembles them.
from .demo import demo as demo_command  # noqa: E402
from .k8s.commands import COMMANDS as K8S_COMMANDS  # noqa: E402
from .load.commands import COMMANDS as LOAD_COMMANDS  # noqa: E402
from .rollout.commands import COMMANDS as ROLLOUT_COMMANDS  # noqa: E402
from .router.commands import COMMANDS as ROUTER_COMMANDS  # noqa: E402

_register(K8S_COMMANDS)
_register(ROUTER_COMMANDS)
_register(ROLLOUT_COMMANDS)
_register(LOAD_COMMANDS)
main.add_command(demo_command)

if __name__ == "__main__":
    main()
