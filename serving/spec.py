"""The deployment spec: one typed model of the values file that drives both the Helm chart and the
local stack (router + MLServer processes), validated once with the Seldon operator's own rules.

The rules mirror Seldon Core v1.18.2's admission webhook (seldondeployment_webhook.go):
  - predictor names are unique;
  - when there is more than one non-shadow predictor, their traffic sums to 100;
  - at most one shadow, and a shadow cannot be the only predictor;
  - a prepackaged server (SKLEARN_SERVER) needs a modelUri.
We add: traffic within 0..100 (the CRD allows any int32; the ingress does not).
A shadow's `traffic` is the percentage of requests mirrored to it.
"""

from __future__ import annotations

from collections.abc import Iterable
from enum import StrEnum
from pathlib import Path
from typing import Annotated, Any, Literal

import yaml
from pydantic import BaseModel, ConfigDict, Field, ValidationError, model_validator
from pydantic.alias_generators import to_camel

from .errors import SpecError
from .rollout.plan import RolloutPlan

DNS_LABEL = r"^[a-z0-9]([-a-z0-9]*[a-z0-9])?$"


class _Values(BaseModel):
    """Values keys are camelCase as in Helm and Seldon; unknown keys are refused."""

    model_config = ConfigDict(
        alias_generator=to_camel,
        populate_by_name=True,
        extra="forbid",
        frozen=False,
        use_attribute_docstrings=True,  # field docstrings become values.schema.json descriptions
    )


class Server(StrEnum):
    CUSTOM = "custom"  # this project's runtime image (serving.runtime.VerifiedSKLearnModel)
    SKLEARN_SERVER = "SKLEARN_SERVER"  # Seldon's prepackaged MLServer sklearn server


class Resources(_Values):
    requests: dict[str, str] = Field(default_factory=lambda: {"cpu": "250m", "memory": "512Mi"})
    """Kubernetes resource requests of the model container."""
    limits: dict[str, str] = Field(default_factory=lambda: {"memory": "1Gi"})
    """Kubernetes resource limits of the model container."""


class Hpa(_Values):
    enabled: bool = False
    """Give the predictor an hpaSpec (the operator creates a HorizontalPodAutoscaler)."""
    min_replicas: Annotated[int, Field(ge=1)] = 1
    """Lower bound of replicas under the autoscaler."""
    max_replicas: Annotated[int, Field(ge=1)] = 3
    """Upper bound of replicas under the autoscaler."""
    cpu_target_utilization: Annotated[int, Field(ge=1, le=100)] = 70
    """Average CPU utilisation (percent of requests) the autoscaler aims for."""

    @model_validator(mode="after")
    def _bounds(self) -> Hpa:
        if self.max_replicas < self.min_replicas:
            raise ValueError(
                f"maxReplicas ({self.max_replicas}) is below minReplicas ({self.min_replicas}); "
                "raise maxReplicas"
            )
        return self


class Pdb(_Values):
    enabled: bool = False
    """Give the predictor a pdbSpec (the operator creates a PodDisruptionBudget)."""
    min_available: Annotated[int, Field(ge=0)] = 1
    """Pods that must stay up during voluntary disruptions."""


class Predictor(_Values):
    name: Annotated[str, Field(pattern=DNS_LABEL, max_length=40)]
    """Predictor name (stable, canary, shadow ...); part of pod and metric names."""
    version: Annotated[str, Field(min_length=1)]
    """Model version served (models/<model>/<version> locally, the modelUri suffix on a cluster)."""
    traffic: Annotated[int, Field(ge=0, le=100)] = 0
    """Percent of requests; for the shadow, the percent of requests mirrored to it."""
    shadow: bool = False
    """A shadow gets a mirrored copy of requests; its answers never reach callers."""
    replicas: Annotated[int, Field(ge=0)] = 1
    """Model server replicas (pods on a cluster, processes locally)."""
    server: Server = Server.CUSTOM
    """custom = this project's runtime image; SKLEARN_SERVER = Seldon's prepackaged server."""
    model_uri: str = ""
    """Where the artifact folder is (s3://, gs://, pvc://); required for SKLEARN_SERVER."""
    env: dict[str, str] = Field(default_factory=dict)
    """Extra environment of the model server container (e.g. MLSERVER_* tuning, fault switches)."""
    resources: Resources = Field(default_factory=Resources)
    """Container resources."""
    hpa: Hpa = Field(default_factory=Hpa)
    """Autoscaling."""
    pdb: Pdb = Field(default_factory=Pdb)
    """Disruption budget."""


