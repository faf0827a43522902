"""The console's "Now" panel as data: what runs (predictors, versions, weights, replicas), how it
behaves over the last minutes (requests/s, p50/p99, error rate) and how the shadow agrees.

Nothing here is a second implementation: the local stack is read with `serving status`'s
function, the cluster with `serving status --cluster`'s, and the figures come from the rollout
analysis' metrics sources (the router's /metrics or Prometheus) and their window arithmetic.
"""

from __future__ import annotations

import ast
import contextlib
import re
import threading
import time
from collections import deque
from dataclasses import dataclass, field
from typing import Any

from .. import dataset
from ..errors import ServingError
from ..rollout.metrics_source import (
    PredictorWindow,
    PrometheusSource,
    RouterMetricsSource,
    Window,
    subtract,
)
from ..router.commands import replica_problem, stack_status
from ..router.stack import read_state
from ..spec import load_spec
from .config import ConsoleConfig

#: the span the summary figures cover
RECENT_SECONDS = 60.0
#: how much chart history is kept
KEEP_SECONDS = 600.0


@dataclass
class PredictorNow:
    name: str
    version: str
    shadow: bool
    traffic: int
    live: str
    """Live replicas over replicas, e.g. "2/2" (on a cluster: available over wanted)."""
    problems: list[str] = field(default_factory=list)

    @property
    def traffic_label(self) -> str:
        return f"mirrors {self.traffic}%" if self.shadow else f"{self.traffic}%"


@dataclass
class Disagreement:
    predictor: str
    """The predictor whose answer the shadow's was compared with."""
    input_row: list[float] | None
    primary_answer: str
    shadow_answer: str
    detail: str


@dataclass
class ShadowNow:
    predictor: str
    version: str
    agreement: float | None
    rows_compared: int
    disagreements: list[Disagreement]
    note: str = ""


@dataclass
class Now:
    deployment: str
    predictors: list[PredictorNow]
    shadow: ShadowNow | None


def read_now(config: ConsoleConfig) -> Now:
    """What runs now; ServingError (saying what to run) when the stack or cluster is away."""
    if config.kubernetes:
        return _cluster_now(config)
    status = stack_status(config.state_dir, timeout=3)
    predictors = []
    for p in status["predictors"]:
        live = sum(r["alive"] for r in p["replicas"])
        predictors.append(PredictorNow(
            p["name"], p["version"], p["shadow"], p["traffic"], f"{live}/{len(p['replicas'])}",
            [line for r in p["replicas"] if (line := replica_problem(r))]))
    shadow = next((p for p in predictors if p.shadow), None)
    shadow_now = None
    if shadow is not None:
        agreement = status["shadow"]["agreement"]
        examples = [disagreement(d) for d in reversed(agreement.get("recentDisagreements", []))]
        note = ""
        url = config.comparator or read_state(config.state_dir).get("comparatorUrl")
        if url:  # the comparator keeps the input rows too
            try:
                examples = comparator_disagreements(url, str(status["deployment"]), shadow.name)
            except ServingError as e:
                note = f"{e.message}; showing the router's examples"
        shadow_now = ShadowNow(shadow.name, shadow.version, agreement["agreementRate"],
                               int(agreement["rowsCompared"]), examples, note)
    return Now(f"{status['namespace']}/{status['deployment']}", predictors, shadow_now)


def comparator_disagreements(url: str, deployment: str, shadow: str, limit: int = 5
                             ) -> list[Disagreement]:
    """The latest disagreements of this shadow from the comparator (serving.comparator.client),
    newest first."""
    from ..comparator.client import disagreements as read_disagreements

    try:
        items = read_disagreements(url, limit=50, timeout=3)["disagreements"]
    except (KeyError, TypeError) as e:
        raise ServingError(f"the comparator at {url} answered without disagreements ({e})"
                           ) from e
    mine = [d for d in items if d.get("deployment") in (None, deployment)
            and d.get("shadow") in (None, shadow)]
    return [disagreement(d) for d in mine[:limit]]


