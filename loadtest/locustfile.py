"""V2 inference load on a Seldon deployment, or on the local stack that mimics one: REST and gRPC.

    locust -f loadtest/locustfile.py --headless -u 10 -t 20s --rps 100 --state-dir .serving
    locust -f loadtest/locustfile.py,loadtest/shape_spike.py --headless -u 40 -t 60s --rps 200 \\
        --host http://<ingress>/seldon/models/breast-cancer --grpc-target <ingress>:80
    serving loadtest ...      # the same, plus a report folder with plots and replica counts

Users: `RestUser` posts to <host>/v2/models/<model>/infer; `GrpcUser` calls ModelInfer with the
`seldon`/`namespace` metadata Seldon's ingress routes on. Name one on the command line to run only
it (locust's own user selection). Each request carries rows of the hold-out set, and is recorded
under the predictor that answered it (`infer [stable]`, `infer [canary]` ...), so locust's own
tables, CSVs and HTML report are per predictor. At the end (`quitting`) the run is judged against
the values file's `slo` section: the exit code is 1 and the output names each SLO missed and by
how much. The shapes (loadtest/shape_*.py) read -u (peak users) and -t (duration).

Options of this file (locust's --help does not list them; see `_options`): --values, --state-dir,
--grpc-target, --seldon, --namespace, --model, --rps, --rows-per-request, --weights,
--min-requests, --summary-json, --requests-csv.
"""

from __future__ import annotations

import itertools
import logging
import random
import sys
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import grpc
import grpc.experimental.gevent as grpc_gevent
from locust import FastHttpUser, User, constant_throughput, events, task
from locust.contrib.csv_request_logger import CsvRequestLogger
from locust.env import Environment
from locust.exception import CatchResponseError
from locust.runners import WorkerRunner
from locust.stats import StatsEntry
from mlserver.grpc import converters
from mlserver.grpc.dataplane_pb2_grpc import GRPCInferenceServiceStub

from serving import dataset
from serving.client import PREDICTOR_HEADER, build_request
from serving.errors import ServingError
from serving.load.stats import OVERALL, Observed, entry_name, predictor_of
from serving.load.summary import build_summary
from serving.load.target import (
    LoadTarget,
    parse_weights,
    resolve_target,
    router_weights,
)
from serving.spec import Spec, load_spec

grpc_gevent.init_gevent()  # before any channel: grpc must yield to gevent (locust's grpc example)
log = logging.getLogger("loadtest")
DISTINCT_BODIES = 500


@events.init_command_line_parser.add_listener
def _options(parser: Any) -> None:
    parser.add_argument(
        "--values",
        default="charts/seldon-model/values.yaml",
        help="Values file: the slo section, and defaults for names and weights",
    )
    parser.add_argument(
        "--state-dir",
        default="",
        help="State dir of a running local stack ('serving up'): its URLs",
    )
    parser.add_argument("--grpc-target", default="", help="gRPC host:port (GrpcUser)")
    parser.add_argument("--seldon", default="", help="gRPC 'seldon' metadata (deployment name)")
    parser.add_argument("--namespace", default="", help="gRPC 'namespace' metadata")
    parser.add_argument("--model", default="", help="Model name in /v2/models/<model>/infer")
    parser.add_argument(
        "--rps",
        type=float,
        default=0.0,
        help="Requests/s at the peak user count (-u); 0 = as fast as answered",
    )
    parser.add_argument("--rows-per-request", type=int, default=1)
    parser.add_argument(
        "--weights",
        default="",
        help="Configured split, e.g. stable=90,canary=10 (default: the router's "
        "/admin/status for a local stack, else the values file)",
    )
    parser.add_argument(
        "--min-requests",
        type=int,
        default=20,
        help="Fewest requests a predictor needs to be judged by the SLO gate",
    )
    parser.add_argument(
        "--summary-json",
        default="",
        help="Write the per-predictor table, split and SLO verdict here",
    )
    parser.add_argument(
        "--requests-csv",
        default="",
        help="Write one CSV row per request here (for plots over time)",
    )


class Run:
    """What every user shares, resolved once from the options on `init`."""

    spec: Spec
    target: LoadTarget
    rest_bodies: list[bytes]
    grpc_requests: list[Any]
    rows: int
    weights: dict[str, float] | None = None
    weights_source: str = "none"
    generation: int | None = None