class Deployment(_Values):
    name: Annotated[str, Field(pattern=DNS_LABEL, max_length=63)] = "breast-cancer"
    """SeldonDeployment name: the <deployment> in /seldon/<namespace>/<deployment>/."""
    namespace: Annotated[str, Field(pattern=DNS_LABEL, max_length=63)] = "models"
    """Kubernetes namespace: the <namespace> in /seldon/<namespace>/<deployment>/."""


class Model(_Values):
    name: Annotated[str, Field(pattern=DNS_LABEL)] = "breast-cancer"
    """The model name every predictor serves (/v2/models/<name>/infer)."""
    storage_uri: str = "pvc://models/breast-cancer"
    """On a cluster: modelUri of a predictor is <storageUri>/<version> unless it sets its own."""
    local_repository: str = "models"
    """Locally: the folder holding <model>/<version>/ artifacts (made by 'make models')."""
    artifacts: dict[
        Annotated[str, Field(min_length=1)], Annotated[str, Field(pattern=r"^[0-9a-f]{64}$")]
    ] = Field(default_factory=dict)
    """sha256 of each version's model.joblib, and under <version>/model.onnx of its compiled form
    ('serving train --record-digests'). The runtime unpickles an artifact only when its digest is
    the one recorded here for its version, and serves a compiled form only when its digest is
    recorded and matches: it gets them in SERVING_ARTIFACT_DIGESTS, never from the model folder."""


#: the longest interval between two hand-overs of mirrored pairs (Shadowing.handoff_seconds)
HANDOFF_SECONDS = 0.5


class Shadowing(_Values):
    max_in_flight: Annotated[int, Field(ge=1)] = 4096
    """Mirrored requests in flight at once (waiting in a batch or being answered); more are
    dropped and counted, never queued."""
    batch_rows: Annotated[int, Field(ge=1)] = 512
    """Alike mirrored requests are sent to the shadow as one batch once they add up to this many
    rows..."""
    batch_wait_seconds: Annotated[float, Field(ge=0, le=10)] = 2.0
    """...or once the first of them has waited this long (0 = no batching). Batches of a few
    hundred rows cost the shadow little per row, and few of them disturb callers less than many
    small ones; comparisons arrive up to this much later."""
    timeout_seconds: Annotated[float, Field(gt=0)] = 2.0
    """A mirrored request slower than this is abandoned and counted as failed."""
    rtol: Annotated[float, Field(ge=0)] = 1e-6
    """Relative tolerance when comparing numeric outputs (labels must match exactly)."""

    @property
    def handoff_seconds(self) -> float:
        """How often nginx hands the mirrored pairs it kept to the shadow worker, in one write,
        and the worker checks its batches' age: often enough that a batch fills up and leaves on
        its own, rather than several leaving together after one big hand-over."""
        return max(min(self.batch_wait_seconds, HANDOFF_SECONDS), 0.001)


class RouterSettings(_Values):
    host: str = "127.0.0.1"
    """Address the local router listens on."""
    port: Annotated[int, Field(ge=0, le=65535)] = 8003
    """REST port (0 = any free port)."""
    grpc_port: Annotated[int, Field(ge=0, le=65535)] = 8004
    """gRPC port (0 = any free port)."""
    sticky_header: str = ""
    """Request header whose value (a user id) keeps a caller on one predictor; empty = off."""
    fallback_to_stable: bool = False
    """When a predictor has no live replica, serve from the stable one instead of a 503."""
    max_body_bytes: Annotated[int, Field(ge=1024)] = 4 * 1024 * 1024
    """Request bodies above this get 413."""
    upstream_timeout_seconds: Annotated[float, Field(gt=0)] = 10.0
    """Timeout for a forwarded request."""
    admin_token_env: str = "SERVING_ADMIN_TOKEN"
    """Environment variable holding the token the admin API requires; unset = changes refused."""
    pin_token_env: str = "SERVING_PIN_TOKEN"
    """Environment variable holding the token a caller sends in `x-serving-pin-token` to pin a
    predictor with `x-seldon-predictor` (load tests, smoke tests of a canary). `serving up`
    makes one when it is unset and keeps it in its state file. Without it pins are refused."""
    allow_shadow_pin: bool = False
    """Whether a pinned request may be answered by the shadow (its answers otherwise never reach
    callers)."""
    shadow: Shadowing = Field(default_factory=Shadowing)
    """Mirroring limits."""


