"""Does a malformed request ever fail, or change the answer of, another caller's request?

    python -m serving.bench.isolation --models models [--settings tuned] [--good 2000]

Starts one MLServer (breast-cancer v1, free loopback ports) with the chosen settings (from
serving.bench.mlserver_bench.SETTINGS) and sends `--good` well-formed requests over REST and gRPC
(flat, nested, several rows, INT64, FP32, gRPC raw contents, one output only), `--concurrency` in
flight, interleaved with every malformed request in MALFORMED_REST and MALFORMED_GRPC, cycled.
Each good answer is compared with the model run in this process on the same rows. Prints how many
good requests were answered right, failed or answered wrongly, and per malformed case how it was
answered (status, and whether the error names the field). Exits non-zero when a good request was
not answered right or a malformed one was not refused with 400 / INVALID_ARGUMENT naming it.

tests/test_isolation.py runs the same cases against a real MLServer with tuned settings. To probe
an older runtime, copy this file into a worktree of that commit and run it from there (MLServer
imports `serving` from its working directory first).
"""

from __future__ import annotations

import argparse
import asyncio
import json
import struct
import sys
import tempfile
import time
from collections import Counter
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import grpc
import httpx
import joblib
import numpy as np
from mlserver.codecs import NumpyCodec
from mlserver.grpc import converters
from mlserver.grpc import dataplane_pb2 as pb
from mlserver.grpc.dataplane_pb2_grpc import GRPCInferenceServiceStub

from ..artifacts import ARTIFACT_FILE, INPUT_NAME
from ..dataset import sample_rows
from ..training import MODEL_NAME

N_FEATURES = 30
ROW = [float(v) for v in sample_rows(1, seed=11)[0]]


# -- malformed requests -------------------------------------------------------------------------
# name -> (REST body, a fragment the error must contain: the field it names)


def _tensor(shape: Any, data: Any, datatype: Any = "FP64", **extra: Any) -> dict[str, Any]:
    return {"name": INPUT_NAME, "datatype": datatype, "shape": shape, "data": data, **extra}


def _body(*inputs: dict[str, Any], **extra: Any) -> bytes:
    return json.dumps({"inputs": list(inputs), **extra}).encode()


