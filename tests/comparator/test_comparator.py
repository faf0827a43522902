"""The comparator, a real process, fed by a played stable and shadow executor: events in the
executor's exact format, shuffled, duplicated, some lost; bad events each get their 4xx."""

from __future__ import annotations

import time
from pathlib import Path

import httpx
import numpy as np
import orjson
import pytest

from serving.comparator.client import disagreements
from serving.comparator.events import JSON, PROTOBUF, write_event
from serving.comparator.pairing import BoundedStore
from serving.comparator.process import ComparatorProcess
from serving.errors import ServingError
from serving.server import free_port

from .conftest import Start, value
from .executors import ROWS, Executor, Traffic, disagreeing_labels, post, rest_request, send

ROWS_TOTAL = "seldon_shadow_rows_total"


def rows(url: str, deployment: str) -> tuple[float, float]:
    return (value(url, ROWS_TOTAL, deployment_name=deployment, result="agreed"),
            value(url, ROWS_TOTAL, deployment_name=deployment, result="disagreed"))


def traffic(deployment: str, agreeing: bool = True) -> Traffic:
    shadow = Executor(deployment, "shadow", "shadow")
    if not agreeing:
        shadow.labels = disagreeing_labels
    return Traffic(Executor(deployment, "stable", "primary"), shadow)


def test_shared_puid_shuffled_and_duplicated_rest(comparator: ComparatorProcess) -> None:
    t = traffic("shared").calls(60, rows_per_call=3).shuffled().with_duplicates(every=7)
    codes = send(comparator.url, t.events)
    assert set(codes) <= {200, 208} and codes.count(208) >= len(t.events) // 8
    assert rows(comparator.url, "shared") == (t.expected_rows, 0)
    assert t.expected_rows == 180
    assert value(comparator.url, "seldon_comparator_duplicate_events_total",
                 deployment_name="shared") == codes.count(208)
    assert value(comparator.url, "seldon_shadow_agreement_ratio", deployment_name="shared",
                 predictor_name="shadow") == 1.0


def test_disagreement_matched_by_input_over_grpc(comparator: ComparatorProcess) -> None:
    # No Seldon-Puid from the caller: each executor makes up its own request id.
    t = traffic("noid", agreeing=False).calls(50, rows_per_call=2, shared_puid=False,
                                             grpc=True).shuffled(seed=3)
    assert set(send(comparator.url, t.events)) == {200}
    agreed, disagreed = rows(comparator.url, "noid")
    assert (agreed, disagreed) == (t.expected_agreed, t.expected_rows - t.expected_agreed)
    assert 0 < disagreed < t.expected_rows
    ratio = value(comparator.url, "seldon_shadow_agreement_ratio", deployment_name="noid")
    assert ratio == pytest.approx(t.expected_agreed / t.expected_rows)
    body = httpx.get(comparator.url + "/disagreements", params={"limit": 5}).json()
    recent = [d for d in body["disagreements"] if d["deployment"] == "noid"]
    assert recent and len(body["disagreements"]) <= 5
    example = recent[0]
    assert (example["primary"], example["shadow"], example["matchedBy"]) == (
        "stable", "shadow", "input")
    assert len(example["input"]["input-0"]) == 30  # the row the answers differ on
    assert example["primaryAnswer"]["predict"] != example["shadowAnswer"]["predict"]
    row = np.asarray(example["input"]["input-0"])
    assert example["shadowAnswer"]["predict"] == disagreeing_labels(row[None, :]).tolist()
    assert {"deployment": "noid", "shadow": "shadow", "rowsCompared": t.expected_rows,
            "rowsAgreed": t.expected_agreed,
            "agreementRate": pytest.approx(t.expected_agreed / t.expected_rows)
            } in body["agreement"]
    assert value(comparator.url, "seldon_comparator_lag_seconds_count",
                 deployment_name="noid") == 50


def test_lost_events_are_counted_and_agreement_uses_what_arrived(start_comparator: Start
                                                                 ) -> None:
    comparator = start_comparator(ttl=1.0)
    # 5 shadow calls fail (request logged, no response); 4 primary request events are lost.
    t = traffic("lossy").calls(40, rows_per_call=2, shadow_fails=range(0, 10, 2))
    lost = [i for i, (role, m) in enumerate(t.events)
            if role == "primary" and m.headers["ce-type"].endswith("request")][10:14]
    kept = [e for i, e in enumerate(t.events) if i not in lost]
    assert set(send(comparator.url, kept)) == {200}
    time.sleep(2.5)  # past the TTL: what waits alone expires, counted
    agreed, disagreed = rows(comparator.url, "lossy")
    assert disagreed == 0 and agreed == t.expected_rows - 4 * 2
    unmatched = {what: value(comparator.url, "seldon_comparator_unmatched_total",
                             deployment_name="lossy", what=what)
                 for what in ("request_without_response", "response_without_request",
                              "shadow_without_primary")}
    assert unmatched == {"request_without_response": 5, "response_without_request": 4,
                         "shadow_without_primary": 4}
    assert value(comparator.url, "seldon_comparator_pending", what="halves") == 0