def _fail(message: str) -> None:
    sys.stderr.write(f"error: {message}\n")
    sys.exit(2)


@events.init.add_listener
def _init(environment: Environment, **_: Any) -> None:
    o = environment.parsed_options
    if o is None:
        return
    try:
        Run.spec = load_spec(o.values)
        Run.target = resolve_target(
            Run.spec,
            state_dir=Path(o.state_dir) if o.state_dir else None,
            rest_base=o.host or None,
            grpc_target=o.grpc_target or None,
            deployment=o.seldon or None,
            namespace=o.namespace or None,
            model=o.model or None,
        )
        if o.weights:
            Run.weights, Run.weights_source = parse_weights(o.weights), "--weights"
    except ServingError as e:
        _fail(e.message)
    selected = {u.__name__ for u in environment.user_classes}
    if "RestUser" in selected and not Run.target.rest_base:
        _fail("RestUser needs --host (REST base, http://host/seldon/<namespace>/<deployment>)")
    if "GrpcUser" in selected and not Run.target.grpc_target:
        _fail("GrpcUser needs --grpc-target host:port; or run RestUser only")
    if Run.target.rest_base and not o.host:
        environment.host = Run.target.rest_base
    Run.rows = max(1, o.rows_per_request)
    rows = dataset.sample_rows(DISTINCT_BODIES * Run.rows, seed=20240601)
    requests = [build_request(rows[i : i + Run.rows]) for i in range(0, len(rows), Run.rows)]
    Run.rest_bodies = [r.model_dump_json(exclude_none=True).encode() for r in requests]
    Run.grpc_requests = [
        converters.ModelInferRequestConverter.from_types(r, model_name=Run.target.model)
        for r in requests
    ]
    if o.requests_csv:
        Path(o.requests_csv).parent.mkdir(parents=True, exist_ok=True)
        CsvRequestLogger(o.requests_csv, flush_interval=500).register(environment)


@events.test_start.add_listener
def _read_weights(environment: Environment, **_: Any) -> None:
    o = environment.parsed_options
    if isinstance(environment.runner, WorkerRunner) or o is None:
        return
    try:
        if o.weights:
            return
        if Run.target.admin_url:
            Run.weights, Run.generation = router_weights(Run.target.admin_url)
            Run.weights_source = f"the router's /admin/status (routes generation {Run.generation})"
        else:
            Run.weights = {k: float(v) for k, v in Run.spec.effective_weights().items()}
            Run.weights_source = f"{o.values} (not read from the ingress)"
    except ServingError as e:
        log.error("%s; the split will not be checked", e.message)


def _cycle(items: list[Any]) -> Iterator[Any]:
    """The prepared requests, endlessly, from a random start (users do not move in lockstep)."""
    start = random.randrange(len(items))
    return itertools.cycle(items[start:] + items[:start])


class _Paced:
    """Each user runs at rps / peak users requests per second (0: as fast as answers come)."""

    environment: Environment
    _pace: Any = None

    def wait_time(self) -> float:
        if self._pace is None:
            o = self.environment.parsed_options
            rate = o.rps / max(1, o.num_users or 1) if o is not None else 0.0
            self._pace = constant_throughput(rate) if rate > 0 else (lambda _: 0.0)
        return float(self._pace(self))


class RestUser(_Paced, FastHttpUser):
    """POST /v2/models/<model>/infer, JSON rows of the hold-out set."""

    def on_start(self) -> None:
        self.bodies = _cycle(Run.rest_bodies)

    @task
    def infer(self) -> None:
        with self.client.post(
            Run.target.infer_path,
            data=next(self.bodies),
            headers={"content-type": "application/json"},
            catch_response=True,
        ) as resp:
            resp.request_meta["name"] = entry_name((resp.headers or {}).get(PREDICTOR_HEADER))
            problem = _check_rest(resp)
            if problem:
                resp.failure(problem)
            else:
                resp.success()


