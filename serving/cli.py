"""The `serving` command: thin wrappers over the package's functions.

Errors derived from ServingError print their message and exit with their exit code; anything else
is a bug and shows its traceback.
"""

from __future__ import annotations

import importlib
import json
import signal
import sys
import tempfile
import time
from pathlib import Path

import click

from . import artifacts
from .cli_common import DEFAULT_VALUES, friendly_errors
from .errors import ArtifactError, ServingError
from .spec import load_spec, stable_predictor

# Each area keeps its commands next to its code (its COMMANDS list); this file only names them.
# They are imported when one of them runs: the areas pull in scikit-learn, mlserver, kubernetes,
# locust, streamlit, and `serving status` needs none of them (tests/test_cli.py keeps this table
# equal to what the areas export).
AREAS: dict[str, tuple[str, ...]] = {
    "serving.k8s.commands": ("validate", "manifests", "deploy"),
    "serving.router.commands": ("up", "down", "status"),
    "serving.rollout.commands": ("rollout",),
    "serving.load.commands": ("loadtest",),
    "serving.batch.commands": ("batch",),
    "serving.console.commands": ("console",),
    "serving.comparator.commands": ("comparator",),
    "serving.demo": ("demo",),
}


class AreaGroup(click.Group):
    """The top-level group: the commands defined in this file, then each area's, imported on use."""

    def list_commands(self, ctx: click.Context) -> list[str]:
        return sorted({*super().list_commands(ctx), *(n for names in AREAS.values() for n in names)})

    def get_command(self, ctx: click.Context, name: str) -> click.Command | None:
        command = super().get_command(ctx, name)
        module = next((m for m, names in AREAS.items() if name in names), None)
        if command is not None or module is None:
            return command
        return area_command(module, name)


def area_command(module: str, name: str) -> click.Command:
    exported = importlib.import_module(module).COMMANDS
    return next(c for c in exported if c.name == name)


@click.group(cls=AreaGroup, context_settings={"help_option_names": ["-h", "--help"]})
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
@click.option(
    "--record-digests",
    "values_path",
    type=click.Path(path_type=Path, exists=True, dir_okay=False),
    help="Record the artifacts' sha256 in this values file's model.artifacts (e.g. "
    f"{DEFAULT_VALUES}), the digests the runtime will accept. Review the change.",
)
@friendly_errors
def train(out: Path, versions: tuple[str, ...], values_path: Path | None) -> None:
    """Train the model versions (deterministic: same bytes every run)."""
    try:
        from . import training  # scikit-learn: imported when training runs

        metas = training.train_all(out, list(versions) or None)
    except ValueError as e:
        raise ServingError(str(e)) from e
    for m in metas:
        click.echo(
            f"{m.model}/{m.version}  {m.estimator:<40} accuracy={m.metrics['accuracy']:.3f} "
            f"roc_auc={m.metrics['roc_auc']:.3f}  sha256={m.artifact.sha256[:12]}"
        )
    if values_path is not None:
        before = dict(load_spec(values_path).model.artifacts)
        recorded = artifacts.record_digests(values_path, artifacts.spec_digests(metas))
        changed = sorted(v for v, d in recorded.items() if before.get(v) != d)
        click.echo(
            f"recorded the digests of {len(metas)} versions in {values_path} ({artifacts.DIGESTS_KEY}): "
            + (f"changed {', '.join(changed)}; review that change" if changed else "unchanged")
        )


def _version_dirs(root: Path) -> list[Path]:
    return sorted(p.parent for p in root.glob(f"*/*/{artifacts.SETTINGS_FILE}"))


@main.command("models")
@click.option(
    "--models", "root", default="models", show_default=True, type=click.Path(path_type=Path)
)
@click.option(
    "--values",
    "values_path",
    default=DEFAULT_VALUES,
    show_default=True,
    help="The deployment spec whose model.artifacts digests the artifacts must match.",
)
@click.option("--json", "as_json", is_flag=True, help="Print metadata and checks as JSON.")
@friendly_errors
def list_models(root: Path, values_path: str, as_json: bool) -> None:
    """List the trained model versions and whether they pass the runtime's checks against the
    spec's digests; exits non-zero when any fails."""
    digests = dict(load_spec(values_path).model.artifacts)
    rows: list[tuple[Path, artifacts.ModelMetadata | None, str]] = []
    for folder in _version_dirs(root):
        try:
            meta: artifacts.ModelMetadata | None = artifacts.read_metadata(folder)
        except ServingError:
            meta = None
        try:
            artifacts.check_version(folder, digests)
            check = "ok"
        except ServingError as e:
            check = f"FAILED: {e.message}"
        rows.append((folder, meta, check))
    failed = [folder for folder, _, check in rows if check != "ok"]
    if as_json:
        click.echo(json.dumps([
            {"folder": str(folder), "check": check,
             **(meta.model_dump(mode="json") if meta else {})}
            for folder, meta, check in rows
        ], indent=2))
    elif not rows:
        click.echo(f"no models under {root}; run 'make models'")
    else:
        click.echo(f"{'MODEL/VERSION':<20} {'ESTIMATOR':<40} {'ACC':>6} {'SHA256':<12}  CHECK")
        for folder, meta, check in rows:
            name = f"{folder.parent.name}/{folder.name}"
            estimator = meta.estimator if meta else "?"
            accuracy = f"{meta.metrics['accuracy']:>6.3f}" if meta else f"{'?':>6}"
            sha = meta.artifact.sha256[:12] if meta else "?"
            click.echo(f"{name:<20} {estimator:<40} {accuracy} {sha:<12}  {check}")
    if failed:
        raise ArtifactError(
            f"{len(failed)} of {len(rows)} versions under {root} fail the checks against "
            f"{values_path} ({artifacts.DIGESTS_KEY}); the runtime would refuse them"
        )


