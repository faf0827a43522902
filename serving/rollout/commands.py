"""`serving rollout ...`: start, run, status, history, pause, resume, promote, abort.

Thin wrappers: each builds the pieces for the chosen target (the local stack, or a cluster with
Prometheus) and calls the controller or edits the persisted status.
"""

from __future__ import annotations

import json
import time
from dataclasses import dataclass
from pathlib import Path

import click

from ..cli_common import DEFAULT_STATE_DIR, DEFAULT_VALUES, friendly_errors
from ..errors import ServingError
from ..spec import Predictor, load_spec, stable_predictor
from .backends import TrafficBackend
from .controller import Controller, desired_predictors, resume
from .metrics_source import MetricsSource, PrometheusSource, RouterMetricsSource
from .plan import RolloutPlan
from .state import CorruptState, FileStateStore, Phase, RolloutStatus, StateStore, dumps


@dataclass
class Target:
    store: StateStore
    backend: TrafficBackend
    metrics: MetricsSource
    plan: RolloutPlan


def build_target(values_path: str, state_dir: Path, kubernetes: bool, context: str | None,
                 prometheus: str | None) -> Target:
    spec = load_spec(values_path)
    if kubernetes:
        from ..k8s.rollout_backend import AnnotationStateStore, KubernetesBackend

        if not prometheus:
            raise ServingError("--prometheus URL is required with --kubernetes (analysis reads "
                               "the Seldon executor metrics from Prometheus)")
        backend = KubernetesBackend(values_path, context=context)
        return Target(AnnotationStateStore(backend), backend,
                      PrometheusSource(prometheus, spec.deployment.name,
                                       spec.deployment.namespace), spec.rollout)
    from ..router.stack import read_state
    from .backends import LocalRouterBackend

    state = read_state(state_dir)
    metrics: MetricsSource = (PrometheusSource(prometheus, spec.deployment.name) if prometheus
                              else RouterMetricsSource(state["restUrl"] + "/metrics",
                                                       spec.deployment.name))
    return Target(FileStateStore(state_dir), LocalRouterBackend(state["restUrl"],
                                                                state["adminToken"]),
                  metrics, spec.rollout)


target_options = [
    click.option("--values", "values_path", default=DEFAULT_VALUES, show_default=True,
                 help="Deployment spec holding the rollout plan (values `rollout:`)."),
    click.option("--state-dir", default=DEFAULT_STATE_DIR, show_default=True,
                 type=click.Path(path_type=Path), help="Local stack state (local target)."),
    click.option("--kubernetes", is_flag=True, help="Roll out on the cluster instead."),
    click.option("--context", default=None, help="kubeconfig context (with --kubernetes)."),
    click.option("--prometheus", default=None, help="Prometheus base URL for metrics."),
]


def with_target(fn):  # type: ignore[no-untyped-def]
    for option in reversed(target_options):
        fn = option(fn)
    return fn


def _load(target: Target) -> RolloutStatus:
    status = target.store.load()
    if status is None:
        raise ServingError("no rollout found; start one with 'serving rollout start VERSION'")
    return status


def begin(target: Target, version: str, env: dict[str, str] | None = None) -> RolloutStatus:
    """Record a new rollout of `version` (the controller then drives it)."""
    existing = target.store.load()
    if existing is not None and not existing.phase.terminal:
        raise ServingError(f"a rollout of {existing.candidate} is {existing.phase}; finish it "
                           "with 'serving rollout promote' or 'abort' first")
    predictors = target.backend.get_predictors()
    stable = stable_predictor(predictors)
    if stable.version == version:
        raise ServingError(f"{version} is already the stable version")
    shadow = next((p for p in predictors if p.shadow
                   and p.name != target.plan.candidate_predictor), None)
    now = time.time()
    status = RolloutStatus(
        candidate=version, stable_version=stable.version, stable_predictor=stable.name,
        stable_spec=stable.model_dump(mode="json", by_alias=True),
        candidate_predictor=target.plan.candidate_predictor, candidate_env=dict(env or {}),
        original_shadow=shadow.model_dump(mode="json", by_alias=True) if shadow else None,
        step_started_at=now, window_started_at=now,
        revision=existing.revision if existing else 0)
    status.record("started", f"rollout of {version} started (stable {stable.name} runs "
                  f"{stable.version}); {len(target.plan.steps)} steps: "
                  + ", ".join(s.describe() for s in target.plan.steps), now)
    return target.store.save(status)


@click.group()
def rollout() -> None:
    """Progressive delivery of a candidate model version, with automated analysis."""


@rollout.command()
@click.argument("version")
@click.option("--env", "env_pairs", multiple=True,
              help="Environment of the candidate's model server, K=V (e.g. fault switches).")