def _check_rest(resp: Any) -> str | None:
    if not resp.status_code:  # no answer at all: refused, reset, timed out
        return f"no answer: {getattr(resp, 'error', None)!r}"
    if resp.status_code != 200:
        return f"HTTP {resp.status_code}: {(resp.text or '')[:200]}"
    try:
        outputs = {o["name"]: o for o in resp.json()["outputs"]}
    except (ValueError, KeyError, TypeError):
        return "the answer is not a V2 inference response"
    if "predict" not in outputs:
        return f"no 'predict' output (got {sorted(outputs)})"
    if len(outputs["predict"]["data"]) != Run.rows:
        return f"'predict' has {len(outputs['predict']['data'])} labels for {Run.rows} rows"
    return None


class GrpcUser(_Paced, User):
    """inference.GRPCInferenceService/ModelInfer, with the seldon/namespace routing metadata."""

    def on_start(self) -> None:
        self.channel = grpc.insecure_channel(Run.target.grpc_target or "")
        self.stub = GRPCInferenceServiceStub(self.channel)
        self.requests = _cycle(Run.grpc_requests)

    def on_stop(self) -> None:
        self.channel.close()

    @task
    def infer(self) -> None:
        # Fire locust's request event ourselves, as locust's grpc example does.
        started, start_time = time.perf_counter(), time.time()
        response, exception, metadata = None, None, {}
        try:
            response, call = self.stub.ModelInfer.with_call(
                next(self.requests), metadata=Run.target.grpc_metadata, timeout=10
            )
            # the router names the predictor in the response headers (initial metadata)
            metadata = dict(call.initial_metadata() or ()) | dict(call.trailing_metadata() or ())
            exception = _check_grpc(response)
        except grpc.RpcError as e:  # reported like a failed check: status code and details
            exception = CatchResponseError(f"{e.code().name}: {e.details()}")
            metadata = dict(e.initial_metadata() or ()) | dict(e.trailing_metadata() or ())
        self.environment.events.request.fire(
            request_type="grpc",
            name=entry_name(metadata.get(PREDICTOR_HEADER)),
            response_time=(time.perf_counter() - started) * 1000,
            response_length=response.ByteSize() if response is not None else 0,
            response=response,
            exception=exception,
            context={},
            start_time=start_time,
        )


def _check_grpc(response: Any) -> CatchResponseError | None:
    outputs = {o.name: o for o in response.outputs}
    if "predict" not in outputs:
        return CatchResponseError(f"no 'predict' output (got {sorted(outputs)})")
    if outputs["predict"].shape[0] != Run.rows:
        return CatchResponseError(
            f"'predict' has shape {list(outputs['predict'].shape)} for {Run.rows} rows"
        )
    return None


def _observed(scope: str, entry: StatsEntry) -> Observed:
    pct = entry.get_response_time_percentile
    return Observed(
        scope,
        entry.num_requests,
        entry.num_failures,
        float(pct(0.5) or 0),
        float(pct(0.95) or 0),
        float(pct(0.99) or 0),
        entry.total_rps,
    )


@events.quitting.add_listener
def _slo_gate(environment: Environment, **_: Any) -> None:
    o = environment.parsed_options
    if isinstance(environment.runner, WorkerRunner) or o is None or not hasattr(Run, "spec"):
        return
    stats = environment.stats
    merged: dict[str, StatsEntry] = {}
    for entry in stats.entries.values():  # REST and gRPC entries of one predictor, merged
        predictor = predictor_of(entry.name)
        if predictor is not None:
            merged.setdefault(predictor, StatsEntry(stats, entry.name, "")).extend(entry)
    notes = []
    if Run.target.admin_url and Run.generation is not None and not o.weights:
        try:
            _, generation = router_weights(Run.target.admin_url)
            if generation != Run.generation:
                notes.append(
                    f"the weights changed during the run (routes generation "
                    f"{Run.generation} -> {generation}); compared with those at the start"
                )
        except ServingError as e:
            notes.append(e.message)
    summary = build_summary(
        Run.spec.slo,
        _observed(OVERALL, stats.total),
        [_observed(p, e) for p, e in sorted(merged.items(), key=lambda kv: -kv[1].num_requests)],
        Run.weights,
        Run.weights_source,
        min_requests=o.min_requests,
        notes=notes,
        task_errors=[f"{e['count']}x {e['msg']}" for e in environment.runner.exceptions.values()]
        if environment.runner is not None
        else [],
    )
    print("\n" + summary.text(), flush=True)
    if o.summary_json:
        summary.write(Path(o.summary_json))
    environment.process_exit_code = summary.exit_code