MALFORMED_REST: dict[str, tuple[bytes, str]] = {
    "shape []": (_body(_tensor([], ROW)), "inputs[0].shape"),
    "shape [30] (one axis)": (_body(_tensor([30], ROW)), "inputs[0].shape"),
    "shape [1, 30, 1]": (_body(_tensor([1, 30, 1], ROW)), "inputs[0].shape"),
    "shape [1, 29] (29 features)": (_body(_tensor([1, 29], ROW[:29])), "inputs[0].shape"),
    "shape [1, 30], 29 numbers": (_body(_tensor([1, 30], ROW[:29])), "inputs[0].data"),
    "shape [1, 30], 31 numbers": (_body(_tensor([1, 30], ROW + [1.0])), "inputs[0].data"),
    "shape [2, 30], 30 numbers": (_body(_tensor([2, 30], ROW)), "inputs[0].data"),
    "shape [0, 30], no data": (_body(_tensor([0, 30], [])), "inputs[0].shape"),
    "shape [-1, 30]": (_body(_tensor([-1, 30], ROW)), "inputs[0].shape"),
    "huge shape [10**9, 30]": (_body(_tensor([10**9, 30], ROW)), "inputs[0]"),
    "huge shape [2**70, 30]": (_body(_tensor([2**70, 30], ROW)), "shape"),
    "datatype BYTES": (_body(_tensor([1, 30], ["a"] * 30, "BYTES")), "inputs[0].datatype"),
    "datatype BOOL": (_body(_tensor([1, 30], [True] * 30, "BOOL")), "inputs[0].datatype"),
    "datatype FP99 (unknown)": (_body(_tensor([1, 30], ROW, "FP99")), "datatype"),
    "INT64 holding 1.5": (_body(_tensor([1, 30], [1.5] * 30, "INT64")), "inputs[0].data"),
    "UINT8 holding -1": (_body(_tensor([1, 30], [-1] * 30, "UINT8")), "inputs[0].data"),
    "NaN strings": (_body(_tensor([1, 30], ["NaN"] * 30)), "inputs[0].data"),
    "number strings": (_body(_tensor([1, 30], [str(v) for v in ROW])), "inputs[0].data"),
    "NaN literal": (_body(_tensor([1, 30], [float("nan")] * 30)), "JSON"),
    "infinity (1e999)": (
        _body(_tensor([1, 30], ROW[:29] + [1.0])).replace(b"1.0]", b"1e999]"), "JSON"
    ),
    "a null among numbers": (_body(_tensor([1, 30], ROW[:29] + [None])), "inputs[0].data"),
    "INT64 holding 10**30": (_body(_tensor([1, 30], [1] * 29 + [10**30], "INT64")),
                             "inputs[0].data"),
    "FP32 holding 1e300": (_body(_tensor([1, 30], ROW[:29] + [1e300], "FP32")),
                           "inputs[0].data"),
    "ragged nested data": (_body(_tensor([2, 30], [ROW, ROW[:29]])), "inputs[0].data"),
    "objects in data": (_body(_tensor([1, 30], [{"x": 1}] * 30)), "inputs[0].data"),
    "data is a string": (_body(_tensor([1, 30], "1,2,3")), "inputs[0].data"),
    "two inputs": (_body(_tensor([1, 30], ROW), _tensor([1, 30], ROW)), "inputs"),
    "second input named otherwise": (
        _body(_tensor([1, 30], ROW), {**_tensor([1, 30], ROW), "name": "other"}),
        "inputs",
    ),
    "no inputs": (_body(), "inputs"),
    "unknown output": (_body(_tensor([1, 30], ROW), outputs=[{"name": "explain"}]), "outputs[0]"),
    "output transform": (
        _body(_tensor([1, 30], ROW), outputs=[{"name": "transform"}]),
        "outputs[0]",
    ),
    "output asked twice": (
        _body(_tensor([1, 30], ROW), outputs=[{"name": "predict"}, {"name": "predict"}]),
        "outputs[1]",
    ),
    "output content_type str": (
        _body(
            _tensor([1, 30], ROW),
            outputs=[{"name": "predict", "parameters": {"content_type": "str"}}],
        ),
        "outputs[0].parameters.content_type",
    ),
    "input content_type str": (
        _body(_tensor([1, 30], ROW, parameters={"content_type": "str"})),
        "inputs[0].parameters.content_type",
    ),
    "request content_type pd": (
        _body(_tensor([1, 30], ROW), parameters={"content_type": "pd"}),
        "parameters.content_type",
    ),
    "shape holds a string": (_body(_tensor([1, "x"], ROW)), "shape"),
    "not JSON": (b"{not json", "JSON"),
}


#: REST bodies that are not valid V2 JSON: MLServer's FastAPI app refuses them with 422 naming
#: the field's JSON path before any runtime code runs
REST_SCHEMA_ERRORS = frozenset({
    "datatype FP99 (unknown)", "huge shape [2**70, 30]", "shape holds a string", "not JSON",
    "NaN literal", "infinity (1e999)",
})


def _raw_request(
    shape: list[int], raw: list[bytes], datatype: str = "FP64", **fields: Any
) -> pb.ModelInferRequest:
    request = pb.ModelInferRequest(
        model_name=MODEL_NAME,
        inputs=[pb.ModelInferRequest.InferInputTensor(name=INPUT_NAME, datatype=datatype,
                                                      shape=shape)],
        **fields,
    )
    request.raw_input_contents.extend(raw)
    return request


def _typed_request(
    shape: list[int], datatype: str = "FP64", outputs: list[str] | None = None, **contents: Any
) -> pb.ModelInferRequest:
    return pb.ModelInferRequest(
        model_name=MODEL_NAME,
        inputs=[pb.ModelInferRequest.InferInputTensor(
            name=INPUT_NAME, datatype=datatype, shape=shape,
            contents=pb.InferTensorContents(**contents))],
        outputs=[pb.ModelInferRequest.InferRequestedOutputTensor(name=o) for o in outputs or []],
    )


def _f64(values: list[float]) -> bytes:
    return struct.pack(f"<{len(values)}d", *values)


