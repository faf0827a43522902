"""Rollout status: phase, step, weights, failed checks, and a history of what happened and why.

Persisted after every transition, locally in a JSON file replaced atomically (write + rename),
on Kubernetes in an annotation of the SeldonDeployment. A `revision` counter makes concurrent
writers (the controller and an SRE's `pause`) fail loudly instead of overwriting each other.
"""

from __future__ import annotations

import contextlib
import fcntl
import json
import os
import time
from collections.abc import Iterator
from enum import StrEnum
from pathlib import Path
from typing import Any, Protocol

from pydantic import BaseModel, Field

from ..errors import ServingError

HISTORY_LIMIT = 200


class Phase(StrEnum):
    PROGRESSING = "Progressing"  # walking the steps, analysis running
    PAUSED = "Paused"  # held: by `serving rollout pause` or a pause-until-resume step
    PROMOTED = "Promoted"  # terminal: the candidate is the stable predictor
    ROLLED_BACK = "RolledBack"  # terminal: analysis failed `failureLimit` times
    ABORTED = "Aborted"  # terminal: an SRE aborted; stable has all traffic

    @property
    def terminal(self) -> bool:
        return self in (Phase.PROMOTED, Phase.ROLLED_BACK, Phase.ABORTED)


class Event(BaseModel):
    at: float
    kind: str  # started, step, verdict, failed-check, paused, resumed, promoted, rolled-back...
    message: str
    data: dict[str, Any] = Field(default_factory=dict)


class RolloutStatus(BaseModel):
    candidate: str
    """The candidate model version."""
    stable_version: str
    """The stable version when the rollout started (what a rollback returns to)."""
    stable_predictor: str
    stable_spec: dict[str, Any]
    """The stable predictor as it ran at the start (values form): what rollback restores."""
    candidate_predictor: str
    candidate_env: dict[str, str] = Field(default_factory=dict)
    original_shadow: dict[str, Any] | None = None
    """The shadow predictor before the rollout; displaced while the candidate is mirrored."""
    phase: Phase = Phase.PROGRESSING
    step_index: int = 0
    step_started_at: float
    window_started_at: float
    """Start of the analysis window: the last change of traffic."""
    canary_weight: int = 0
    mirror_percent: int = 0
    failed_checks: int = 0
    message: str = ""
    last_analysis: dict[str, Any] | None = None
    history: list[Event] = Field(default_factory=list)
    revision: int = 0

    def record(self, kind: str, message: str, now: float | None = None,
               **data: Any) -> None:
        self.history.append(Event(at=now or time.time(), kind=kind, message=message, data=data))
        del self.history[:-HISTORY_LIMIT]
        self.message = message


class StateStore(Protocol):
    def load(self) -> RolloutStatus | None: ...

    def save(self, status: RolloutStatus) -> RolloutStatus:
        """Persist; raises StaleState when someone else saved since `status` was loaded."""
        ...


class StaleState(ServingError):
    def __init__(self, expected: int, found: int) -> None:
        super().__init__(f"rollout state changed meanwhile (revision {found}, expected "
                         f"{expected}); re-read and retry", status_code=409)


class FileStateStore:
    """`<state_dir>/rollout.json`, replaced atomically; a lock file serialises writers."""

    def __init__(self, state_dir: Path) -> None:
        self.path = state_dir / "rollout.json"
        self.lock_path = state_dir / "rollout.lock"

    @contextlib.contextmanager
    def locked(self) -> Iterator[None]:
        self.path.parent.mkdir(parents=True, exist_ok=True)
        with self.lock_path.open("a") as lock:
            fcntl.flock(lock, fcntl.LOCK_EX)
            try:
                yield
            finally:
                fcntl.flock(lock, fcntl.LOCK_UN)

    def load(self) -> RolloutStatus | None:
        try:
            return RolloutStatus.model_validate_json(self.path.read_text())
        except FileNotFoundError:
            return None

    def save(self, status: RolloutStatus) -> RolloutStatus:
        with self.locked():
            current = self.load()
            if current is not None and current.revision != status.revision:
                raise StaleState(status.revision, current.revision)
            saved = status.model_copy(update={"revision": status.revision + 1})
            tmp = self.path.with_suffix(".tmp")
            with tmp.open("w") as f:
                f.write(saved.model_dump_json(indent=2))
                f.flush()
                os.fsync(f.fileno())
            os.replace(tmp, self.path)  # atomic: readers see the old or the new file, never half
            return saved

    def clear(self) -> None:
        with self.locked():
            self.path.unlink(missing_ok=True)


def dumps(status: RolloutStatus) -> str:
    return json.dumps(status.model_dump(mode="json"), indent=2)
