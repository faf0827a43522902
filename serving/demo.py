"""`make demo`: the whole flow on one machine, narrated, ending with a summary.

1. the trained model versions; 2. the local stack (MLServer per replica behind the router) from
the chart's own values; 3. live traffic split by weight and mirrored to a shadow whose answers
are compared; 4. three rollouts under load: a failing candidate rolled back automatically, a
candidate that disagrees with stable rejected while only mirrored, a healthy one promoted.
"""

from __future__ import annotations

import os
import subprocess
import tempfile
import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import click
import yaml

from . import artifacts, training
from .background_load import BackgroundLoad
from .rollout.backends import LocalRouterBackend
from .rollout.commands import Target, begin
from .rollout.controller import Controller
from .rollout.metrics_source import RouterMetricsSource
from .rollout.plan import RolloutPlan
from .rollout.state import FileStateStore, Phase, RolloutStatus
from .router.commands import format_status
from .router.stack import start_background, stop_background

FAST_ANALYSIS = {"intervalSeconds": 2, "minRequests": 100, "failureLimit": 2,
                 "maxErrorRateIncrease": 0.02, "maxP99Ratio": 2.0, "minAgreement": 0.9}


def heading(text: str) -> None:
    click.secho(f"\n== {text} ==", bold=True)


@dataclass
class RolloutOutcome:
    candidate: str
    description: str
    phase: Phase
    reason: str
    seconds: float
    requests: int
    failed: int
    first_error_to_zero_s: float | None = None


class Demo:
    def __init__(self, models_root: Path, values_path: Path, workdir: Path,
                 echo: Callable[[str], Any] = click.echo) -> None:
        self.models_root = models_root
        self.values_path = values_path
        self.workdir = workdir
        self.state_dir = workdir / "state"
        self.echo = echo
        self.process: subprocess.Popen[bytes] | None = None
        self.values: dict[str, Any] = {}

    # -- the local stack ------------------------------------------------------------------------
    def start_stack(self) -> dict[str, Any]:
        values = yaml.safe_load(self.values_path.read_text())
        values["model"]["localRepository"] = str(self.models_root)
        values["router"].update({"port": 0, "grpcPort": 0})
        values["rollout"]["analysis"].update(FAST_ANALYSIS)
        self.values = values
        demo_values = self.workdir / "values.yaml"
        demo_values.write_text(yaml.safe_dump(values, sort_keys=False))
        self.process, state = start_background(demo_values, self.state_dir,
                                               self.workdir / "stack.log")
        self.echo((self.workdir / "stack.log").read_text().strip())
        return state

    def stop_stack(self) -> None:
        if self.process is not None:
            stop_background(self.process, timeout=60)

    # -- steps ----------------------------------------------------------------------------------
    def show_split(self, state: dict[str, Any], seconds: float = 6.0) -> dict[str, Any]:
        import httpx

        load = BackgroundLoad(state["seldonUrl"] + f"/v2/models/{state['model']}/infer",
                              threads=4).start()
        time.sleep(seconds)
        load.stop()
        time.sleep(0.5)
        status = httpx.get(state["restUrl"] + "/admin/status", timeout=10).json()
        served = load.served_by()
        total = sum(served.values())
        self.echo(f"{total} requests in {seconds:.0f}s ({total / seconds:.0f}/s), "
                  f"failed: {total - load.statuses()[200]}")
        for p in status["predictors"]:
            if not p["shadow"]:
                share = served.get(p["name"], 0) / max(total, 1)
                self.echo(f"  {p['name']:<7} configured {p['traffic']:>3}%  observed {share:6.1%}")
        self.echo(format_status(status))
        return {"requests": total, "served": dict(served),
                "agreement": status["shadow"]["agreement"]["agreementRate"]}

    def rollout(self, state: dict[str, Any], candidate: str, description: str,
                steps: list[dict[str, Any]] | None, env: dict[str, str] | None = None
                ) -> RolloutOutcome:
        plan_values = dict(self.values["rollout"])
        if steps is not None:
            plan_values["steps"] = steps
        plan = RolloutPlan.model_validate(plan_values)
        self.echo(f"candidate {candidate}: {description}")
        self.echo("plan: " + ", ".join(s.describe() for s in plan.steps)
                  + (f"; candidate env {env}" if env else ""))
        target = Target(FileStateStore(self.state_dir),
                        LocalRouterBackend(state["restUrl"], state["adminToken"]),
                        RouterMetricsSource(state["restUrl"] + "/metrics", state["deployment"]),
                        plan)
        load = BackgroundLoad(state["seldonUrl"] + f"/v2/models/{state['model']}/infer",
                              threads=4).start()
        started = time.time()
        try:
            begin(target, candidate, env)
            final: RolloutStatus = Controller(
                target.store, target.backend, target.metrics, plan,
                echo=lambda line: self.echo("  " + line)).run()
            time.sleep(1.0)
        finally:
            load.stop()
        failed = [t for t, status, _ in load.results if status != 200]
        to_zero = None
        if failed and final.phase is Phase.ROLLED_BACK:
            last_canary = max((t for t, _, p in load.results if p == final.candidate_predictor),
                              default=failed[0])
            to_zero = last_canary - failed[0]
        outcome = RolloutOutcome(candidate, description, final.phase, final.message,
                                 time.time() - started, len(load.results), len(failed), to_zero)
        self.echo(f"=> {final.phase} after {outcome.seconds:.0f}s; callers saw "
                  f"{len(failed)} failed of {len(load.results)} requests"
                  + (f"; first error to 0% canary traffic: {to_zero:.1f}s" if to_zero else ""))
        return outcome


    def load_test(self, state: dict[str, Any]) -> str:
        from .load.replicas import ReplicaFollower, local_replicas
        from .load.run import LoadPlan, run_locust

        report_dir = Path("reports") / time.strftime("demo-%Y%m%d-%H%M%S")
        plan = LoadPlan(self.workdir / "values.yaml", duration_s=15)
        run = run_locust(plan, ["--state-dir", str(self.state_dir)], report_dir,
                         ReplicaFollower(local_replicas(state["restUrl"])), quiet=True)
        if run.summary is None:
            return f"locust ended without a summary (exit {run.exit_code}); see {report_dir}"
        self.echo(run.summary.text())
        return f"{run.summary.verdict()}; report in {report_dir}/"