# Sections below only shape the Kubernetes side (charts/seldon-model); the local stack ignores them.


class ComparatorSettings(_Values):
    """The comparator (`serving comparator`): shadow agreement from the executors' payload logs."""

    enabled: bool = True
    """Run the comparator; when there is a shadow, every predictor's graph logs its requests and
    answers to it (Seldon's payload logger), so a mirror step can be judged on the cluster."""
    port: Annotated[int, Field(ge=1, le=65535)] = 8080
    """Port the comparator listens on in its pod (the executors post to it)."""
    ttl_seconds: Annotated[float, Field(gt=0)] = 30.0
    """How long a request, an answer or a shadow's exchange waits for its other half; what
    expires is counted (seldon_comparator_unmatched)."""
    max_pending: Annotated[int, Field(ge=100)] = 10_000
    """Entries each of its waiting rooms holds at most; the oldest is evicted, and counted."""
    resources: Resources = Field(default_factory=lambda: Resources(
        requests={"cpu": "100m", "memory": "128Mi"}, limits={"memory": "512Mi"}))
    """Kubernetes resources of the comparator's container (one replica: pairing is in memory)."""


class Image(_Values):
    repository: Annotated[str, Field(min_length=1)] = "serving-runtime"
    """This project's runtime image (the top-level Dockerfile), for custom predictors and helm test."""
    tag: Annotated[str, Field(min_length=1)] = "0.1.0"
    """Image tag; use an immutable tag (or digest) in production."""
    pull_policy: Literal["Always", "IfNotPresent", "Never"] = "IfNotPresent"
    """Kubernetes imagePullPolicy (IfNotPresent suits images loaded with 'kind load')."""


class NetworkPolicySettings(_Values):
    enabled: bool = True
    """Admit traffic to model pods only from the ingress and Prometheus: MLServer's repository
    load/unload endpoints have no authentication."""
    ingress_namespace: Annotated[str, Field(pattern=DNS_LABEL)] = "istio-system"
    """Namespace of the ingress (Istio or Ambassador) serving /seldon/<namespace>/<deployment>/."""
    prometheus_namespace: Annotated[str, Field(pattern=DNS_LABEL)] = "monitoring"
    """Namespace of the Prometheus that scrapes the executor and MLServer metrics."""


class Monitor(_Values):
    enabled: bool = False
    """Render this prometheus-operator object (needs its CRDs in the cluster)."""
    interval: Annotated[str, Field(pattern=r"^[0-9]+(ms|s|m|h)$")] = "15s"
    """Scrape interval (Prometheus duration)."""
    labels: dict[str, str] = Field(default_factory=dict)
    """Extra labels, e.g. release: kube-prometheus-stack, so the Prometheus selects it."""


class Monitoring(_Values):
    pod_monitor: Monitor = Field(default_factory=Monitor)
    """PodMonitor: scrapes the executor and MLServer on every model pod (port 'metrics')."""
    service_monitor: Monitor = Field(default_factory=Monitor)
    """ServiceMonitor: scrapes the executor through the predictor Services (port 'http')."""


class GrafanaDashboard(_Values):
    enabled: bool = True
    """Render the dashboard as a ConfigMap (rates, errors, latency quantiles, shadow agreement)."""
    labels: dict[str, str] = Field(default_factory=lambda: {"grafana_dashboard": "1"})
    """Labels the Grafana dashboard sidecar watches for."""


class HelmTest(_Values):
    enabled: bool = True
    """Render the 'helm test' pod that sends one inference to the first non-shadow predictor."""


class PodSecurity(_Values):
    run_as_user: Annotated[int, Field(ge=1)] = 1000
    """Numeric non-root user of the model containers (the Dockerfile's USER)."""
    run_as_group: Annotated[int, Field(ge=1)] = 1000
    """Primary group of the model containers."""
    fs_group: Annotated[int, Field(ge=1)] = 1000
    """Group owning mounted volumes (the model PVC)."""


class Slo(_Values):
    """Service level objectives the load tests gate on (per predictor and overall)."""

    p95_ms: Annotated[float, Field(gt=0)] = 50.0
    """95th percentile latency budget, milliseconds."""
    p99_ms: Annotated[float, Field(gt=0)] = 100.0
    """99th percentile latency budget, milliseconds."""
    max_error_rate: Annotated[float, Field(ge=0, le=1)] = 0.01
    """Largest acceptable share of failed requests."""
    min_rps: Annotated[float, Field(ge=0)] = 50.0
    """Smallest acceptable throughput over the run, requests per second."""


