"""The Seldon executor's payload-logger CloudEvents, read and written with the CloudEvents SDK.

What Seldon Core v1.18.2 sends (executor/logger/worker.go, sendCloudEvent; executor/predictor/
predictor_process.go, logPayload): one HTTP POST per event, binary content mode, spec 1.0
(`cloudevents.HTTPBinaryV1`, `WithTimeNow`):

    Ce-Specversion: 1.0
    Ce-Id: <fresh uuid per event>              Ce-Time: <when it was sent>
    Ce-Type: io.seldon.serving.inference.request | io.seldon.serving.inference.response
    Ce-Source: <the executor's URL>
    Ce-Requestid: <Seldon-Puid>                Ce-Modelid: <graph node name>
    Ce-Inferenceservicename: <SeldonDeployment> Ce-Namespace: <namespace>
    Ce-Endpoint: <predictor name>              Ce-Protocol: <spec.protocol: v2>
    Content-Type: application/json (REST) | application/protobuf (gRPC, a marshalled
                  ModelInferRequest / ModelInferResponse)
    body: the payload as the executor sent or received it (decompressed)

A call that fails logs its request and no response. Headers are case-insensitive (Go writes
them canonicalised, `Ce-Requestid`; this SDK writes `ce-requestid`).
"""

from __future__ import annotations

import hashlib
import uuid
from collections.abc import Mapping
from dataclasses import dataclass
from datetime import UTC, datetime
from typing import Any

import numpy as np
import orjson
from cloudevents.core.base import BaseCloudEvent
from cloudevents.core.bindings import http as ce_http
from cloudevents.core.exceptions import BaseCloudEventException
from cloudevents.core.formats.json import JSONFormat
from cloudevents.core.v1.event import CloudEvent

from .. import agreement

REQUEST_TYPE = "io.seldon.serving.inference.request"
RESPONSE_TYPE = "io.seldon.serving.inference.response"
KINDS = {REQUEST_TYPE: "request", RESPONSE_TYPE: "response"}
JSON = "application/json"
PROTOBUF = "application/protobuf"
#: the CloudEvents JSON batch format (structured content mode), the local stack's sender
BATCH = "application/cloudevents-batch+json"
#: the content types a body is decoded from (gRPC's names for protobuf included)
PROTOBUF_TYPES = (PROTOBUF, "application/x-protobuf", "application/grpc")
#: why an event was refused (a closed set: it is a metric label)
REFUSALS = ("not_cloudevent", "unknown_type", "missing_attribute", "unknown_deployment",
            "unknown_role", "bad_body")
ROLES = ("primary", "shadow")


class EventError(ValueError):
    """An event the comparator cannot use: `reason` is one of REFUSALS."""

    def __init__(self, reason: str, message: str) -> None:
        super().__init__(message)
        self.reason = reason
        self.message = message


class PayloadFormat(JSONFormat):
    """The SDK's JSON format, but the data stays the bytes that came: the body is decoded by
    content type below (V2 JSON or protobuf), never guessed as text."""

    def read_data(self, body: bytes, datacontenttype: str | None) -> bytes:
        return bytes(body)


FORMAT = PayloadFormat()
Tensors = dict[str, tuple[str, np.ndarray]]


@dataclass(frozen=True)
class InferenceEvent:
    """One logged request or response, decoded."""

    id: str
    kind: str  # request | response
    request_id: str
    deployment: str
    namespace: str
    endpoint: str
    model: str
    source: str
    time: float | None
    """When the executor sent it (ce-time, seconds since the epoch), if it said."""
    content_type: str
    body: bytes
    tensors: Tensors
    """The request's inputs or the response's outputs."""

    def digest(self) -> bytes:
        """What identifies a request's input whatever protocol carried it: names, datatypes,
        shapes and values of its tensors (the models are deterministic: any answer to the same
        input is a valid reference)."""
        h = hashlib.blake2b(digest_size=16)
        for name, (datatype, arr) in sorted(self.tensors.items()):
            h.update(f"{name}\0{datatype}\0{arr.shape}\0".encode())
            h.update(arr.tobytes() if arr.dtype != object else repr(arr.tolist()).encode())
        return h.digest()


def _extension(event: BaseCloudEvent, name: str) -> str:
    value = event.get_extension(name)
    if not value:
        raise EventError("missing_attribute", f"the event has no ce-{name} header (the "
                         "executor sets it on every event; is this a Seldon payload log?)")
    return str(value)


def _decode(kind: str, content_type: str, body: bytes) -> Tensors:
    media = content_type.split(";")[0].strip().lower()
    try:
        if media in PROTOBUF_TYPES:
            return (agreement.inputs_from_grpc(body) if kind == "request"
                    else agreement.outputs_from_grpc(body))
        if media == JSON or media.endswith("+json"):
            return (agreement.inputs_from_rest(body) if kind == "request"
                    else agreement.outputs_from_rest(body))
    except Exception as e:
        raise EventError("bad_body", f"the {kind}'s body is not a V2 inference {kind} "
                         f"({media}): {type(e).__name__}: {e}") from None
    raise EventError("bad_body", f"content type {content_type!r} is not one the executor sends "
                     f"for V2 payloads ({JSON}, {PROTOBUF})")