def _cluster_now(config: ConsoleConfig) -> Now:
    from ..k8s.status import cluster_sdep, predictor_rows

    try:
        sdep, spec = cluster_sdep(config.values_path, context=config.context)
    except ServingError:
        raise
    except Exception as e:  # the Kubernetes client's own errors (connection, 403, ...)
        raise ServingError(f"the cluster does not answer ({type(e).__name__}: {e}); check "
                           "'kubectl get sdep' and the kubeconfig context") from e
    rows = predictor_rows(sdep, spec)
    predictors = [PredictorNow(r["name"], r["version"], r["shadow"], r["traffic"], r["ready"])
                  for r in rows]
    shadow = next((p for p in predictors if p.shadow), None)
    shadow_now = None
    if shadow is not None:
        note = ("examples of disagreements: start the console with --comparator URL (the "
                "comparator's Service, e.g. through kubectl port-forward)")
        examples: list[Disagreement] = []
        rate, rows_compared = None, 0
        if config.comparator:
            try:
                examples = comparator_disagreements(config.comparator, spec.deployment.name,
                                                    shadow.name)
                note = ""
            except ServingError as e:
                note = e.message
        if config.prometheus:
            try:
                window = PrometheusSource(config.prometheus, spec.deployment.name,
                                          spec.deployment.namespace).window(
                    time.time() - 5 * RECENT_SECONDS)
                agreed, disagreed = window.shadow_rows.get(shadow.name, (0.0, 0.0))
                rows_compared = int(agreed + disagreed)
                rate = agreed / rows_compared if rows_compared else None
                note = "agreement over the last 5 minutes" + (f"; {note}" if note else "")
            except ServingError as e:  # what runs is still worth showing
                note = f"no agreement figures: {e.message}"
        shadow_now = ShadowNow(shadow.name, shadow.version, rate, rows_compared, examples, note)
    meta = sdep["metadata"]
    return Now(f"{meta['namespace']}/{meta['name']}", predictors, shadow_now)


_DETAIL = re.compile(r"row (\d+): primary (\{.*\}) vs shadow (\{.*\})$")


def disagreement(item: dict[str, Any]) -> Disagreement:
    """One recent disagreement: the comparator's (`input` row, `primaryAnswer`, `shadowAnswer`)
    or the router's (the row index and both answers in `detail` only)."""
    detail = str(item.get("detail", ""))
    primary: Any = item.get("primaryAnswer")
    shadow: Any = item.get("shadowAnswer")
    if (primary is None or shadow is None) and (m := _DETAIL.match(detail)):
        with contextlib.suppress(ValueError, SyntaxError):  # then shown as the detail only
            primary, shadow = ast.literal_eval(m.group(2)), ast.literal_eval(m.group(3))
    row = item.get("input")
    if isinstance(row, dict) and len(row) == 1:  # the comparator's: {input name: row}
        row = next(iter(row.values()))
    return Disagreement(str(item.get("primary", "?")),
                        [float(v) for v in row] if isinstance(row, list) else None,
                        describe_answer(primary), describe_answer(shadow), detail)


def describe_answer(answer: Any) -> str:
    """{'predict': [1], 'predict_proba': [0.1, 0.9]} -> 'benign (p=0.90)'."""
    if not isinstance(answer, dict):
        return "?" if answer is None else str(answer)
    label = answer.get("predict")
    label = label[0] if isinstance(label, list) and len(label) == 1 else label
    proba = answer.get("predict_proba")
    classes = dataset.load().class_names
    text = (classes[label] if isinstance(label, int) and 0 <= label < len(classes)
            else f"class {label}")
    if isinstance(proba, list) and isinstance(label, int) and 0 <= label < len(proba):
        text += f" (p={float(proba[label]):.2f})"
    return text


@dataclass
class Figures:
    """One predictor over one span of time."""

    requests_per_second: float
    p50_ms: float | None
    p99_ms: float | None
    error_rate: float | None


def figures(entry: PredictorWindow, seconds: float) -> Figures:
    p50, p99 = entry.quantile(0.5), entry.quantile(0.99)
    return Figures(entry.requests / seconds if seconds > 0 else 0.0,
                   None if p50 is None else p50 * 1000, None if p99 is None else p99 * 1000,
                   entry.errors / entry.requests if entry.requests > 0 else None)


