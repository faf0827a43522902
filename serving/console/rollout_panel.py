"""The console's "Rollout" panel as data and actions: the rollout in words, and the buttons.

Every button calls the function its CLI verb calls (serving/rollout/commands.py): start is
`serving rollout start --detach` followed by `serving rollout run` in the background (the
controller drives the plan as from a terminal), pause/resume/promote are `apply_change`, abort is
`abort_rollout`. Each needs the admin token: locally the stack's (in its state file, readable by
its owner only), on a cluster the token `serving console` printed when it started.
"""

from __future__ import annotations

import hmac
import json
import os
import subprocess
import sys
import threading
import time
from dataclasses import dataclass
from pathlib import Path

from ..errors import ServingError
from ..rollout.commands import (
    Target,
    abort_rollout,
    apply_change,
    build_target,
    format_status,
    start_detached,
)
from ..rollout.plan import RolloutPlan
from ..rollout.state import Event, Phase, RolloutStatus
from ..router.stack import pid_alive, read_state
from ..server import committed_digests
from ..spec import load_spec, stable_predictor
from .config import TOKEN_ENV, ConsoleConfig

ACTIONS = ("start", "pause", "resume", "promote", "abort")
#: a wrong token is answered after this long, one at a time (as the router's admin API does)
WRONG_TOKEN_DELAY = 1.0
_wrong_tokens = threading.Lock()
#: controllers started by this process, reaped once they end (no zombies left behind)
_children: list[subprocess.Popen[bytes]] = []

PHASE_WORDS = {
    Phase.PROGRESSING: "in progress: the candidate's traffic goes up step by step while it is "
                       "checked against stable",
    Phase.PAUSED: "paused: traffic stays as it is until someone resumes",
    Phase.PROMOTED: "finished: the candidate is now the stable version",
    Phase.ROLLED_BACK: "rolled back: the candidate failed its checks and stable has all traffic",
    Phase.ABORTED: "aborted by an operator: stable has all traffic",
}
EVENT_WORDS = {"started": "Started", "step": "Moved on", "failed-check": "Check failed",
               "paused": "Paused", "resumed": "Resumed", "promoted": "Promoted",
               "rolled-back": "Rolled back", "aborted": "Aborted"}
VERDICT_WORDS = {"successful": "passed", "failed": "failed", "inconclusive": "not sure yet",
                 "error": "could not be read"}


@dataclass
class RolloutView:
    status: RolloutStatus
    plan: RolloutPlan

    @property
    def headline(self) -> str:
        return f"Rollout of {self.status.candidate} is {PHASE_WORDS[self.status.phase]}."

    @property
    def step(self) -> str:
        s, steps = self.status, self.plan.steps
        if s.phase.terminal:
            return f"ended after step {min(s.step_index, len(steps))} of {len(steps)}"
        if s.step_index >= len(steps):
            return f"all {len(steps)} steps done"
        return f"step {s.step_index + 1} of {len(steps)}: {steps[s.step_index].describe()}"

    @property
    def traffic(self) -> str:
        s = self.status
        if s.phase is Phase.PROMOTED:
            return f"{s.stable_predictor} ({s.candidate}) 100%; the candidate predictor removed"
        if s.phase.terminal:
            return (f"{s.stable_predictor} ({s.stable_version}) 100%; the candidate "
                    "predictor removed")
        if s.mirror_percent and not s.canary_weight:
            return (f"{s.stable_predictor} answers everyone; {s.candidate} sees a copy of "
                    f"{s.mirror_percent}% of requests (its answers are only compared)")
        return (f"{s.stable_predictor} ({s.stable_version}) {100 - s.canary_weight}%, "
                f"{s.candidate_predictor} ({s.candidate}) {s.canary_weight}%")

    @property
    def checks(self) -> list[dict[str, str]]:
        """The last analysis, one line per check, with its evidence."""
        last = self.status.last_analysis
        if not last:
            return []
        return [{"check": c["name"], "result": VERDICT_WORDS.get(c["verdict"], c["verdict"]),
                 "evidence": c["detail"]} for c in last["checks"]]

    @property
    def history(self) -> list[dict[str, str]]:
        """Newest first: when, what, and the evidence of failed checks."""
        return [event_row(e) for e in reversed(self.status.history)]

    def as_text(self) -> str:
        """What `serving rollout status` prints for it."""
        return format_status(self.status, self.plan)


def event_row(e: Event) -> dict[str, str]:
    evidence = ""
    analysis = e.data.get("analysis")
    if isinstance(analysis, dict):
        evidence = "; ".join(f"{c['name']} {VERDICT_WORDS.get(c['verdict'], c['verdict'])}: "
                             f"{c['detail']}" for c in analysis.get("checks", []))
    return {"when": time.strftime("%H:%M:%S", time.localtime(e.at)),
            "what": EVENT_WORDS.get(e.kind, e.kind), "message": e.message, "evidence": evidence}


