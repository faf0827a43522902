"""`serving deploy`: validate the values with every engine, server-side apply the rendered objects,
then wait until the SeldonDeployment is Available. Nothing reaches the cluster unless all checks
pass."""

from __future__ import annotations

from pathlib import Path
from typing import Any

from kubernetes.dynamic import DynamicClient

from ..spec import load_spec
from . import validate
from .apply import Progress, apply_objects, namespace_object
from .client import FIELD_MANAGER, connect
from .wait import wait_available


def deploy(
    values_path: str | Path,
    *,
    kubeconfig: str | None = None,
    context: str | None = None,
    api: DynamicClient | None = None,
    field_manager: str = FIELD_MANAGER,
    force_conflicts: bool = False,
    create_namespace: bool = False,
    dry_run: bool = False,
    wait: bool = True,
    timeout: float = 600,
    interval: float = 5,
    progress: Progress = print,
) -> dict[str, Any] | None:
    """Returns the Available SeldonDeployment, or None when not waiting (or a dry run)."""
    report = validate.check_values(Path(values_path))
    progress(f"{values_path}: valid ({len(report.checks)} checks); applying as '{field_manager}'")
    spec = load_spec(values_path)
    namespace, name = spec.deployment.namespace, spec.deployment.name
    objects = report.objects
    if create_namespace:
        objects = [namespace_object(namespace), *objects]
    api = api or connect(kubeconfig, context)
    apply_objects(
        api,
        objects,
        field_manager=field_manager,
        force_conflicts=force_conflicts,
        dry_run=dry_run,
        progress=progress,
    )
    if dry_run or not wait:
        return None
    progress(f"waiting up to {timeout:g}s for SeldonDeployment {namespace}/{name} to be Available")
    return wait_available(
        api, namespace, name, timeout=timeout, interval=interval, progress=progress
    )
