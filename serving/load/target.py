"""Where a load test sends requests, and the traffic weights its split is compared with.

A target is either the local stack (its `stack.json` in the state dir names the router's URLs) or
any ingress given by hand: a REST base such as http://host/seldon/<namespace>/<deployment> and,
optionally, a gRPC host:port that routes on the `seldon`/`namespace` metadata. What the state file
and the options leave open comes from the values file (deployment, namespace, model name).
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

import httpx

from ..router.stack import read_state
from ..spec import Spec
from .errors import LoadTestError


@dataclass(frozen=True)
class LoadTarget:
    rest_base: str | None
    """REST base URL with the Seldon prefix: http://host/seldon/<namespace>/<deployment>."""
    grpc_target: str | None
    """gRPC host:port, or None to send REST only."""
    deployment: str
    namespace: str
    model: str
    admin_url: str | None
    """The local router's base URL (GET /admin/status); None for other ingresses."""

    @property
    def infer_path(self) -> str:
        return f"/v2/models/{self.model}/infer"

    @property
    def grpc_metadata(self) -> tuple[tuple[str, str], ...]:
        """The metadata Seldon's Istio VirtualService routes gRPC on."""
        return (("seldon", self.deployment), ("namespace", self.namespace))


def resolve_target(
    spec: Spec,
    *,
    state_dir: Path | None = None,
    rest_base: str | None = None,
    grpc_target: str | None = None,
    deployment: str | None = None,
    namespace: str | None = None,
    model: str | None = None,
) -> LoadTarget:
    """Options first, then the local stack's state file (if a state dir is given), then the spec."""
    state = read_state(state_dir) if state_dir is not None else {}
    target = LoadTarget(
        rest_base=(rest_base or state.get("seldonUrl") or None),
        grpc_target=grpc_target or state.get("grpcTarget") or None,
        deployment=deployment or state.get("deployment") or spec.deployment.name,
        namespace=namespace or state.get("namespace") or spec.deployment.namespace,
        model=model or state.get("model") or spec.model.name,
        admin_url=state.get("restUrl"),
    )
    if target.rest_base is None and target.grpc_target is None:
        raise LoadTestError(
            "no target: pass --host (REST base, e.g. http://host/seldon/<namespace>/<deployment>), "
            "--grpc-target host:port, or --state-dir of a running local stack ('serving up')"
        )
    return target


def parse_weights(text: str) -> dict[str, float]:
    """'stable=90,canary=10' -> {'stable': 90.0, 'canary': 10.0}."""
    weights: dict[str, float] = {}
    for part in filter(None, (p.strip() for p in text.split(","))):
        name, _, value = (s.strip() for s in part.partition("="))
        try:
            weight = float(value)
        except ValueError:
            weight = -1.0
        if not name or weight < 0:
            raise LoadTestError(
                f"--weights {text!r}: expected predictor=percent pairs such as "
                "'stable=90,canary=10'"
            )
        weights[name] = weight
    return weights


def router_weights(admin_url: str) -> tuple[dict[str, float], int]:
    """The weights the local router applies now, and its routes generation (bumped per change)."""
    try:
        status = httpx.get(f"{admin_url}/admin/status", timeout=5).json()
    except (httpx.HTTPError, ValueError) as e:
        raise LoadTestError(
            f"cannot read the router's weights from {admin_url}/admin/status ({e}); "
            "is the local stack running? ('serving status')"
        ) from e
    routes = status["routes"]
    return {k: float(v) for k, v in routes["weights"].items()}, int(routes["generation"])