MALFORMED_GRPC: dict[str, tuple[pb.ModelInferRequest, str]] = {
    "raw: 29 doubles for [1, 30]": (_raw_request([1, 30], [_f64(ROW[:29])]),
                                    "raw_input_contents[0]"),
    "raw: 31 doubles for [1, 30]": (_raw_request([1, 30], [_f64(ROW + [1.0])]),
                                    "raw_input_contents[0]"),
    "raw: 239 bytes": (_raw_request([1, 30], [_f64(ROW)[:-1]]), "raw_input_contents[0]"),
    "raw: FP64 bytes declared FP32": (_raw_request([1, 30], [_f64(ROW)], "FP32"),
                                      "raw_input_contents[0]"),
    "raw: shape []": (_raw_request([], [_f64(ROW)]), "inputs[0].shape"),
    "raw: shape [-1, 30]": (_raw_request([-1, 30], [_f64(ROW)]), "inputs[0].shape"),
    "raw: huge shape [10**12, 30]": (_raw_request([10**12, 30], [_f64(ROW)]), "inputs[0]"),
    "raw: datatype FP99": (_raw_request([1, 30], [_f64(ROW)], "FP99"), "inputs[0].datatype"),
    "raw: datatype BYTES": (_raw_request([1, 30], [_f64(ROW)], "BYTES"), "raw_input_contents"),
    "raw: two raw entries for one input": (_raw_request([1, 30], [_f64(ROW), _f64(ROW)]),
                                           "raw_input_contents"),
    "raw: NaN values": (_raw_request([1, 30], [_f64([float("nan")] * 30)]), "inputs[0].data"),
    "raw and typed contents together": (
        pb.ModelInferRequest(
            model_name=MODEL_NAME,
            inputs=[pb.ModelInferRequest.InferInputTensor(
                name=INPUT_NAME, datatype="FP64", shape=[1, 30],
                contents=pb.InferTensorContents(fp64_contents=ROW))],
            raw_input_contents=[_f64(ROW)]),
        "raw_input_contents",
    ),
    "typed: 29 numbers for [1, 30]": (_typed_request([1, 30], fp64_contents=ROW[:29]),
                                      "inputs[0].data"),
    "typed: shape []": (_typed_request([], fp64_contents=ROW), "inputs[0].shape"),
    "typed: shape [1, 29]": (_typed_request([1, 29], fp64_contents=ROW[:29]),
                             "inputs[0].shape"),
    "typed: BYTES contents": (_typed_request([1, 30], "BYTES", bytes_contents=[b"a"] * 30),
                              "inputs[0].datatype"),
    "typed: infinity": (_typed_request([1, 30], fp64_contents=[float("inf")] * 30),
                        "inputs[0].data"),
    "typed: unknown output": (_typed_request([1, 30], outputs=["explain"], fp64_contents=ROW),
                              "outputs[0]"),
    "typed: no inputs": (pb.ModelInferRequest(model_name=MODEL_NAME), "inputs"),
}


# -- well-formed requests -----------------------------------------------------------------------


@dataclass(frozen=True)
class Good:
    """A well-formed request and the rows the model must have seen (as float64)."""

    name: str
    protocol: str
    payload: Any  # REST body bytes or a ModelInferRequest
    rows: np.ndarray
    outputs: tuple[str, ...] = ("predict", "predict_proba")


def good_requests(seed: int = 5) -> list[Good]:
    one = sample_rows(1, seed=seed)
    three = sample_rows(3, seed=seed + 1)
    ints = np.rint(sample_rows(2, seed=seed + 2))
    f32 = sample_rows(2, seed=seed + 3).astype(np.float32)
    rest = [
        Good("REST FP64 1 row", "rest", _body(_tensor([1, 30], one.ravel().tolist())), one),
        Good("REST FP64 3 rows nested", "rest", _body(_tensor([3, 30], three.tolist())), three),
        Good("REST INT64 2 rows", "rest",
             _body(_tensor([2, 30], ints.astype(np.int64).ravel().tolist(), "INT64")), ints),
        Good("REST FP32 2 rows", "rest",
             _body(_tensor([2, 30], [float(v) for v in f32.ravel()], "FP32")),
             f32.astype(np.float64)),
        Good("REST predict only", "rest",
             _body(_tensor([1, 30], one.ravel().tolist()), outputs=[{"name": "predict"}]),
             one, ("predict",)),
    ]
    grpc_ = [
        Good("gRPC FP64 contents 3 rows", "grpc",
             _typed_request([3, 30], fp64_contents=three.ravel().tolist()), three),
        Good("gRPC raw FP64 1 row", "grpc", _raw_request([1, 30], [one.astype("<f8").tobytes()]),
             one),
        Good("gRPC raw FP32 2 rows", "grpc",
             _raw_request([2, 30], [f32.astype("<f4").tobytes()], "FP32"), f32.astype(np.float64)),
        Good("gRPC raw INT64 2 rows", "grpc",
             _raw_request([2, 30], [ints.astype("<i8").tobytes()], "INT64"), ints),
        Good("gRPC predict_proba only", "grpc",
             _typed_request([1, 30], outputs=["predict_proba"], fp64_contents=one.ravel().tolist()),
             one, ("predict_proba",)),
    ]
    return rest + grpc_


