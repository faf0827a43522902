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


def predictor_rows(sdep: dict[str, Any], spec: Spec | None = None) -> list[dict[str, Any]]:
    """Per predictor on the cluster: name, version, shadow, traffic, the values' traffic where it
    differs (else None), replicas wanted and ready ("available/replicas", "-" before any)."""
    declared = {p.name: p for p in spec.predictors} if spec else {}
    rows = []
    for p in sdep["spec"].get("predictors") or []:
        traffic = int(p.get("traffic", 0))
        want = declared.get(p["name"])
        differs = (want is not None and want.traffic != traffic
                   and (bool(p.get("shadow")) or len(declared) > 1))
        rows.append({"name": p["name"], "version": (p.get("labels") or {}).get("version", "?"),
                     "shadow": bool(p.get("shadow")), "traffic": traffic,
                     "valuesTraffic": want.traffic if differs and want else None,
                     "wanted": _wanted(p), "ready": _ready(sdep, p["name"])})
    return rows


def cluster_sdep(values_path: str | Path, kubeconfig: str | None = None,
                 context: str | None = None, *, api: DynamicClient | None = None
                 ) -> tuple[dict[str, Any], Spec]:
    """The SeldonDeployment a values file describes, as the cluster has it, and the spec."""
    spec = load_spec(values_path)
    api = api or connect(kubeconfig, context)
    return get_sdep(api, spec.deployment.namespace, spec.deployment.name), spec


def format_status(sdep: dict[str, Any], spec: Spec | None = None) -> str:
    meta, status = sdep["metadata"], sdep.get("status") or {}
    declared = {p.name: p for p in spec.predictors} if spec else {}
    lines = [
        f"SeldonDeployment {meta['namespace']}/{meta['name']}: {status.get('state') or 'no status yet'}"
        f" (generation {meta.get('generation', '?')}, observed {status.get('observedGeneration', '?')})"
    ]
    rows = [("PREDICTOR", "VERSION", "TRAFFIC", "REPLICAS", "READY")]
    for r in predictor_rows(sdep, spec):
        shown = f"mirror {r['traffic']}%" if r["shadow"] else f"{r['traffic']}%"
        if r["valuesTraffic"] is not None:
            shown += f" (values: {r['valuesTraffic']}%)"
        rows.append((r["name"], r["version"], shown, r["wanted"], r["ready"]))
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
    sdep, spec = cluster_sdep(values_path, kubeconfig, context, api=api)
    return format_status(sdep, spec)