def test_a_full_waiting_room_evicts_and_counts(start_comparator: Start) -> None:
    comparator = start_comparator(max_pending=5)
    # 12 shadow exchanges and no primary at all: they wait, the oldest make room.
    t = traffic("full")
    t.calls(12, rows_per_call=2)
    shadow_only = [e for e in t.events if e[0] == "shadow"]
    assert set(send(comparator.url, shadow_only)) == {200}
    assert value(comparator.url, "seldon_comparator_evicted_total", deployment_name="full",
                 what="shadow") == 7
    assert value(comparator.url, "seldon_comparator_pending", what="shadows") == 5


def event(**overrides: object) -> tuple[dict[str, str], bytes]:
    message = write_event("request", rest_request(ROWS[:1]), JSON, request_id="r1",
                          deployment="served", namespace="models", endpoint="stable",
                          model="breast-cancer", source="http://x:8000/")
    headers = dict(message.headers)
    body = message.body
    for key, change in overrides.items():
        if key == "body":
            body = change  # type: ignore[assignment]
        elif change is None:
            headers.pop(key.replace("_", "-"), None)
        else:
            headers[key.replace("_", "-")] = str(change)
    return headers, body


@pytest.mark.parametrize(("case", "overrides", "status", "reason"), [
    ("plain JSON, no CloudEvent", {"ce_specversion": None, "ce_id": None}, 400,
     "not_cloudevent"),
    ("no ce-id", {"ce_id": None}, 400, "missing_attribute"),
    ("spec 0.3", {"ce_specversion": "0.3"}, 400, "not_cloudevent"),
    ("another event type", {"ce_type": "io.seldon.serving.feedback"}, 400, "unknown_type"),
    ("no request id", {"ce_requestid": None}, 400, "missing_attribute"),
    ("no endpoint", {"ce_endpoint": None}, 400, "missing_attribute"),
    ("another deployment", {"ce_inferenceservicename": "other"}, 404, "unknown_deployment"),
    ("JSON that does not parse", {"body": b"{not json"}, 422, "bad_body"),
    ("JSON without inputs", {"body": b'{"outputs": []}'}, 422, "bad_body"),
    ("protobuf that does not parse", {"content_type": PROTOBUF, "body": b"\xff\xfe\x00garbage"},
     422, "bad_body"),
    ("a content type the executor never sends", {"content_type": "text/csv"}, 422,
     "bad_body"),
    ("an empty body", {"body": b""}, 422, "bad_body"),
])
def test_bad_events_get_their_4xx(start_comparator: Start, case: str,
                                  overrides: dict[str, object], status: int,
                                  reason: str) -> None:
    comparator = start_comparator(deployments=("served",))
    before = value(comparator.url, "seldon_comparator_malformed_events_total", reason=reason)
    headers, body = event(**overrides)
    resp = httpx.post(comparator.url + "/events/primary", headers=headers, content=body)
    assert resp.status_code == status, (case, resp.text)
    assert resp.json()["error"] == reason and resp.json()["message"]
    assert value(comparator.url, "seldon_comparator_malformed_events_total",
                 reason=reason) == before + 1
    # ... and the service goes on taking good events
    headers, body = event()
    ok = httpx.post(comparator.url + "/events/primary", headers=headers, content=body)
    assert ok.status_code in (200, 208)


def test_unknown_role_and_bad_limit(comparator: ComparatorProcess) -> None:
    headers, body = event()
    resp = httpx.post(comparator.url + "/events/canary", headers=headers, content=body)
    assert resp.status_code == 404 and "/events/shadow" in resp.json()["message"]
    assert httpx.get(comparator.url + "/disagreements", params={"limit": "x"}
                     ).status_code == 400
    assert comparator.alive()


def test_a_huge_body_is_refused_not_fatal(comparator: ComparatorProcess) -> None:
    headers, _ = event()
    huge = orjson.dumps({"inputs": [{"name": "x", "datatype": "FP64", "shape": [1],
                                     "data": [0.0] * 3_000_000}]})
    resp = httpx.post(comparator.url + "/events/primary", headers=headers, content=huge)
    assert resp.status_code == 413
    with httpx.Client() as client:
        t = traffic("after-huge").calls(2)
        assert {post(client, comparator.url, role, m).status_code for role, m in t.events} == {
            200}


def test_bounded_store_expires_and_evicts_in_order() -> None:
    dropped: list[tuple[str, str]] = []
    store: BoundedStore[str, int] = BoundedStore(10.0, 3, lambda k, v, why: dropped.append(
        (k, why)))
    for i, key in enumerate("abcd"):
        store.put(key, i, now=float(i))
    assert dropped == [("a", "evicted")] and len(store) == 3
    store.put("b", 9, now=5.0)  # replaced: its clock restarts
    store.expire(now=12.5)
    assert dropped == [("a", "evicted"), ("c", "expired")]
    assert store.get("b") == 9 and store.pop("d") == 3 and "d" not in store


def test_the_plain_client_reads_the_disagreements(comparator: ComparatorProcess,
                                                  tmp_path: Path) -> None:
    t = traffic("client", agreeing=False).calls(20, rows_per_call=2)
    send(comparator.url, t.events)
    body = disagreements(comparator.url, limit=3)
    assert 0 < len(body["disagreements"]) <= 3
    assert {"input", "primaryAnswer", "shadowAnswer", "primary", "shadow", "time"} <= set(
        body["disagreements"][0])
    with pytest.raises(ServingError, match="cannot read the comparator"):
        disagreements(f"http://127.0.0.1:{free_port()}")