# -- the run ------------------------------------------------------------------------------------


@dataclass
class Report:
    good_right: int = 0
    good_failed: Counter[str] = field(default_factory=Counter)
    good_wrong: Counter[str] = field(default_factory=Counter)
    failure_samples: list[str] = field(default_factory=list)
    bad: dict[str, Counter[str]] = field(default_factory=dict)
    bad_samples: dict[str, str] = field(default_factory=dict)
    seconds: float = 0.0

    @property
    def good_total(self) -> int:
        return self.good_right + sum(self.good_failed.values()) + sum(self.good_wrong.values())

    def bad_refused_naming_the_field(self, case: str) -> int:
        return self.bad.get(case, Counter())["refused, names the field"]

    @property
    def bad_total(self) -> int:
        return sum(sum(c.values()) for c in self.bad.values())

    @property
    def clean(self) -> bool:
        return (not self.good_failed and not self.good_wrong and all(
            set(c) == {"refused, names the field"} for c in self.bad.values()))


def _answer(outputs: dict[str, np.ndarray], good: Good, model: Any) -> str | None:
    """None when `outputs` is what the model gives on good.rows, else what is wrong."""
    if set(outputs) != set(good.outputs):
        return f"outputs {sorted(outputs)}, asked {sorted(good.outputs)}"
    if "predict" in outputs and not np.array_equal(
        outputs["predict"].reshape(-1), model.predict(good.rows)
    ):
        return "wrong labels"
    if "predict_proba" in outputs and not np.allclose(
        outputs["predict_proba"], model.predict_proba(good.rows), rtol=1e-9, atol=1e-12
    ):
        return "wrong probabilities"
    return None


async def _send_rest(http: httpx.AsyncClient, url: str, body: bytes) -> tuple[str, str, Any]:
    try:
        resp = await http.post(url, content=body, headers={"content-type": "application/json"})
    except httpx.HTTPError as e:  # the server dropped the connection
        return f"no answer ({type(e).__name__})", repr(e), None
    if resp.status_code == 200:
        return "200", "", resp.json()
    return f"HTTP {resp.status_code}", resp.text, None


async def _send_grpc(stub: Any, request: pb.ModelInferRequest) -> tuple[str, str, Any]:
    try:
        response = await stub.ModelInfer(request, timeout=30)
    except grpc.aio.AioRpcError as e:
        return e.code().name, e.details() or "", None
    return "OK", "", response


def _decode(protocol: str, answer: Any) -> dict[str, np.ndarray]:
    from mlserver.types import InferenceResponse

    if protocol == "rest":
        response = InferenceResponse.model_validate(answer)
    else:
        response = converters.ModelInferResponseConverter.to_types(answer)
    return {o.name: NumpyCodec.decode_output(o) for o in response.outputs}