class LiveMetrics:
    """Figures per predictor over recent intervals (chart points) and the last minute.

    Locally the router's /metrics is scraped at each refresh and consecutive scrapes are
    subtracted; with Prometheus each refresh asks for the increase over the last interval."""

    def __init__(self, config: ConsoleConfig) -> None:
        self.config = config
        self.points: deque[tuple[float, dict[str, Figures]]] = deque()
        self._scrapes: deque[tuple[float, Window]] = deque()
        self._metrics_url: str | None = None
        self._prometheus: PrometheusSource | None = None
        self._lock = threading.Lock()
        if config.prometheus:
            spec = load_spec(config.values_path)
            self._prometheus = PrometheusSource(
                config.prometheus, spec.deployment.name,
                spec.deployment.namespace if config.kubernetes else None)

    def refresh(self, now: float | None = None) -> None:
        with self._lock:  # one instance serves every open page (Streamlit's cache_resource)
            self._refresh(time.time() if now is None else now)

    def _refresh(self, now: float) -> None:
        if self._prometheus is not None:
            step = max(self.config.refresh_seconds, 15.0)  # Prometheus' scrape interval
            window = self._prometheus.window(now - step)
            self._add_point(now, {n: figures(e, window.seconds)
                                  for n, e in window.predictors.items()})
            return
        window = self._router().scrape()
        if self._scrapes and _went_back(window, self._scrapes[-1][1]):
            self._scrapes.clear()  # a new stack: counters started again
            self.points.clear()
        if self._scrapes:
            then, previous = self._scrapes[-1]
            if now - then < 0.5:
                return
            delta = subtract(window, previous, now - then)
            self._add_point(now, {n: figures(e, delta.seconds)
                                  for n, e in delta.predictors.items()})
        self._scrapes.append((now, window))
        while self._scrapes and now - self._scrapes[0][0] > RECENT_SECONDS + 30:
            self._scrapes.popleft()

    def _router(self) -> RouterMetricsSource:
        state = read_state(self.config.state_dir)
        url = state["restUrl"] + "/metrics"
        if url != self._metrics_url:
            self._metrics_url = url
            self._scrapes.clear()
            self.points.clear()
        return RouterMetricsSource(url, str(state["deployment"]))

    def _add_point(self, now: float, point: dict[str, Figures]) -> None:
        self.points.append((now, point))
        while self.points and now - self.points[0][0] > KEEP_SECONDS:
            self.points.popleft()

    def recent(self, now: float | None = None) -> dict[str, Figures]:
        """Each predictor over the last minute (or what has been seen of it so far)."""
        with self._lock:
            return self._recent(time.time() if now is None else now)

    def _recent(self, now: float) -> dict[str, Figures]:
        if self._prometheus is not None:
            window = self._prometheus.window(now - RECENT_SECONDS)
            return {n: figures(e, window.seconds) for n, e in window.predictors.items()}
        if len(self._scrapes) < 2:
            return {}
        then, first = next(((t, w) for t, w in self._scrapes if now - t <= RECENT_SECONDS),
                           self._scrapes[0])
        last_at, last = self._scrapes[-1]
        if last_at <= then:
            then, first = self._scrapes[0]
        delta = subtract(last, first, last_at - then)
        return {n: figures(e, delta.seconds) for n, e in delta.predictors.items()}

    def latest_at(self) -> float:
        with self._lock:
            return self.points[-1][0] if self.points else 0.0

    def series(self, metric: str) -> dict[str, list[tuple[float, float | None]]]:
        """Chart data: per predictor, (time, value) of one Figures field."""
        out: dict[str, list[tuple[float, float | None]]] = {}
        with self._lock:
            points = list(self.points)
        for at, point in points:
            for name, f in point.items():
                out.setdefault(name, []).append((at, getattr(f, metric)))
        return out


def _went_back(now: Window, then: Window) -> bool:
    return any(now.predictor(n).requests < e.requests for n, e in then.predictors.items()
               if n in now.predictors)
