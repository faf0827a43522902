"""A stable and a shadow Seldon executor, played: the payload-logger events they send for each call,
made with the CloudEvents SDK in exactly the format of Seldon Core v1.18.2 (see
serving/comparator/events.py; executor/logger/worker.go sendCloudEvent: binary mode, spec 1.0,
ce-id a fresh uuid, ce-source the executor's URL, ce-time, extensions requestid (Seldon-Puid),
modelid (graph node), inferenceservicename, namespace, endpoint (predictor), protocol; body the
payload as sent, application/json for REST and application/protobuf for gRPC;
executor/predictor/predictor_process.go logPayload: a request event before the call, a response
event after it, none when the call failed).

Answers are made up but deterministic: the stable model's label for a row is `row[0] > LIMIT`; a
disagreeing shadow flips it on the rows whose second feature is above its median, so every test
knows exactly how many rows agree.
"""

from __future__ import annotations

import random
import uuid
from collections.abc import Callable, Iterable
from dataclasses import dataclass, field

import httpx
import numpy as np
import orjson
from cloudevents.core.bindings.http import HTTPMessage
from mlserver.grpc import dataplane_pb2 as pb
from sklearn.datasets import load_breast_cancer

from serving.comparator.events import JSON, PROTOBUF, write_event

ROWS = load_breast_cancer().data
LIMIT = float(np.median(ROWS[:, 0]))
FLIP = float(np.median(ROWS[:, 1]))
Labeller = Callable[[np.ndarray], np.ndarray]


def stable_labels(rows: np.ndarray) -> np.ndarray:
    return (rows[:, 0] > LIMIT).astype(np.int64)


def disagreeing_labels(rows: np.ndarray) -> np.ndarray:
    labels = stable_labels(rows)
    return np.where(rows[:, 1] > FLIP, 1 - labels, labels)


def rest_request(rows: np.ndarray) -> bytes:
    return orjson.dumps({"id": str(uuid.uuid4()), "inputs": [
        {"name": "input-0", "datatype": "FP64", "shape": list(rows.shape),
         "data": rows.reshape(-1).tolist()}]})


def grpc_request(rows: np.ndarray) -> bytes:
    # As tritonclient and MLServer's own clients send it: raw tensor contents.
    message = pb.ModelInferRequest(model_name="breast-cancer", id=str(uuid.uuid4()))
    message.inputs.add(name="input-0", datatype="FP64", shape=list(rows.shape))
    message.raw_input_contents.append(np.ascontiguousarray(rows, dtype=np.float64).tobytes())
    return bytes(message.SerializeToString())


def rest_response(labels: np.ndarray) -> bytes:
    return orjson.dumps({"model_name": "breast-cancer", "outputs": [
        {"name": "predict", "datatype": "INT64", "shape": [len(labels), 1],
         "data": labels.tolist()}]})


def grpc_response(labels: np.ndarray) -> bytes:
    message = pb.ModelInferResponse(model_name="breast-cancer")
    message.outputs.add(name="predict", datatype="INT64", shape=[len(labels), 1])
    message.raw_output_contents.append(labels.astype(np.int64).tobytes())
    return bytes(message.SerializeToString())


@dataclass
class Executor:
    """One predictor's executor: what it logs for one call."""

    deployment: str
    predictor: str
    role: str  # primary | shadow: which URL its graph's logger points at
    labels: Labeller = stable_labels
    namespace: str = "models"

    @property
    def source(self) -> str:  # p.ServerUrl: the executor's own address
        return f"http://{self.deployment}-{self.predictor}.{self.namespace}:8000/"

    def call(self, rows: np.ndarray, puid: str, grpc: bool = False,
             fails: bool = False) -> list[HTTPMessage]:
        """The events of one call: its request, then its response unless the call failed."""
        kind = PROTOBUF if grpc else JSON
        common = {"request_id": puid, "deployment": self.deployment,
                  "namespace": self.namespace, "endpoint": self.predictor,
                  "model": "breast-cancer", "source": self.source}
        events = [write_event("request", grpc_request(rows) if grpc else rest_request(rows),
                              kind, **common)]
        if not fails:
            labels = self.labels(rows)
            events.append(write_event(
                "response", grpc_response(labels) if grpc else rest_response(labels), kind,
                **common))
        return events


@dataclass
class Traffic:
    """Calls through a stable and a shadow executor (Istio mirrors every one): the events they
    send, in the order they arrive, and what a comparator should make of them."""

    primary: Executor
    shadow: Executor
    events: list[tuple[str, HTTPMessage]] = field(default_factory=list)
    expected_rows: int = 0
    expected_agreed: int = 0

    def calls(self, n: int, *, rows_per_call: int = 1, shared_puid: bool = True,
              grpc: bool = False, seed: int = 0, shadow_fails: Iterable[int] = ()
              ) -> Traffic:
        rng = np.random.default_rng(seed)
        failing = set(shadow_fails)
        for i in range(n):
            rows = ROWS[rng.choice(len(ROWS), rows_per_call, replace=False)]
            # Seldon-Puid: the caller's when it sent one (Istio's mirror copies it), else
            # each executor makes up its own.
            puid = str(uuid.uuid4())
            shadow_puid = puid if shared_puid else str(uuid.uuid4())
            self.events += [("primary", e) for e in self.primary.call(rows, puid, grpc)]
            self.events += [("shadow", e) for e in self.shadow.call(rows, shadow_puid, grpc,
                                                                    fails=i in failing)]
            if i not in failing:
                self.expected_rows += rows_per_call
                self.expected_agreed += int(np.sum(self.primary.labels(rows)
                                                   == self.shadow.labels(rows)))
        return self

    def shuffled(self, seed: int = 1) -> Traffic:
        random.Random(seed).shuffle(self.events)
        return self

    def with_duplicates(self, every: int = 7) -> Traffic:
        """Every `every`-th event sent twice (a retry upstream), the copy later."""
        copies = self.events[::every]
        self.events = self.events + copies
        return self


def post(client: httpx.Client, base_url: str, role: str, message: HTTPMessage) -> httpx.Response:
    return client.post(f"{base_url}/events/{role}", headers=message.headers,
                       content=message.body)


def send(base_url: str, events: list[tuple[str, HTTPMessage]]) -> list[int]:
    with httpx.Client(timeout=10) as client:
        return [post(client, base_url, role, m).status_code for role, m in events]
