"""Server-side apply of rendered objects, as `kubectl apply --server-side --field-manager=serving`.

The API server merges what we send with what others own and records us as the manager of the
fields we set; a field another manager changed since is a conflict, reported field by field, never
silently overwritten (unless force_conflicts). fieldValidation=Strict makes the server refuse
unknown fields instead of dropping them.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

from kubernetes.client.rest import ApiException
from kubernetes.dynamic import DynamicClient

from .client import FIELD_MANAGER, describe, resource, status_of
from .errors import ApplyConflict, ClusterError

Progress = Callable[[str], None]

# Pod Security admission in warn + audit mode: the model containers meet "restricted", but the
# executor and storage initializer the Seldon operator injects do not, so enforce would block them.
NAMESPACE_LABELS = {
    "pod-security.kubernetes.io/warn": "restricted",
    "pod-security.kubernetes.io/audit": "restricted",
}


def ref(obj: dict[str, Any]) -> str:
    meta = obj.get("metadata") or {}
    where = f"{meta['namespace']}/" if meta.get("namespace") else ""
    return f"{obj.get('kind')} {where}{meta.get('name')}"


def namespace_object(name: str) -> dict[str, Any]:
    return {
        "apiVersion": "v1",
        "kind": "Namespace",
        "metadata": {"name": name, "labels": dict(NAMESPACE_LABELS)},
    }


def _failure(obj: dict[str, Any], e: ApiException, field_manager: str) -> ClusterError:
    status = status_of(e)
    details = status.get("details") or {}
    if e.status == 409:
        causes = details.get("causes") or []
        conflicts = [c.get("message") or c.get("field", "") for c in causes] or [describe(e)]
        return ApplyConflict(ref(obj), field_manager, conflicts)
    if e.status == 404 and details.get("kind") == "namespaces":
        ns = details.get("name") or obj["metadata"].get("namespace")
        return ClusterError(
            f"cannot apply {ref(obj)}: namespace {ns!r} does not exist; create it "
            f"(kubectl create namespace {ns}) or pass --create-namespace"
        )
    return ClusterError(f"cannot apply {ref(obj)}: {describe(e)}")


def apply_objects(
    api: DynamicClient,
    objects: list[dict[str, Any]],
    *,
    field_manager: str = FIELD_MANAGER,
    force_conflicts: bool = False,
    dry_run: bool = False,
    progress: Progress = print,
) -> list[dict[str, Any]]:
    """Apply each object in order; stop at the first refusal. Returns what the server stored."""
    applied = []
    for obj in objects:
        meta = obj["metadata"]
        res = resource(api, obj["apiVersion"], obj["kind"])
        try:
            result = api.server_side_apply(
                res,
                body=obj,
                name=meta["name"],
                namespace=meta.get("namespace") if res.namespaced else None,
                field_manager=field_manager,
                force_conflicts=force_conflicts or None,
                dry_run="All" if dry_run else None,
                query_params=[("fieldValidation", "Strict")],
            )
        except ApiException as e:
            raise _failure(obj, e, field_manager) from None
        stored = result.to_dict()
        generation = (stored.get("metadata") or {}).get("generation")
        suffix = f" (generation {generation})" if generation else ""
        progress(f"{'validated' if dry_run else 'applied'} {ref(obj)}{suffix}")
        applied.append(stored)
    return applied
