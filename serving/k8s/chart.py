"""Render and lint the chart with Helm's own engine (helm-python-sdk embeds Helm v4's Go SDK).

No helm binary and no cluster: values.schema.json, validateValues and the templates run exactly as
`helm install` would run them, so what renders here is what Helm would send.
"""

from __future__ import annotations

import logging
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import helm_python as helm
import yaml

from .errors import ChartError

REPO_ROOT = Path(__file__).resolve().parents[2]
CHART_DIR = REPO_ROOT / "charts" / "seldon-model"
KUBE_VERSION = "v1.31.0"
"""The Kubernetes version lint and schema validation assume (kind's default node is 1.31+)."""

# Objects are applied in this order: the NetworkPolicy exists before any model pod does.
APPLY_ORDER = ["Namespace", "NetworkPolicy", "ConfigMap", "SeldonDeployment"]

# Route the Go library's log lines into Python logging (silent unless configured) instead of stderr.
helm.enable_logging(logging.WARNING)


@dataclass
class Rendered:
    objects: list[dict[str, Any]]
    """What `kubectl apply` / `serving deploy` creates, in apply order."""
    hooks: list[dict[str, Any]] = field(default_factory=list)
    """Helm hooks (the `helm test` pod): Helm runs them, a plain apply must not."""
    notes: str = ""
    texts: list[str] = field(default_factory=list)
    """The rendered text of the non-hook templates (with their comments), in apply order."""


def _kind_rank(obj: dict[str, Any]) -> int:
    kind = obj.get("kind", "")
    return APPLY_ORDER.index(kind) if kind in APPLY_ORDER else len(APPLY_ORDER)


def _refusal(detail: str) -> str:
    # Keep Helm's own words (they name the key) but drop its template coordinates.
    detail = detail.strip()
    if "values are invalid:" in detail:
        detail = "values are invalid:" + detail.split("values are invalid:", 1)[1]
    return detail


def merged_values(values: dict[str, Any] | None, chart_dir: Path = CHART_DIR) -> dict[str, Any]:
    """The chart defaults coalesced with `values`, as an install would use them."""
    with helm.Chart.load(chart_dir) as chart:
        return chart.merge_values(values or {})


def render(
    values: dict[str, Any] | None = None,
    *,
    source: str = "values",
    chart_dir: Path = CHART_DIR,
    release: str | None = None,
) -> Rendered:
    """Render like `helm install --namespace <deployment.namespace> <deployment.name>`."""
    try:
        with helm.Chart.load(chart_dir) as chart:
            merged = chart.merge_values(values or {})
            deployment = merged.get("deployment") or {}
            manifests = chart.render(
                values=values or {},
                name=release or deployment.get("name") or "seldon-model",
                namespace=deployment.get("namespace") or "default",
                is_install=True,
            )
    except helm.HelmError as e:
        raise ChartError(f"{source}: the chart refused it:\n{_refusal(e.detail)}") from None
    rendered = Rendered(objects=[])
    texts: list[tuple[int, str]] = []
    for template, text in sorted(manifests.items()):
        if template.endswith("NOTES.txt"):
            rendered.notes = text
            continue
        docs = [d for d in yaml.safe_load_all(text) if d]
        for doc in docs:
            annotations = (doc.get("metadata") or {}).get("annotations") or {}
            (rendered.hooks if "helm.sh/hook" in annotations else rendered.objects).append(doc)
        if docs and all(d not in rendered.hooks for d in docs):
            texts.append((min(_kind_rank(d) for d in docs), text.strip()))
    rendered.objects.sort(key=_kind_rank)
    rendered.texts = [t for _, t in sorted(texts, key=lambda rt: rt[0])]
    return rendered


def lint(
    values: dict[str, Any] | None = None,
    *,
    chart_dir: Path = CHART_DIR,
    kube_version: str = KUBE_VERSION,
) -> list[str]:
    """`helm lint --strict`: every warning or error, as 'path: message'."""
    namespace = merged_values(values, chart_dir).get("deployment", {}).get("namespace")
    report = helm.lint(
        chart_dir, values or {}, strict=True, namespace=namespace, kube_version=kube_version
    )
    return [
        f"{m['path']}: {m['error'].strip()}"
        for m in report.get("messages", [])
        if m.get("severity", 0) >= 2  # strict: warnings count as errors; info does not
    ]
