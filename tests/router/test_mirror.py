"""The shadow worker's batching: a batch leaves when it is full or old enough, goes to the shadow
the routing table lists when it is sent, and is dropped (and counted) when that shadow left while
it waited; each mirrored request is logged to the comparator as both executors would."""

from __future__ import annotations

import asyncio
import json
from collections import Counter

import numpy as np
import pytest
from mlserver.grpc import dataplane_pb2 as pb

from serving.comparator.events import read_event
from serving.comparator.sender import EventSender
from serving.router import shadow as shadow_module
from serving.router.shadow import Mirror, ShadowPool, ShadowReplica
from serving.router.shadow_batch import rest_inputs

PATH = "/v2/models/breast-cancer/infer"
REQUEST = json.dumps({"inputs": [{"name": "input-0", "datatype": "FP64", "shape": [1, 2],
                                  "data": [1.0, 2.0]}]}).encode()
ANSWER = json.dumps({"outputs": [{"name": "predict", "datatype": "INT64", "shape": [1, 1],
                                  "data": [1]}]}).encode()


class Counts:
    """A Report that only counts outcomes."""

    def __init__(self) -> None:
        self.outcomes: Counter[tuple[str, str]] = Counter()
        self.reasons: Counter[str] = Counter()

    def count(self, shadow: str, outcome: str, n: int = 1, reason: str = "") -> None:
        self.outcomes[(shadow, outcome)] += n
        if reason:
            self.reasons[reason] += n

    def observe(self, *args: object, **kwargs: object) -> None:
        pass

    def compared(self, *args: object) -> None:
        pass


def shadow_pool(name: str = "shadow") -> ShadowPool:
    return ShadowPool(name, "v3", [ShadowReplica("http://127.0.0.1:9", "127.0.0.1:9")])


def mirror(report: Counts) -> Mirror:
    # no session needed: batched requests go over gRPC, and these are never sent
    return Mirror(report, session=None, max_in_flight=10, timeout=1.0,  # type: ignore[arg-type]
                  rtol=1e-6, batch_rows=100, batch_wait=0.5)


def test_a_batch_whose_shadow_left_while_it_waited_is_dropped_not_failed() -> None:
    report = Counts()
    m = mirror(report)
    m.pool = shadow_pool()
    for _ in range(3):
        m.submit(m.pool, "rest", PATH, REQUEST, "stable", ANSWER)
    m.pool = None  # a new routing table without a shadow (the rollout ended)
    m.flush_all()
    assert report.outcomes == {("shadow", "dropped"): 3}
    assert report.reasons == {"shadow_retired": 3}
    assert m.in_flight == 0


def test_a_batch_whose_shadow_was_replaced_by_another_name_is_dropped() -> None:
    report = Counts()
    m = mirror(report)
    m.pool = shadow_pool("old")
    m.submit(m.pool, "rest", PATH, REQUEST, "stable", ANSWER)
    m.pool = shadow_pool("new")
    m.flush_all()
    assert report.outcomes == {("old", "dropped"): 1}
    assert m.in_flight == 0


def test_a_batch_leaves_once_its_first_request_has_waited_batch_wait(monkeypatch: pytest.MonkeyPatch) -> None:
    clock = [100.0]
    monkeypatch.setattr(shadow_module.time, "monotonic", lambda: clock[0])
    report = Counts()
    m = mirror(report)  # batch_wait 0.5 s
    m.pool = shadow_pool()
    m.submit(m.pool, "rest", PATH, REQUEST, "stable", ANSWER)
    m.pool = None  # a batch that leaves is then counted as dropped, without being sent
    clock[0] += 0.375
    m.flush_due()
    assert report.outcomes == {}  # still waiting for more rows
    clock[0] += 0.125  # 0.5 s after the first request
    m.flush_due()
    assert report.outcomes == {("shadow", "dropped"): 1}


def test_a_batch_leaves_as_soon_as_it_has_batch_rows() -> None:
    report = Counts()
    m = Mirror(report, session=None, max_in_flight=10, timeout=1.0,  # type: ignore[arg-type]
               rtol=1e-6, batch_rows=3, batch_wait=60)
    m.pool = shadow_pool()
    pool = m.pool
    m.pool = None  # as above: a batch that leaves is counted as dropped
    for _ in range(2):
        m.submit(pool, "rest", PATH, REQUEST, "stable", ANSWER)
    assert report.outcomes == {}
    m.submit(pool, "rest", PATH, REQUEST, "stable", ANSWER)  # the third row fills it
    assert report.outcomes == {("shadow", "dropped"): 3}


def test_each_mirrored_request_is_logged_as_both_executors_would() -> None:
    """A batch of 3 (one answered, split back per request) and a failed call: the primary's
    request and answer and the shadow's under one request id; no shadow answer when its call
    failed (as the executor logs none)."""
    async def run() -> list[list[tuple[str, object]]]:
        submitted: list[list[tuple[str, object]]] = []
        sender = EventSender("http://127.0.0.1:9", None, lambda s, n: None,  # type: ignore[arg-type]
                             "breast-cancer", "models", "breast-cancer")
        sender.submit = lambda shadow, events: submitted.append(events)  # type: ignore[method-assign]
        m = mirror(Counts())
        m.events = sender
        answer = pb.ModelInferResponse(model_name="breast-cancer")
        answer.outputs.add(name="predict", datatype="INT64", shape=[3, 1])
        answer.raw_output_contents.append(np.array([1, 0, 1], dtype=np.int64).tobytes())
        rows = [rest_inputs(PATH, REQUEST).rows] * 3  # type: ignore[union-attr]
        m._log_events("shadow", "rest", "grpc", ["stable"] * 3, [ANSWER] * 3, rows,
                      [REQUEST] * 3, answer.SerializeToString())
        m._log_events("shadow", "rest", "rest", ["stable"], [ANSWER], None, [REQUEST], None)
        await sender.close()
        return submitted  # type: ignore[return-value]

    submitted = asyncio.run(run())
    assert [len(events) for events in submitted] == [4, 4, 4, 3]
    for i, events in enumerate(submitted):
        parsed = [(role, read_event(m.headers, m.body)) for role, m in events]  # type: ignore[attr-defined]
        assert {e.request_id for _, e in parsed} == {parsed[0][1].request_id}
        assert [(role, e.endpoint, e.kind) for role, e in parsed][:3] == [
            ("primary", "stable", "request"), ("primary", "stable", "response"),
            ("shadow", "shadow", "request")]
        if i < 3:  # the shadow's part of the batched answer, as V2 JSON
            shadow_answer = parsed[3][1]
            assert shadow_answer.content_type == "application/json"
            assert shadow_answer.tensors["predict"][1].tolist() == [[[1, 0, 1][i]]]