@click.option("--detach", is_flag=True, help="Only start; drive it later with 'rollout run'.")
@with_target
@friendly_errors
def start(version: str, env_pairs: tuple[str, ...], detach: bool, values_path: str,
          state_dir: Path, kubernetes: bool, context: str | None,
          prometheus: str | None) -> None:
    """Start rolling out model VERSION as the candidate, then drive it to the end."""
    target = build_target(values_path, state_dir, kubernetes, context, prometheus)
    env = {}
    for pair in env_pairs:
        key, sep, value = pair.partition("=")
        if not sep:
            raise ServingError(f"--env {pair!r}: expected KEY=VALUE")
        env[key] = value
    if detach:
        click.echo(start_detached(target, version, env).message)
        return
    click.echo(begin(target, version, env).message)
    _drive(target)


def start_detached(target: Target, version: str, env: dict[str, str] | None = None
                   ) -> RolloutStatus:
    """`serving rollout start --detach`: record the rollout and apply its first state; the
    controller (`serving rollout run`) then drives it."""
    status = begin(target, version, env)
    target.backend.apply(desired_predictors(status, target.plan))
    return status


def _drive(target: Target) -> None:
    final = Controller(target.store, target.backend, target.metrics, target.plan,
                       echo=click.echo).run(stop_when_paused=True)
    click.echo(f"rollout {final.phase}: {final.message}")
    if final.phase is Phase.ROLLED_BACK:
        raise SystemExit(4)


@rollout.command()
@with_target
@friendly_errors
def run(values_path: str, state_dir: Path, kubernetes: bool, context: str | None,
        prometheus: str | None) -> None:
    """Drive the current rollout (after --detach, a resume, or a controller crash)."""
    target = build_target(values_path, state_dir, kubernetes, context, prometheus)
    status = _load(target)
    if status.phase.terminal:
        # Still make the deployment match: an earlier apply may have failed half-way.
        target.backend.apply(desired_predictors(status, target.plan))
        click.echo(f"the rollout already ended ({status.phase}); the deployment matches it")
        return
    _drive(target)


def format_status(s: RolloutStatus, plan: RolloutPlan) -> str:
    step = (plan.steps[s.step_index].describe() if s.step_index < len(plan.steps)
            else "(after the last step)")
    lines = [
        f"rollout of {s.candidate} (stable {s.stable_predictor} was {s.stable_version}): "
        f"{s.phase}",
        f"  step        {min(s.step_index + 1, len(plan.steps))}/{len(plan.steps)}: {step}",
        f"  traffic     {s.candidate_predictor} {s.canary_weight}%"
        + (f", mirrored {s.mirror_percent}%" if s.mirror_percent else ""),
        f"  failed      {s.failed_checks}/{plan.analysis.failure_limit} checks",
        f"  message     {s.message}",
    ]
    if s.last_analysis:
        lines.append(f"  analysis    {s.last_analysis['verdict']} over "
                     f"{s.last_analysis['windowSeconds']}s:")
        for c in s.last_analysis["checks"]:
            lines.append(f"    {c['name']:<10} {c['verdict']:<13} {c['detail']}")
    return "\n".join(lines)


@rollout.command()
@click.option("--json", "as_json", is_flag=True)
@with_target
@friendly_errors
def status(as_json: bool, values_path: str, state_dir: Path, kubernetes: bool,
           context: str | None, prometheus: str | None) -> None:
    """Phase, step, weights, failed checks and the last analysis with its evidence."""
    target = build_target(values_path, state_dir, kubernetes, context, prometheus)
    s = _load(target)
    click.echo(dumps(s) if as_json else format_status(s, target.plan))


@rollout.command()
@click.option("--json", "as_json", is_flag=True)
@with_target
@friendly_errors
def history(as_json: bool, values_path: str, state_dir: Path, kubernetes: bool,
            context: str | None, prometheus: str | None) -> None:
    """Every transition and failed check, with timestamps."""
    s = _load(build_target(values_path, state_dir, kubernetes, context, prometheus))
    if as_json:
        click.echo(json.dumps([e.model_dump(mode="json") for e in s.history], indent=2))
        return
    for e in s.history:
        click.echo(f"{time.strftime('%Y-%m-%d %H:%M:%S', time.localtime(e.at))}  "
                   f"{e.kind:<13} {e.message}")


def apply_change(target: Target, op: str) -> RolloutStatus:
    s = _load(target)
    now = time.time()
    if s.phase.terminal:
        raise ServingError(f"the rollout already ended ({s.phase}); start a new one, or "
                           "'serving rollout run' to re-apply its end state")
    if op == "pause":
        if s.phase is Phase.PAUSED:
            raise ServingError("the rollout is already paused")
        s.phase = Phase.PAUSED
        s.record("paused", "paused by an operator", now)
    elif op == "resume":
        s = resume(s, target.plan, now)
    elif op == "promote":
        s.phase = Phase.PROMOTED
        s.canary_weight, s.mirror_percent = 0, 0
        s.record("promoted", f"promoted {s.candidate} by an operator (remaining steps skipped)",
                 now)
    elif op == "abort":
        s.phase = Phase.ABORTED
        s.canary_weight, s.mirror_percent = 0, 0
        s.record("aborted", f"aborted by an operator: all traffic back to {s.stable_version}",
                 now)
    saved = target.store.save(s)
    target.backend.apply(desired_predictors(saved, target.plan))  # takes effect now, controller or not
    return saved


