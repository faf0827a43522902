"""CLI commands for Kubernetes (registered on `serving` by serving/cli.py): thin wrappers over
validate, manifests and deploy."""

from __future__ import annotations

import click

from ..cli_common import DEFAULT_VALUES, friendly_errors
from ..errors import ServingError
from . import chart


@click.command("validate")
@click.argument("path", type=click.Path(exists=True))
@click.option(
    "--kube-version", default=chart.KUBE_VERSION, show_default=True, help="Kubernetes schemas."
)
@friendly_errors
def validate_command(path: str, kube_version: str) -> None:
    """Check a values file or rendered manifests (file or folder) with the real engines: the spec,
    Helm (schema, validateValues, lint --strict), Kubernetes schemas, the Seldon CRD and rules."""
    from .validate import check_path

    click.echo(check_path(path, kube_version).summary())


@click.command("manifests")
@click.option("--check", is_flag=True, help="Only report generated files that are stale.")
@friendly_errors
def manifests_command(check: bool) -> None:
    """Render the chart's default values into manifests/ and regenerate the files the chart
    derives from serving/spec.py (values.schema.json, files/predictor-defaults.json)."""
    from . import manifests

    if check:
        stale = manifests.stale_files()
        if stale:
            raise ServingError(
                "stale generated files: " + ", ".join(map(str, stale)) + "; run 'make manifests'"
            )
        click.echo("generated files are up to date")
        return
    for path in manifests.write():
        click.echo(f"wrote {path.relative_to(chart.REPO_ROOT)}")


@click.command("deploy")
@click.option("--values", "values_path", default=DEFAULT_VALUES, show_default=True)
@click.option("--kubeconfig", help="Kubeconfig file (default: $KUBECONFIG or ~/.kube/config).")
@click.option("--context", help="Kubeconfig context (default: the current one).")
@click.option("--field-manager", default="serving", show_default=True)
@click.option("--force-conflicts", is_flag=True, help="Take over fields other managers own.")
@click.option("--create-namespace", is_flag=True, help="Apply the namespace too.")
@click.option(
    "--dry-run", is_flag=True, help="Server-side dry run: admission runs, nothing stored."
)
@click.option("--no-wait", is_flag=True, help="Do not wait for Available.")
@click.option("--timeout", default=600.0, show_default=True, help="Seconds to wait.")
@friendly_errors
def deploy_command(
    values_path: str,
    kubeconfig: str | None,
    context: str | None,
    field_manager: str,
    force_conflicts: bool,
    create_namespace: bool,
    dry_run: bool,
    no_wait: bool,
    timeout: float,
) -> None:
    """Validate, server-side apply the chart's objects, and wait until the SeldonDeployment is
    Available (or print its failing conditions and the pods' reasons)."""
    from .deploy import deploy

    sdep = deploy(
        values_path,
        kubeconfig=kubeconfig,
        context=context,
        field_manager=field_manager,
        force_conflicts=force_conflicts,
        create_namespace=create_namespace,
        dry_run=dry_run,
        wait=not no_wait,
        timeout=timeout,
        progress=click.echo,
    )
    if sdep is not None:
        meta = sdep["metadata"]
        click.echo(f"SeldonDeployment {meta['namespace']}/{meta['name']} is Available")


COMMANDS: list[click.Command] = [validate_command, manifests_command, deploy_command]