def read_event(headers: Mapping[str, str], body: bytes) -> InferenceEvent:
    """Parse one HTTP request in binary mode. EventError says what is wrong with it."""
    names = {k.lower() for k in headers}
    if "ce-specversion" not in names:
        raise EventError("not_cloudevent", "no ce-specversion header: the comparator takes "
                         "CloudEvents in binary HTTP mode, as Seldon's executor sends them")
    # The SDK would make up a missing id: a duplicate could then never be recognised.
    for required in ("ce-id", "ce-type", "ce-source"):
        if required not in names:
            raise EventError("missing_attribute", f"no {required} header (CloudEvents 1.0 "
                             "requires it; the executor sends it on every event)")
    try:
        event = ce_http.from_binary(ce_http.HTTPMessage(dict(headers), body), FORMAT, CloudEvent)
    except (BaseCloudEventException, ValueError, TypeError) as e:
        raise EventError("not_cloudevent", f"not a CloudEvent 1.0: {e}") from None
    return _inference_event(event, body)


def read_batch(body: bytes) -> list[InferenceEvent | EventError]:
    """Parse a CloudEvents JSON batch (structured mode, `application/cloudevents-batch+json`):
    a JSON array of events in the JSON format, each read with the SDK's JSON format and checked
    as a binary-mode event is. One entry per event, in order: the event or why it is refused,
    so that one bad event costs only itself. EventError if the body is no batch at all."""
    try:
        items = orjson.loads(body)
    except orjson.JSONDecodeError as e:
        raise EventError("not_cloudevent", f"the batch is not JSON: {e}") from None
    if not isinstance(items, list):
        raise EventError("not_cloudevent", f"a {BATCH} body is a JSON array of events, not "
                         f"a {type(items).__name__}")
    out: list[InferenceEvent | EventError] = []
    for item in items:
        try:
            out.append(_structured(item))
        except EventError as e:
            out.append(e)
    return out


def _structured(item: Any) -> InferenceEvent:
    if not isinstance(item, dict) or "specversion" not in item:
        raise EventError("not_cloudevent", "a batch entry without specversion is not a "
                         "CloudEvent (each entry is one event in the JSON format)")
    for required in ("id", "type", "source"):  # the SDK would make up a missing id
        if required not in item:
            raise EventError("missing_attribute", f"a batch entry has no {required!r} "
                             "(CloudEvents 1.0 requires it)")
    try:
        event = FORMAT.read(CloudEvent, orjson.dumps(item))
    except (BaseCloudEventException, ValueError, TypeError) as e:
        raise EventError("not_cloudevent", f"not a CloudEvent 1.0: {e}") from None
    data = event.get_data()
    # data_base64 gives bytes; an inline JSON `data` (other writers) is the payload re-encoded
    body = (bytes(data) if isinstance(data, (bytes, bytearray)) else b"" if data is None
            else data.encode() if isinstance(data, str) else orjson.dumps(data))
    return _inference_event(event, body)


def _inference_event(event: BaseCloudEvent, body: bytes) -> InferenceEvent:
    """The checks every event goes through, whichever content mode carried it."""
    kind = KINDS.get(event.get_type())
    if kind is None:
        raise EventError("unknown_type", f"ce-type {event.get_type()!r} is neither "
                         f"{REQUEST_TYPE} nor {RESPONSE_TYPE}")
    sent = event.get_time()
    content_type = event.get_datacontenttype() or ""
    if not body:
        raise EventError("bad_body", f"the {kind} event has an empty body")
    return InferenceEvent(
        id=event.get_id(), kind=kind, request_id=_extension(event, "requestid"),
        deployment=_extension(event, "inferenceservicename"),
        namespace=str(event.get_extension("namespace") or ""),
        endpoint=_extension(event, "endpoint"), model=str(event.get_extension("modelid") or ""),
        source=event.get_source(), time=sent.timestamp() if sent else None,
        content_type=content_type, body=body, tensors=_decode(kind, content_type, body))


def make_event(kind: str, body: bytes, content_type: str, *, request_id: str,
               deployment: str, namespace: str, endpoint: str, model: str, source: str,
               protocol: str = "v2", event_id: str | None = None,
               sent: datetime | None = None) -> CloudEvent:
    """One logged payload as the executor's event (attributes and extensions)."""
    attributes: dict[str, Any] = {
        "specversion": "1.0", "id": event_id or str(uuid.uuid4()),
        "type": REQUEST_TYPE if kind == "request" else RESPONSE_TYPE, "source": source,
        "time": sent or datetime.now(UTC), "datacontenttype": content_type,
        "requestid": request_id, "modelid": model, "inferenceservicename": deployment,
        "namespace": namespace, "endpoint": endpoint, "protocol": protocol}
    return CloudEvent(attributes, body)


def write_event(kind: str, body: bytes, content_type: str, *, request_id: str,
                deployment: str, namespace: str, endpoint: str, model: str, source: str,
                protocol: str = "v2", event_id: str | None = None,
                sent: datetime | None = None) -> ce_http.HTTPMessage:
    """The headers and body the executor would POST for one logged payload."""
    return ce_http.to_binary(make_event(kind, body, content_type, request_id=request_id,
                                        deployment=deployment, namespace=namespace,
                                        endpoint=endpoint, model=model, source=source,
                                        protocol=protocol, event_id=event_id, sent=sent),
                             FORMAT)


def write_batch(events: list[BaseCloudEvent]) -> bytes:
    """A CloudEvents JSON batch: the SDK's JSON format per event (the SDK has no batch writer;
    binary payloads such as protobuf go in data_base64)."""
    return b"[" + b",".join(FORMAT.write(e) for e in events) + b"]"
