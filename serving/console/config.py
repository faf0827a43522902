"""What the console watches: the local stack (its state folder) or a cluster (kubeconfig context
and Prometheus). `serving console` hands these to the Streamlit process as environment
variables; the app reads them back with `from_env`."""

from __future__ import annotations

import os
from dataclasses import asdict, dataclass
from pathlib import Path

from ..cli_common import DEFAULT_STATE_DIR, DEFAULT_VALUES

ENV_PREFIX = "SERVING_CONSOLE_"
#: the steering token on a cluster (locally the stack's admin token steers); never shown
TOKEN_ENV = "SERVING_CONSOLE_TOKEN"


@dataclass(frozen=True)
class ConsoleConfig:
    values_path: str = DEFAULT_VALUES
    state_dir: Path = Path(DEFAULT_STATE_DIR)
    kubernetes: bool = False
    context: str | None = None
    prometheus: str | None = None
    ingress: str | None = None
    """On a cluster: the REST base the page sends its own requests to (Try the model),
    http://<istio-ingress>/seldon/<namespace>/<deployment>."""
    comparator: str | None = None
    """The comparator's base URL (its GET /disagreements has the input rows); locally the
    stack's state file names it."""
    refresh_seconds: float = 2.0

    @property
    def where(self) -> str:
        return ("the cluster" + (f" (context {self.context})" if self.context else "")
                if self.kubernetes else f"the local stack in {self.state_dir}")

    @property
    def rollout_args(self) -> list[str]:
        """The target options of `serving rollout ...` that address the same deployment."""
        args = ["--values", self.values_path, "--state-dir", str(self.state_dir)]
        if self.kubernetes:
            args.append("--kubernetes")
        if self.context:
            args += ["--context", self.context]
        if self.prometheus:
            args += ["--prometheus", self.prometheus]
        return args

    def to_env(self) -> dict[str, str]:
        return {ENV_PREFIX + k.upper(): str(v) for k, v in asdict(self).items() if v is not None}


def from_env(env: dict[str, str] | None = None) -> ConsoleConfig:
    env = dict(os.environ if env is None else env)

    def get(name: str) -> str | None:
        return env.get(ENV_PREFIX + name.upper()) or None

    return ConsoleConfig(
        values_path=get("values_path") or DEFAULT_VALUES,
        state_dir=Path(get("state_dir") or DEFAULT_STATE_DIR),
        kubernetes=get("kubernetes") == "True",
        context=get("context"),
        prometheus=get("prometheus"),
        ingress=get("ingress"),
        comparator=get("comparator"),
        refresh_seconds=float(get("refresh_seconds") or 2.0),
    )
