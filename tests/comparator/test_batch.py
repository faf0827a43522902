"""The comparator's CloudEvents JSON batch endpoint (the local stack's sender), a real process:
the same events as the executors' binary mode, each checked, counted and matched alike; a bad
event costs only itself; a duplicate is one across modes."""

from __future__ import annotations

import asyncio
import base64

import aiohttp
import httpx
import numpy as np
import orjson
from cloudevents.core.bindings import http as ce_http
from cloudevents.core.v1.event import CloudEvent

from serving.comparator.events import BATCH, FORMAT, write_batch
from serving.comparator.process import ComparatorProcess
from serving.comparator.sender import EventSender

from .conftest import Start, value
from .executors import Executor, Traffic, disagreeing_labels, post

MALFORMED = "seldon_comparator_malformed_events_total"
DUPLICATES = "seldon_comparator_duplicate_events_total"


def entries(messages: list[ce_http.HTTPMessage]) -> list[dict[str, object]]:
    """Binary-mode messages as batch entries, through the SDK's JSON format."""
    return [orjson.loads(FORMAT.write(ce_http.from_binary(m, FORMAT, CloudEvent)))
            for m in messages]


def post_batch(url: str, role: str, batch: list[object]) -> httpx.Response:
    return httpx.post(f"{url}/events/{role}", content=orjson.dumps(batch),
                      headers={"Content-Type": BATCH}, timeout=10)


def test_good_and_malformed_mixed_and_a_duplicate_across_modes(
        start_comparator: Start) -> None:
    comparator = start_comparator(deployments=("batched",))
    url = comparator.url
    shadow = Executor("batched", "shadow", "shadow", labels=disagreeing_labels)
    t = Traffic(Executor("batched", "stable", "primary"), shadow).calls(
        20, rows_per_call=2, grpc=True)  # protobuf bodies: data_base64
    primary = [m for role, m in t.events if role == "primary"]
    shadows = [m for role, m in t.events if role == "shadow"]
    # The first primary event goes alone in binary mode; the same event again in the batch is
    # a duplicate (one ce-id, whatever carried it).
    with httpx.Client(timeout=10) as client:
        assert post(client, url, "primary", primary[0]).status_code == 200
    good = entries(primary)
    assert "data_base64" in good[1]
    no_id = dict(good[1])
    del no_id["id"]
    wrong_type = {**good[1], "id": "x1", "type": "io.seldon.serving.feedback"}
    garbage = {**good[1], "id": "x2", "data_base64": base64.b64encode(b"\xff\xfegarbage").decode()}
    other = {**good[1], "id": "x3", "inferenceservicename": "other"}
    batch: list[object] = [good[0], no_id, *good[1:5], wrong_type, "not an event", garbage,
                           *good[5:], other]
    before = {r: value(url, MALFORMED, reason=r) for r in (
        "missing_attribute", "unknown_type", "not_cloudevent", "bad_body", "unknown_deployment")}
    dup_before = value(url, DUPLICATES, deployment_name="batched")
    resp = post_batch(url, "primary", batch)
    assert resp.status_code == 200, resp.text
    summary = resp.json()
    assert (summary["taken"], summary["duplicates"]) == (len(good) - 1, 1)
    assert [(r["index"], r["error"]) for r in summary["refused"]] == [
        (1, "missing_attribute"), (6, "unknown_type"), (7, "not_cloudevent"), (8, "bad_body"),
        (len(batch) - 1, "unknown_deployment")]
    assert all(r["message"] for r in summary["refused"])
    assert {r: value(url, MALFORMED, reason=r) - before[r] for r in before} == dict.fromkeys(
        before, 1)
    assert value(url, DUPLICATES, deployment_name="batched") == dup_before + 1
    # The shadow's half as one batch: every exchange matched, exactly as in binary mode.
    assert post_batch(url, "shadow", entries(shadows)).json() == {
        "taken": len(shadows), "duplicates": 0, "refused": []}
    rows = {r: value(url, "seldon_shadow_rows_total", deployment_name="batched", result=r)
            for r in ("agreed", "disagreed")}
    assert rows == {"agreed": t.expected_agreed, "disagreed": t.expected_rows - t.expected_agreed}
    # A binary-mode event already taken in a batch is a duplicate too.
    with httpx.Client(timeout=10) as client:
        assert post(client, url, "shadow", shadows[3]).status_code == 208


def test_a_batch_with_nothing_taken_gets_the_4xx_of_its_first_refusal(
        comparator: ComparatorProcess) -> None:
    url = comparator.url
    assert post_batch(url, "primary", [{"specversion": "1.0"}]).json()["error"] == (
        "missing_attribute")
    resp = post_batch(url, "primary", [{"specversion": "1.0"}])
    assert resp.status_code == 400 and resp.json()["refused"][0]["index"] == 0
    for body in (b"{not json", b'{"specversion": "1.0"}'):
        resp = httpx.post(url + "/events/primary", content=body,
                          headers={"Content-Type": BATCH}, timeout=10)
        assert resp.status_code == 400 and resp.json()["error"] == "not_cloudevent"
    assert post_batch(url, "canary", []).status_code == 404
    assert post_batch(url, "primary", []).json() == {"taken": 0, "duplicates": 0,
                                                     "refused": []}


def test_the_sender_batches_over_one_session_and_counts_what_is_lost(
        start_comparator: Start) -> None:
    comparator = start_comparator(deployments=("sent",))

    async def run(url: str, n: int) -> dict[str, int]:
        lost: dict[str, int] = {}
        async with aiohttp.ClientSession() as session:
            sender = EventSender(url, session, lambda s, k: lost.update({s: lost.get(s, 0) + k}),
                                 "sent", "models", "breast-cancer", max_queued=n)
            for i in range(n):
                rid = sender.request_id()
                body = orjson.dumps({"inputs": [{"name": "input-0", "datatype": "FP64",
                                                 "shape": [1, 2], "data": [i, 1.0]}]})
                answer = orjson.dumps({"outputs": [{"name": "predict", "datatype": "INT64",
                                                    "shape": [1, 1], "data": [i % 2]}]})
                sender.submit("shadow", sender.events("primary", "stable", rid, "rest", body,
                                                      answer)
                              + sender.events("shadow", "shadow", rid, "rest", body, answer))
            sender.submit("shadow", [])  # beyond max_queued: lost, and counted
            await sender.drain(10)
            await sender.close()
        return lost

    assert asyncio.run(run(comparator.url, 200)) == {"shadow": 1}
    assert value(comparator.url, "seldon_shadow_rows_total", deployment_name="sent",
                 result="agreed") == 200
    # nobody listening: every queued request lost, and counted
    assert asyncio.run(run("http://127.0.0.1:9", 10)) == {"shadow": 11}


def test_write_batch_is_the_sdks_json_format_per_event() -> None:
    message = Executor("fmt", "stable", "primary").call(np.ones((1, 3)), "p1")[0]
    event = ce_http.from_binary(message, FORMAT, CloudEvent)
    [entry] = orjson.loads(write_batch([event]))
    assert entry == orjson.loads(FORMAT.write(event))
    assert {k: entry[k] for k in ("requestid", "inferenceservicename", "endpoint", "type")} == {
        "requestid": "p1", "inferenceservicename": "fmt", "endpoint": "stable",
        "type": "io.seldon.serving.inference.request"}