class BatchVolume(_Values):
    claim_name: str = ""
    """PersistentVolumeClaim mounted there; empty = an emptyDir (only useful for trying it)."""
    sub_path: str = ""
    """Folder inside the claim to mount."""


class Batch(_Values):
    """The chart's CronJob running 'serving batch score' against the stable predictor's Service
    (the local stack ignores it; locally run the command or the Metaflow flow)."""

    enabled: bool = False
    """Render the CronJob (and a NetworkPolicy admitting its pods to the model pods)."""
    schedule: Annotated[str, Field(min_length=9)] = "0 * * * *"
    """Cron schedule (spec.schedule), in the controller's time zone unless timeZone is set."""
    time_zone: str = ""
    """IANA time zone of the schedule (spec.timeZone), e.g. Europe/Berlin; empty = the
    controller's."""
    input: Annotated[str, Field(min_length=1)] = "/data/in"
    """What to score as the container sees it: a file, folder or glob under /data/in."""
    output: Annotated[str, Field(min_length=1)] = "/data/out/predictions"
    """Folder under /data/out; each Job writes <output>/<job name> (a retried pod resumes it).
    Ignored when outputUrlSecret is set."""
    output_url_secret: str = ""
    """Name of a Secret whose key 'url' is a SQL URL to write to instead (e.g.
    postgresql+psycopg://user:password@host/db; the image needs that driver)."""
    table: Annotated[str, Field(pattern=r"^[A-Za-z_][A-Za-z0-9_]*$")] = "predictions"
    """SQL table when outputUrlSecret is set."""
    format: Literal["parquet", "csv"] = "parquet"
    """Part file format in the output folder."""
    input_volume: BatchVolume = Field(default_factory=BatchVolume)
    """Mounted read-only at /data/in."""
    output_volume: BatchVolume = Field(default_factory=BatchVolume)
    """Mounted at /data/out (also holds the manifests of SQL runs)."""
    transport: Literal["rest", "grpc"] = "rest"
    """How the Job calls the stable predictor's Service: executor REST :8000 or gRPC :5001."""
    rows_per_request: Annotated[int, Field(ge=1)] = 512
    """Rows per V2 request."""
    concurrency: Annotated[int, Field(ge=1)] = 8
    """Requests in flight at once."""
    retries: Annotated[int, Field(ge=0)] = 5
    """Times a request is retried after a 429, 5xx, connection error or timeout."""
    timeout_seconds: Annotated[float, Field(gt=0)] = 30.0
    """Per-request timeout."""
    id_column: str = ""
    """Input column carried to the output as 'id'; empty = none."""
    backoff_limit: Annotated[int, Field(ge=0)] = 3
    """Pod retries of a Job; a retried pod resumes from the manifest."""
    active_deadline_seconds: Annotated[int, Field(ge=1)] = 3600
    """A Job running longer is stopped (its next run resumes nothing: it is a new Job)."""
    resources: Resources = Field(default_factory=Resources)
    """Resources of the batch container."""


class Spec(_Values):
    """Root of the values file (charts/<chart>/values.yaml)."""

    deployment: Deployment = Field(default_factory=Deployment)
    model: Model = Field(default_factory=Model)
    predictors: list[Predictor]
    router: RouterSettings = Field(default_factory=RouterSettings)
    comparator: ComparatorSettings = Field(default_factory=ComparatorSettings)
    image: Image = Field(default_factory=Image)
    network_policy: NetworkPolicySettings = Field(default_factory=NetworkPolicySettings)
    monitoring: Monitoring = Field(default_factory=Monitoring)
    grafana_dashboard: GrafanaDashboard = Field(default_factory=GrafanaDashboard)
    helm_test: HelmTest = Field(default_factory=HelmTest)
    pod_security: PodSecurity = Field(default_factory=PodSecurity)
    rollout: RolloutPlan = Field(default_factory=RolloutPlan)
    slo: Slo = Field(default_factory=Slo)
    batch: Batch = Field(default_factory=Batch)

    @model_validator(mode="after")
    def _seldon_rules(self) -> Spec:
        errors = seldon_rule_violations(self.predictors)
        if errors:
            raise ValueError("\n".join(errors))
        return self

    # Convenience views used by the router and the rollout controller.
    @property
    def primaries(self) -> list[Predictor]:
        return [p for p in self.predictors if not p.shadow]

    @property
    def shadow(self) -> Predictor | None:
        return next((p for p in self.predictors if p.shadow), None)

    def effective_weights(self) -> dict[str, int]:
        """Traffic per non-shadow predictor as the ingress applies it (a lone one gets 100)."""
        primaries = self.primaries
        if len(primaries) == 1:
            return {primaries[0].name: 100}
        return {p.name: p.traffic for p in primaries}


