"""From events to verdicts: a request meets its response, a shadow's exchange meets a primary's.

1. Halves: each predictor's request and response meet by (deployment, endpoint, request id).
2. A complete shadow exchange meets a primary one of the same deployment by request id (when the
   caller sent `Seldon-Puid`, both executors use it), else by the digest of the request's inputs
   (each executor made up its own id; the models are deterministic, so any primary answer to the
   same input is a valid reference). Whichever comes first waits for the other.
3. The two answers are compared row by row (serving.agreement, as on the local stack).

Events may come out of order, late, twice or never: everything waiting is bounded (pairing.py)
and every loss is counted (metrics.py).
"""

from __future__ import annotations

import contextlib
import time
from collections import deque
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

from .. import agreement
from .events import InferenceEvent
from .metrics import ComparatorMetrics
from .pairing import BoundedStore


@dataclass
class Exchange:
    """One predictor's request and response for one request id."""

    request: InferenceEvent | None = None
    response: InferenceEvent | None = None


@dataclass
class Complete:
    request: InferenceEvent
    response: InferenceEvent
    digest: bytes


@dataclass
class Settings:
    rtol: float = 1e-6
    ttl_seconds: float = 30.0
    max_pending: int = 10_000
    """Per waiting room (halves, shadows, primaries)."""
    deployments: frozenset[str] = frozenset()
    """The SeldonDeployments taken; empty: any."""
    examples: int = 50
    """Recent disagreements kept for /disagreements."""


@dataclass
class Verdict:
    deployment: str
    shadow: str
    primary: str
    result: agreement.Comparison


Report = Callable[[Verdict], None]
EXPIRE_EVERY = 0.05  # seconds: expiring is checked at most this often per event