def _simple(change: str, help_text: str) -> click.Command:
    @with_target
    @friendly_errors
    def command(values_path: str, state_dir: Path, kubernetes: bool, context: str | None,
                prometheus: str | None) -> None:
        s = apply_change(build_target(values_path, state_dir, kubernetes, context, prometheus), change)
        click.echo(f"{s.phase}: {s.message}")

    return click.command(name=change, help=help_text)(command)


rollout.add_command(_simple("pause", "Hold the rollout at its current step."))
rollout.add_command(_simple("resume", "Continue a paused rollout."))
rollout.add_command(_simple("promote", "Skip the remaining steps: the candidate becomes stable."))


def salvaged(text: str) -> tuple[Predictor, Predictor | None] | None:
    """From a corrupt state file, the stable predictor and the shadow it ran with before the
    rollout, when those parts are still intact."""
    try:
        data = json.loads(text)
        stable = Predictor.model_validate(data["stable_spec"])
        shadow = data.get("original_shadow")
        return stable, Predictor.model_validate(shadow) if shadow else None
    except (ValueError, TypeError, KeyError, AttributeError):  # pydantic's errors are ValueErrors
        return None


def _stable_again(corrupt: CorruptState, backend: TrafficBackend,
                  plan: RolloutPlan) -> tuple[list[Predictor], str] | None:
    """What to run after aborting a rollout whose state is unreadable, and where that came from."""
    kept = salvaged(corrupt.text)
    if kept is not None:
        stable, shadow = kept
        return ([stable.model_copy(update={"traffic": 100})] + ([shadow] if shadow else []),
                "the stable predictor recorded in the file")
    others = [p for p in backend.get_predictors() if p.name != plan.candidate_predictor]
    if not any(not p.shadow for p in others):
        return None
    stable = stable_predictor(others)
    return ([stable.model_copy(update={"traffic": 100})] + [p for p in others if p.shadow],
            f"the running stable predictor (the candidate {plan.candidate_predictor!r} removed)")


def abort_corrupt(store: FileStateStore, corrupt: CorruptState, backend: TrafficBackend | None,
                  plan: RolloutPlan, no_backend: str = "") -> list[str]:
    """`abort` on a state file that cannot be read: give the stable predictor all traffic if
    that can be worked out, and move the file aside so rollouts can start again."""
    lines = [f"the rollout state {corrupt.path} was corrupt: {corrupt.problem}"]
    if backend is None:
        lines.append(f"traffic not changed: {no_backend}")
    else:
        try:
            desired = _stable_again(corrupt, backend, plan)
            if desired is None:
                lines.append("traffic not changed: no running predictor other than the "
                             f"candidate {plan.candidate_predictor!r} to give it to; check "
                             "'serving status'")
            else:
                predictors, source = desired
                backend.apply(predictors)
                lines.append(f"all traffic back to {predictors[0].name} "
                             f"({predictors[0].version}), from {source}: "
                             + ", ".join(f"{p.name} {p.version}"
                                         + (f" mirrors {p.traffic}%" if p.shadow
                                            else f" {p.traffic}%") for p in predictors))
        except ServingError as e:
            lines.append(f"traffic not changed: {e.message}; check 'serving status' and move "
                         "traffic back to the stable predictor by hand")
    lines.append(f"moved the corrupt file to {store.move_aside()}; start a new rollout with "
                 "'serving rollout start VERSION'")
    return lines


def abort_rollout(values_path: str, state_dir: Path, kubernetes: bool, context: str | None,
                  prometheus: str | None) -> list[str]:
    """`serving rollout abort`: all traffic back to stable, candidate removed; a corrupt state
    file is moved aside. Returns the lines to show."""
    try:
        target = build_target(values_path, state_dir, kubernetes, context, prometheus)
    except ServingError as e:
        if kubernetes:
            raise
        # No local stack (or no values): no traffic to move, but a corrupt state file must
        # still not block the next rollout.
        store = FileStateStore(state_dir)
        try:
            store.load()
        except CorruptState as corrupt:
            return abort_corrupt(store, corrupt, None, RolloutPlan(), no_backend=e.message)
        raise
    try:
        s = apply_change(target, "abort")
    except CorruptState as corrupt:
        if not isinstance(target.store, FileStateStore):
            raise
        return abort_corrupt(target.store, corrupt, target.backend, target.plan)
    return [f"{s.phase}: {s.message}"]


@rollout.command()
@with_target
@friendly_errors
def abort(values_path: str, state_dir: Path, kubernetes: bool, context: str | None,
          prometheus: str | None) -> None:
    """Stop: all traffic back to stable, candidate removed (a corrupt state file is moved aside)."""
    click.echo("\n".join(abort_rollout(values_path, state_dir, kubernetes, context, prometheus)))


COMMANDS: list[click.Command] = [rollout]