async def probe(
    rest_url: str,
    grpc_target: str,
    model: Any,
    n_good: int = 2000,
    concurrency: int = 32,
    bad_every: int = 3,
) -> Report:
    """Send n_good good requests and one malformed request after every `bad_every` good ones."""
    goods = good_requests()
    bad_cases: list[tuple[str, str, Any, str, str]] = [
        (f"REST {name}", "rest", body, fragment,
         "HTTP 422" if name in REST_SCHEMA_ERRORS else "HTTP 400")
        for name, (body, fragment) in MALFORMED_REST.items()
    ] + [
        (f"gRPC {name}", "grpc", request, fragment, "INVALID_ARGUMENT")
        for name, (request, fragment) in MALFORMED_GRPC.items()
    ]
    jobs: list[tuple[str, Any]] = []
    for i in range(n_good):
        jobs.append(("good", goods[i % len(goods)]))
        if i % bad_every == bad_every - 1:
            jobs.append(("bad", bad_cases[(i // bad_every) % len(bad_cases)]))
    report = Report()
    url = f"{rest_url}/v2/models/{MODEL_NAME}/infer"
    queue: asyncio.Queue[tuple[str, Any]] = asyncio.Queue()
    for job in jobs:
        queue.put_nowait(job)
    limits = httpx.Limits(max_connections=concurrency, max_keepalive_connections=concurrency)
    async with httpx.AsyncClient(timeout=30, limits=limits) as http, grpc.aio.insecure_channel(
        grpc_target
    ) as channel:
        stub = GRPCInferenceServiceStub(channel)

        async def send(protocol: str, payload: Any) -> tuple[str, str, Any]:
            if protocol == "rest":
                return await _send_rest(http, url, payload)
            return await _send_grpc(stub, payload)

        async def worker() -> None:
            while not queue.empty():
                kind, job = queue.get_nowait()
                if kind == "good":
                    good: Good = job
                    status, detail, answer = await send(good.protocol, good.payload)
                    if answer is None:
                        report.good_failed[status] += 1
                        if len(report.failure_samples) < 5:
                            report.failure_samples.append(f"{good.name}: {status} {detail[:200]}")
                        continue
                    wrong = _answer(_decode(good.protocol, answer), good, model)
                    if wrong:
                        report.good_wrong[f"{good.name}: {wrong}"] += 1
                    else:
                        report.good_right += 1
                else:
                    name, protocol, payload, fragment, expected = job
                    status, detail, answer = await send(protocol, payload)
                    refused = status == expected
                    if answer is not None:
                        verdict = f"answered {status}"
                    elif refused and fragment in detail:
                        verdict = "refused, names the field"
                    elif refused:
                        verdict = f"{status}, does not name {fragment!r}"
                    else:
                        verdict = status
                    report.bad.setdefault(name, Counter())[verdict] += 1
                    report.bad_samples.setdefault(name, f"{status} {detail[:300]}")

        started = time.perf_counter()
        await asyncio.gather(*(worker() for _ in range(concurrency)))
        report.seconds = time.perf_counter() - started
    return report


def print_report(report: Report, title: str, out: Callable[[str], None] = print) -> None:
    out(f"{title}: {report.good_total} good and {report.bad_total} malformed requests "
        f"in {report.seconds:.1f} s")
    failed = sum(report.good_failed.values())
    wrong = sum(report.good_wrong.values())
    out(f"  good: {report.good_right} answered right, {failed} failed "
        f"{dict(report.good_failed) or ''}, {wrong} answered wrongly {dict(report.good_wrong) or ''}")
    for sample in report.failure_samples:
        out(f"    e.g. {sample}")
    verdicts: Counter[str] = Counter()
    for counts in report.bad.values():
        for verdict, n in counts.items():
            key = verdict if verdict.startswith(("refused", "answered")) else (
                "refused, does not name the field" if "does not name" in verdict else
                "failed with " + verdict)
            verdicts[key] += n
    out(f"  malformed: {dict(verdicts)}")
    for case, counts in sorted(report.bad.items()):
        if set(counts) != {"refused, names the field"}:
            out(f"    {case}: {dict(counts)}; e.g. {report.bad_samples[case][:160]!r}")


def main(argv: list[str] | None = None) -> int:
    from ..server import MLServerProcess, free_port
    from .mlserver_bench import SETTINGS

    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--models", type=Path, default=Path("models"))
    parser.add_argument("--settings", default="defaults,tuned",
                        help=f"comma-separated, from {', '.join(SETTINGS)}")
    parser.add_argument("--good", type=int, default=2000)
    parser.add_argument("--concurrency", type=int, default=32)
    parser.add_argument("--bad-every", type=int, default=3,
                        help="one malformed request after this many good ones")
    args = parser.parse_args(argv)
    version_dir = args.models / MODEL_NAME / "v1"
    model = joblib.load(version_dir / ARTIFACT_FILE)
    clean = True
    for name in args.settings.split(","):
        settings = SETTINGS[name](http_port=free_port(), grpc_port=free_port(),
                                  metrics_port=free_port())
        with tempfile.TemporaryDirectory() as tmp:
            server = MLServerProcess(version_dir, settings, log_path=Path(tmp) / "mlserver.log")
            with server:
                server.wait_ready([MODEL_NAME])
                report = asyncio.run(probe(server.rest_url, server.grpc_target, model, args.good,
                                           args.concurrency, args.bad_every))
        print_report(report, f"{name} (batch {settings.max_batch_size} / "
                     f"{settings.max_batch_time * 1000:g} ms, workers {settings.parallel_workers})")
        clean = clean and report.clean
    return 0 if clean else 1


if __name__ == "__main__":
    sys.exit(main())