def _mlserver_reason(log: Path) -> str:
    """Why MLServer stopped, from its log: the runtime's refusals, else its error lines, else the
    last lines."""
    try:
        lines = log.read_text(errors="replace").splitlines()
    except OSError:
        return ""
    refusals = [ln for ln in lines if "refusing to load" in ln or "ArtifactError" in ln]
    errors = [ln for ln in lines if ln.startswith("ERROR") or " ERROR " in ln or "Error:" in ln]
    picked = list(dict.fromkeys(refusals or errors))[:5] or lines[-15:]
    return "\n".join(["MLServer's log says:"] + [f"  {ln}" for ln in picked])


@main.command()
@click.option(
    "--models",
    "root",
    default="models",
    show_default=True,
    type=click.Path(path_type=Path, exists=True, file_okay=False),
)
@click.option(
    "--values",
    "values_path",
    default=DEFAULT_VALUES,
    show_default=True,
    help="The deployment spec: its stable version, and the digests the artifacts must match.",
)
@click.option(
    "--version",
    "versions",
    multiple=True,
    help="Serve this version (repeat for several). Default: the values file's stable version.",
)
@click.option("--all", "serve_all", is_flag=True, help="Serve every version under --models.")
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
    root: Path,
    values_path: str,
    versions: tuple[str, ...],
    serve_all: bool,
    http_port: int,
    grpc_port: int,
    metrics_port: int,
    host: str,
    defaults: bool,
) -> None:
    """Serve model versions in one MLServer (REST and gRPC): the values file's stable version,
    or those given with --version, or --all.

    Unversioned calls (/v2/models/<model>/infer) are answered by the highest version served
    (MLServer's rule), so by default only the stable version is served; the banner says which
    version answers them."""
    from .server import MLServerProcess, ServerSettings

    spec = load_spec(values_path)
    model = spec.model.name
    stable = stable_predictor(spec.predictors).version
    if serve_all and versions:
        raise ServingError("pass --version or --all, not both")
    if serve_all:
        versions = tuple(f.name for f in _version_dirs(root) if f.parent.name == model)
        if not versions:
            raise ServingError(f"no models under {root}; run 'make models' first")
    served = list(dict.fromkeys(versions or (stable,)))
    metas = []
    for version in served:
        folder = artifacts.version_dir(root, model, version)
        # The runtime refuses these too; checked first so the reason is plain, and so a folder
        # whose model-settings.json names another runtime (which would not check) is not served.
        metas.append(artifacts.check_version(folder, spec.model.artifacts))
    ports = {
        "http_port": http_port,
        "grpc_port": grpc_port,
        "metrics_port": metrics_port,
        "host": host,
    }
    settings = (
        ServerSettings.mlserver_defaults(**ports) if defaults else ServerSettings.tuned(**ports)
    ).model_copy(update={"artifact_digests": artifacts.digests_for(spec.model.artifacts, served)})
    with tempfile.TemporaryDirectory(prefix="serving-serve-") as tmp:
        if len(served) == 1:
            repository = artifacts.version_dir(root, model, served[0])
        else:  # MLServer loads every model folder under its repository: only the served ones
            repository = Path(tmp) / "repository"
            for version in served:
                link = repository / model / version
                link.parent.mkdir(parents=True, exist_ok=True)
                link.symlink_to(artifacts.version_dir(root, model, version).resolve())
        log = Path(tmp) / "mlserver.log"
        server = MLServerProcess(repository, settings, log_path=log).start()
        try:
            try:
                server.wait_ready([model])
            except ServingError as e:  # its log goes with the temporary folder: quote it
                message = e.message.split("; see ")[0]
                raise ServingError(f"{message}\n{_mlserver_reason(log)}") from None
            default = _default_version(server.rest_url, model)
            click.echo(f"MLServer ready ({'defaults' if defaults else 'tuned'} settings)")
            click.echo(f"  REST  {server.rest_url}/v2/models/{model}/versions/<version>/infer")
            click.echo(f"  gRPC  {server.grpc_target}  (inference.GRPCInferenceService)")
            click.echo(f"  metrics http://{host}:{metrics_port}/metrics")
            for m in metas:
                role = " (stable)" if m.version == stable else ""
                click.echo(f"  model {m.model} version {m.version}{role}: {m.description}")
            note = (
                f"the stable version in {values_path}"
                if default == stable
                else f"the highest version served, MLServer's rule; NOT the stable {stable} of "
                f"{values_path}: call /v2/models/{model}/versions/{stable}/infer for it"
            )
            click.echo(f"  unversioned calls (/v2/models/{model}/infer) are answered by {default}"
                       f" ({note})")
            click.echo("Ctrl-C to stop.")
            signal.signal(signal.SIGTERM, lambda *_: sys.exit(0))
            assert server.process is not None
            while server.process.poll() is None:
                time.sleep(0.5)
            raise ServingError(
                f"MLServer exited with code {server.process.returncode}\n{_mlserver_reason(log)}"
            )
        except KeyboardInterrupt:
            pass
        finally:
            server.stop()


def _default_version(rest_url: str, model: str) -> str | None:
    """The version MLServer answers unversioned calls with: ask it (one row of zeros)."""
    from .client import InferenceFailed, RestClient

    client = RestClient(rest_url, timeout=10)
    try:
        width = int(client.metadata(model)["inputs"][0]["shape"][-1])
        import numpy as np

        return client.infer(model, np.zeros((1, width))).model_version
    except (InferenceFailed, KeyError, IndexError, ValueError, TypeError):
        return None
    finally:
        client.close()


if __name__ == "__main__":
    main()