def run_demo(models_root: Path, values_path: Path) -> None:
    if not artifacts.list_versions(models_root):
        training.train_all(models_root)
    with tempfile.TemporaryDirectory(prefix="serving-demo-") as tmp:
        demo = Demo(models_root, values_path, Path(tmp))
        heading("1. Model versions (trained deterministically, checksummed)")
        for m in artifacts.list_versions(models_root):
            click.echo(f"  {m.version}  {m.estimator:<38} accuracy {m.metrics['accuracy']:.3f}  "
                       f"{m.description}")
        heading(f"2. Local stack from {values_path} (MLServer per replica behind the router)")
        try:
            state = demo.start_stack()
            heading("3. Live traffic: weighted split, shadow mirrored and compared")
            traffic = demo.show_split(state)
            heading("4a. Rollout of a failing candidate, straight to live traffic")
            bad = demo.rollout(state, "v3", "gradient boosting with a fault switch: 30% of its "
                               "requests fail", [{"setWeight": 20}, {"analysis": {}},
                                                 {"setWeight": 50}, {"analysis": {}}],
                               env={"SERVING_FAULT_ERROR_RATE": "0.3"})
            heading("4b. Rollout of a candidate that disagrees with stable (mirrored first)")
            naive = demo.rollout(state, "v4", "a naive majority-class baseline", None)
            heading("4c. Rollout of a healthy candidate (mirror, then 10%, then 50%)")
            good = demo.rollout(state, "v3", "gradient boosting, healthy", None)
            heading("5. Where things stand")
            final = demo.show_split(state, seconds=3)
            heading("6. Load test with locust (REST + gRPC, 100 req/s for 15s), gated on the SLOs")
            load = demo.load_test(state)
        finally:
            demo.stop_stack()
        heading("Summary")
        agreement = traffic["agreement"]
        click.echo(f"- traffic split by weight over {traffic['requests']} requests: "
                   f"{traffic['served']}; shadow agreed with the primary on "
                   f"{'n/a' if agreement is None else f'{agreement:.1%}'} of rows")
        for o in (bad, naive, good):
            extra = (f", first error to 0% canary traffic {o.first_error_to_zero_s:.1f}s"
                     if o.first_error_to_zero_s is not None else "")
            click.echo(f"- {o.candidate} ({o.description}): {o.phase} in {o.seconds:.0f}s; "
                       f"callers saw {o.failed}/{o.requests} failed{extra}")
            click.echo(f"    why: {o.reason[:300]}")
        click.echo(f"- afterwards: {final['served']} (stable now serves the promoted version)")
        click.echo(f"- load test: {load}")
        click.echo("Next: 'make test' runs the test suite; the README shows how to deploy the "
                   "same values to a cluster.")


@click.command()
@click.option("--models", "models_root", default="models", show_default=True,
              type=click.Path(path_type=Path))
@click.option("--values", "values_path", default="charts/seldon-model/values.yaml",
              show_default=True, type=click.Path(path_type=Path, exists=True))
def demo(models_root: Path, values_path: Path) -> None:
    """Run the local demo of the whole flow (about two minutes)."""
    os.environ.setdefault("PYTHONUNBUFFERED", "1")
    run_demo(models_root, values_path)
COMMANDS = [demo]