def target(config: ConsoleConfig) -> Target:
    return build_target(config.values_path, config.state_dir, config.kubernetes, config.context,
                        config.prometheus)


def read_rollout(config: ConsoleConfig) -> RolloutView | None:
    """The current (or last) rollout, or None when none was ever started."""
    t = target(config)
    status = t.store.load()
    return None if status is None else RolloutView(status, t.plan)


def candidate_versions(config: ConsoleConfig) -> list[str]:
    """Versions with a recorded artifact digest (the only ones the runtime serves: the spec's,
    over the committed values' as the local stack takes them), but the stable one (found as
    `serving rollout start` finds it)."""
    stable = stable_predictor(target(config).backend.get_predictors()).version
    digests = {**committed_digests(), **load_spec(config.values_path).model.artifacts}
    return sorted(v for v in digests if "/" not in v and v != stable)


def check_token(config: ConsoleConfig, token: str) -> None:
    """The admin token, or ServingError after a delay (a page must not be a fast oracle)."""
    if config.kubernetes:
        expected = os.environ.get(TOKEN_ENV, "")
        where = "the token 'serving console --kubernetes' printed when it started"
    else:
        expected = str(read_state(config.state_dir).get("adminToken") or "")
        where = f"adminToken in {config.state_dir / 'stack.json'}"
    if expected and hmac.compare_digest(token.strip().encode(), expected.encode()):
        return
    with _wrong_tokens:
        time.sleep(WRONG_TOKEN_DELAY)
    if not token.strip():
        raise ServingError(f"enter the admin token ({where})")
    raise ServingError(f"wrong admin token; it is {where}")


def act(config: ConsoleConfig, action: str, token: str, version: str | None = None) -> list[str]:
    """Do what `serving rollout <action>` does; the lines to show the person who asked."""
    if action not in ACTIONS:
        raise ServingError(f"unknown action {action!r}; expected one of {', '.join(ACTIONS)}")
    check_token(config, token)
    if action == "abort":
        return abort_rollout(config.values_path, config.state_dir, config.kubernetes,
                             config.context, config.prometheus)
    t = target(config)
    if action == "start":
        if not version:
            raise ServingError("choose the version to roll out")
        status = start_detached(t, version)
        return [status.message, start_controller(config)]
    status = apply_change(t, action)
    lines = [f"{status.phase}: {status.message}"]
    if action == "resume":
        lines.append(start_controller(config))
    return lines


# -- the controller in the background: `serving rollout run` --------------------------------

def controller_file(config: ConsoleConfig) -> Path:
    return config.state_dir / "console-controller.json"


def controller_running(config: ConsoleConfig) -> int | None:
    """The pid of the `serving rollout run` this console started, if it still runs."""
    _children[:] = [c for c in _children if c.poll() is None]
    try:
        record = json.loads(controller_file(config).read_text())
        pid = int(record["pid"])
    except (OSError, ValueError, KeyError, TypeError):
        return None
    if any(c.pid == pid for c in _children):  # ours, still running (maybe not exec'd yet)
        return pid
    return pid if pid_alive(pid) and _cmdline(pid) == record.get("cmdline") else None


def _cmdline(pid: int) -> str | None:
    try:
        return Path(f"/proc/{pid}/cmdline").read_bytes().decode(errors="replace")
    except OSError:
        return None


def start_controller(config: ConsoleConfig) -> str:
    """Start `serving rollout run` for this target unless the one started before still runs.
    It is a session of its own: the rollout goes on when the console stops, as from a
    terminal."""
    if (pid := controller_running(config)) is not None:
        return f"the controller (pid {pid}) is already driving it"
    config.state_dir.mkdir(parents=True, exist_ok=True)
    log = config.state_dir / "console-controller.log"
    command = [sys.executable, "-m", "serving.cli", "rollout", "run", *config.rollout_args]
    env = {k: v for k, v in os.environ.items() if k != TOKEN_ENV}
    with log.open("ab") as out:
        process = subprocess.Popen(command, stdout=out, stderr=subprocess.STDOUT, env=env,
                                   stdin=subprocess.DEVNULL, start_new_session=True)
    _children.append(process)
    # what /proc/<pid>/cmdline holds for it: a reused pid will not match
    record = {"pid": process.pid, "cmdline": "\0".join(command) + "\0", "log": str(log)}
    controller_file(config).write_text(json.dumps(record))
    return (f"the controller ('serving rollout run', pid {process.pid}) drives it in the "
            f"background; its log: {log}")