@dataclass
class Comparator:
    settings: Settings
    metrics: ComparatorMetrics = field(default_factory=ComparatorMetrics)
    report: Report | None = None
    """Also told every verdict (the local stack's telemetry to its control process)."""
    clock: Callable[[], float] = time.time
    disagreements: deque[dict[str, Any]] = field(init=False)
    totals: dict[tuple[str, str], list[int]] = field(default_factory=dict)
    """(deployment, shadow) -> [rows, agreed], for the agreement ratio."""

    def __post_init__(self) -> None:
        s = self.settings
        self._counters: dict[tuple[str, ...], Any] = {}  # label children, looked up once
        self._expired_at = 0.0
        self.disagreements = deque(maxlen=s.examples)
        self.seen: BoundedStore[str, None] = BoundedStore(s.ttl_seconds, 4 * s.max_pending)
        self.halves: BoundedStore[tuple[str, str, str, str], Exchange] = BoundedStore(
            s.ttl_seconds, s.max_pending, self._half_dropped)
        self.shadows: BoundedStore[tuple[str, str, str], Complete] = BoundedStore(
            s.ttl_seconds, s.max_pending, self._shadow_dropped)
        self.shadows_by_digest: dict[tuple[str, bytes], set[tuple[str, str, str]]] = {}
        self.primaries: BoundedStore[tuple[str, str], Complete] = BoundedStore(
            s.ttl_seconds, s.max_pending, self._primary_dropped)
        self.primaries_by_digest: dict[tuple[str, bytes], tuple[str, str]] = {}

    # -- losses, counted ------------------------------------------------------------------------
    def _half_dropped(self, key: tuple[str, str, str, str], half: Exchange, why: str) -> None:
        deployment, endpoint, _, _ = key
        what = "request_without_response" if half.response is None else \
            "response_without_request"
        counter = self.metrics.unmatched if why == "expired" else self.metrics.evicted
        counter.labels(deployment, endpoint, what if why == "expired" else "half").inc()

    def _shadow_dropped(self, key: tuple[str, str, str], shadow: Complete, why: str) -> None:
        deployment, endpoint, _ = key
        self._unindex_shadow(key, shadow)
        if why == "expired":
            self.metrics.unmatched.labels(deployment, endpoint, "shadow_without_primary").inc()
        else:
            self.metrics.evicted.labels(deployment, endpoint, "shadow").inc()

    def _primary_dropped(self, key: tuple[str, str], primary: Complete, why: str) -> None:
        index = (key[0], primary.digest)
        if self.primaries_by_digest.get(index) == key:
            del self.primaries_by_digest[index]
        if why == "evicted":  # expiring unused is normal: most are never mirrored
            self.metrics.evicted.labels(key[0], primary.request.endpoint, "primary").inc()

    def _unindex_shadow(self, key: tuple[str, str, str], shadow: Complete) -> None:
        index = (key[0], shadow.digest)
        keys = self.shadows_by_digest.get(index)
        if keys is not None:
            keys.discard(key)
            if not keys:
                del self.shadows_by_digest[index]

    # -- events ---------------------------------------------------------------------------------
    def take(self, event: InferenceEvent, role: str) -> bool:
        """Take one event (already parsed and known to be of a served deployment). False: a
        duplicate, ignored."""
        now = self.clock()
        if now - self._expired_at > EXPIRE_EVERY:
            self.expire(now)
        if event.id in self.seen:
            self.metrics.duplicates.labels(event.deployment, event.endpoint).inc()
            return False
        self.seen.put(event.id, None, now)
        self._child("events", event.deployment, event.endpoint, role, event.kind).inc()
        key = (event.deployment, event.endpoint, event.request_id, role)
        half = self.halves.get(key) or Exchange()
        if getattr(half, event.kind) is not None:  # a retried call logged again: first one wins
            self.metrics.duplicates.labels(event.deployment, event.endpoint).inc()
            return False
        setattr(half, event.kind, event)
        if half.request is None or half.response is None:
            self.halves.put(key, half, now)
            return True
        self.halves.pop(key)
        done = Complete(half.request, half.response, half.request.digest())
        if role == "shadow":
            self._shadow_complete(done, now, event)
        else:
            self._primary_complete(done, now, event)
        return True

    def _child(self, metric: str, *labels: str) -> Any:
        key = (metric, *labels)
        child = self._counters.get(key)
        if child is None:
            child = self._counters[key] = getattr(self.metrics, metric).labels(*labels)
        return child

    def _shadow_complete(self, shadow: Complete, now: float, last: InferenceEvent) -> None:
        d = shadow.request.deployment
        primary_key = (d, shadow.request.request_id)
        primary = self.primaries.pop(primary_key)  # same Seldon-Puid: an exact pair
        if primary is not None:
            index = (d, primary.digest)
            if self.primaries_by_digest.get(index) == primary_key:
                del self.primaries_by_digest[index]
        else:
            by_digest = self.primaries_by_digest.get((d, shadow.digest))
            primary = self.primaries.get(by_digest) if by_digest else None
        if primary is not None:
            self._judge(primary, shadow, now, last)
            return
        key = (d, shadow.request.endpoint, shadow.request.request_id)
        self.shadows.put(key, shadow, now)
        self.shadows_by_digest.setdefault((d, shadow.digest), set()).add(key)

    def _primary_complete(self, primary: Complete, now: float, last: InferenceEvent) -> None:
        d = primary.request.deployment
        # the same request id means the same input: the digest finds those shadows too
        waiting = list(self.shadows_by_digest.get((d, primary.digest), ()))
        same_id = False
        for key in waiting:
            shadow = self.shadows.pop(key)
            if shadow is None:
                continue
            self._unindex_shadow(key, shadow)
            same_id = same_id or key[2] == primary.request.request_id
            self._judge(primary, shadow, now, last)
        if same_id:
            return  # its shadow came first and was judged: no one else will ask for it by id
        primary_key = (d, primary.request.request_id)
        self.primaries.put(primary_key, primary, now)
        self.primaries_by_digest[(d, primary.digest)] = primary_key

    def _judge(self, primary: Complete, shadow: Complete, now: float,
               last: InferenceEvent) -> None:
        d, name = shadow.request.deployment, shadow.request.endpoint
        result = agreement.compare(primary.response.tensors, shadow.response.tensors,
                                   self.settings.rtol)
        m = self.metrics
        total = self.totals.get((d, name))
        if total is None:
            total = self.totals[(d, name)] = [0, 0]
            m.declare(d, name)
        total[0] += result.rows
        total[1] += result.agreed
        self._child("shadow_rows", d, name, "agreed").inc(result.agreed)
        self._child("shadow_rows", d, name, "disagreed").inc(result.rows - result.agreed)
        self._child("shadow_agreement", d, name).set(total[1] / total[0] if total[0] else 1.0)
        sent = last.time if last.time is not None else now
        self._child("lag", d).observe(max(now - sent, 0.0))
        if result.agreed < result.rows:
            self.disagreements.append(self._example(primary, shadow, result, now))
        if self.report is not None:
            self.report(Verdict(d, name, primary.request.endpoint, result))

    @staticmethod
    def _example(primary: Complete, shadow: Complete, result: agreement.Comparison,
                 now: float) -> dict[str, Any]:
        i = result.first_disagreement
        example: dict[str, Any] = {
            "time": now, "deployment": shadow.request.deployment,
            "shadow": shadow.request.endpoint, "primary": primary.request.endpoint,
            "requestId": shadow.request.request_id,
            "matchedBy": ("requestId" if primary.request.request_id ==
                          shadow.request.request_id else "input"),
            "row": i, "detail": result.detail,
            "input": None, "primaryAnswer": None, "shadowAnswer": None}
        if i is not None:
            for name, tensors in (("input", shadow.request.tensors),
                                  ("primaryAnswer", primary.response.tensors),
                                  ("shadowAnswer", shadow.response.tensors)):
                with contextlib.suppress(IndexError):  # a tensor without that row
                    example[name] = agreement.row(tensors, i)
        return example

    def expire(self, now: float | None = None) -> None:
        now = self.clock() if now is None else now
        self._expired_at = now
        for store in (self.seen, self.halves, self.shadows, self.primaries):
            store.expire(now)

    def gauges(self) -> None:
        """Set the pending gauges (at each scrape and each second, not per event)."""
        self.metrics.pending.labels("halves").set(len(self.halves))
        self.metrics.pending.labels("shadows").set(len(self.shadows))
        self.metrics.pending.labels("primaries").set(len(self.primaries))

    def agreement(self) -> list[dict[str, Any]]:
        return [{"deployment": d, "shadow": s, "rowsCompared": rows, "rowsAgreed": agreed,
                 "agreementRate": agreed / rows if rows else None}
                for (d, s), (rows, agreed) in sorted(self.totals.items())]