def stable_predictor(predictors: Iterable[Predictor]) -> Predictor:
    """The stable predictor, the one definition everything uses (the router's fallback, where a
    rollout starts from and returns to): the non-shadow predictor named 'stable', else the
    non-shadow predictor with the most traffic (the first of equals)."""
    primaries = [p for p in predictors if not p.shadow]
    if not primaries:
        raise SpecError("no stable predictor: every predictor is a shadow; add a non-shadow one")
    named = next((p for p in primaries if p.name == "stable"), None)
    return named or max(primaries, key=lambda p: p.traffic)


def seldon_rule_violations(predictors: list[Predictor]) -> list[str]:
    """The operator webhook's traffic rules; each message names the field and the fix."""
    errors: list[str] = []
    if not predictors:
        return ["predictors: at least one predictor is required; add a stable predictor"]
    seen: set[str] = set()
    for i, p in enumerate(predictors):
        if p.name in seen:
            errors.append(
                f"predictors[{i}].name: duplicate predictor name {p.name!r}; names must be unique"
            )
        seen.add(p.name)
        if p.server is Server.SKLEARN_SERVER and not p.model_uri:
            errors.append(
                f"predictors[{i}].modelUri: required when server is SKLEARN_SERVER; set it to the "
                "artifact folder (e.g. gs://bucket/breast-cancer/v1)"
            )
    primaries = [p for p in predictors if not p.shadow]
    shadows = [p for p in predictors if p.shadow]
    total = sum(p.traffic for p in primaries)
    if len(primaries) > 1 and total != 100:
        detail = " + ".join(f"{p.name} {p.traffic}" for p in primaries)
        errors.append(
            f"predictors[].traffic: non-shadow traffic must sum to 100 when there are several "
            f"predictors, got {detail} = {total}; adjust the weights"
        )
    if len(shadows) > 1:
        errors.append(
            f"predictors[].shadow: at most one shadow predictor, got "
            f"{[p.name for p in shadows]}; set shadow: false on all but one"
        )
    if shadows and not primaries:
        errors.append(
            "predictors[].shadow: a shadow cannot be the only predictor; add a non-shadow predictor"
        )
    return errors


def _format_location(loc: tuple[Any, ...]) -> str:
    out = ""
    for part in loc:
        if isinstance(part, int):
            out += f"[{part}]"
        else:
            out += ("." if out else "") + str(part)
    return out


def parse_spec(values: dict[str, Any], source: str = "values") -> Spec:
    """Validate a values mapping; SpecError lists every problem as `field: message`."""
    try:
        spec = Spec.model_validate(values)
    except ValidationError as e:
        lines: list[str] = []
        for err in e.errors():
            where = _format_location(err["loc"]) or "(root)"
            msg = err["msg"].removeprefix("Value error, ")
            if err["type"] == "extra_forbidden":
                msg = "unknown key; remove it or check its spelling"
            if not err["loc"]:  # cross-field rules already name their fields
                lines.extend(f"  {m}" for m in msg.splitlines())
            else:
                lines.append(f"  {where}: {msg}")
        raise SpecError(f"{source} is invalid:\n" + "\n".join(lines)) from None
    return spec


def load_spec(path: str | Path) -> Spec:
    path = Path(path)
    try:
        values = yaml.safe_load(path.read_text()) or {}
    except FileNotFoundError:
        raise SpecError(
            f"{path} does not exist; pass a values file (e.g. charts/*/values.yaml)"
        ) from None
    except yaml.YAMLError as e:
        raise SpecError(f"{path} is not valid YAML: {e}") from None
    if not isinstance(values, dict):
        raise SpecError(f"{path}: the top level must be a mapping of sections")
    return parse_spec(values, source=str(path))


def spec_to_values(spec: Spec) -> dict[str, Any]:
    """The spec as values (camelCase), the shape the chart reads."""
    return spec.model_dump(mode="json", by_alias=True)
