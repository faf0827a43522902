"""What the cluster is serving for a values file: per predictor its version, traffic (and where
it differs from the values), replicas wanted and ready; then the deployment's conditions."""

from __future__ import annotations

from pathlib import Path
from typing import Any

from kubernetes.dynamic import DynamicClient

from ..spec import Spec, load_spec
from .client import connect
from .wait import get_sdep


def _ready(sdep: dict[str, Any], predictor: str) -> str:
    # The operator names a predictor's Deployments <sdep>-<predictor>-<index>-<containers>.
    prefix = f"{sdep['metadata']['name']}-{predictor}-"
    deployments = (sdep.get("status") or {}).get("deploymentStatus") or {}
    mine = [s for d, s in deployments.items() if d.startswith(prefix)]
    if not mine:
        return "-"
    return f"{sum(s.get('availableReplicas', 0) for s in mine)}/{sum(s.get('replicas', 0) for s in mine)}"


def _wanted(p: dict[str, Any]) -> str:
    hpa = next((c["hpaSpec"] for c in p.get("componentSpecs") or [] if c.get("hpaSpec")), None)
    if hpa:
        return f"{hpa.get('minReplicas', 1)}-{hpa['maxReplicas']} (hpa)"
    return str(p.get("replicas", 1))


def format_status(sdep: dict[str, Any], spec: Spec | None = None) -> str:
    meta, status = sdep["metadata"], sdep.get("status") or {}
    declared = {p.name: p for p in spec.predictors} if spec else {}
    lines = [
        f"SeldonDeployment {meta['namespace']}/{meta['name']}: {status.get('state') or 'no status yet'}"
        f" (generation {meta.get('generation', '?')}, observed {status.get('observedGeneration', '?')})"
    ]
    rows = [("PREDICTOR", "VERSION", "TRAFFIC", "REPLICAS", "READY")]
    for p in sdep["spec"].get("predictors") or []:
        traffic = int(p.get("traffic", 0))
        shown = f"mirror {traffic}%" if p.get("shadow") else f"{traffic}%"
        want = declared.get(p["name"])
        if want is not None and want.traffic != traffic and (p.get("shadow") or len(declared) > 1):
            shown += f" (values: {want.traffic}%)"
        version = (p.get("labels") or {}).get("version", "?")
        rows.append((p["name"], version, shown, _wanted(p), _ready(sdep, p["name"])))
    widths = [max(len(r[i]) for r in rows) for i in range(len(rows[0]))]
    lines += [
        "  " + "  ".join(c.ljust(w) for c, w in zip(r, widths, strict=True)).rstrip() for r in rows
    ]
    for name in sorted(set(declared) - {p["name"] for p in sdep["spec"].get("predictors") or []}):
        lines.append(f"  {name}: in the values but not on the cluster; run 'serving deploy'")
    conditions = status.get("conditions") or []
    if conditions:
        lines.append("conditions:")
        for c in conditions:
            detail = c.get("reason") or ""
            if c.get("message"):
                detail += f": {c['message']}"
            lines.append(f"  {c.get('type')}={c.get('status')}" + (f"  {detail}" if detail else ""))
    return "\n".join(lines)


def cluster_status(
    values_path: str | Path,
    kubeconfig: str | None = None,
    context: str | None = None,
    *,
    api: DynamicClient | None = None,
) -> str:
    """The cluster's view of the deployment a values file describes (for `serving status --cluster`)."""
    spec = load_spec(values_path)
    api = api or connect(kubeconfig, context)
    sdep = get_sdep(api, spec.deployment.namespace, spec.deployment.name)
    return format_status(sdep, spec)
