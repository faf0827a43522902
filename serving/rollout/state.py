"""Rollout status: phase, step, weights, failed checks, and a history of what happened and why.

Persisted after every transition, locally in a JSON file replaced atomically (write + rename,
mode 0600), on Kubernetes in an annotation of the SeldonDeployment. A file that cannot be read back
(empty, truncated, not JSON, an unknown phase, wrong types) is a CorruptState naming the file and
the way out ('serving rollout abort' moves it aside). A `revision` counter makes concurrent
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

from pydantic import BaseModel, Field, ValidationError

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


class CorruptState(ServingError):
    """The persisted status cannot be read back; `text` is what was found (for salvage)."""

    def __init__(self, path: Path, problem: str, text: str = "") -> None:
        super().__init__(
            f"the rollout state {path} is corrupt: {problem}. Run 'serving rollout abort' to move "
            f"it aside (to {path.name}.corrupt-<time>) and give all traffic back to the stable "
            "predictor, then start again"
        )
        self.path, self.problem, self.text = path, problem, text


def _describe(e: ValidationError) -> str:
    problems = []
    for err in e.errors(include_url=False)[:3]:
        if err["type"] == "json_invalid":
            problems.append(f"not valid JSON ({err['msg'].removeprefix('Invalid JSON: ')})")
        else:
            where = ".".join(str(part) for part in err["loc"]) or "(top level)"
            problems.append(f"{where}: {err['msg']}")
    more = e.error_count() - len(problems)
    return "; ".join(problems) + (f" (and {more} more)" if more > 0 else "")


def parse_status(text: str, path: Path) -> RolloutStatus:
    """A RolloutStatus from its JSON, or CorruptState saying what is wrong with it."""
    if not text.strip():
        raise CorruptState(path, "it is empty", text)
    try:
        return RolloutStatus.model_validate_json(text)
    except ValidationError as e:
        raise CorruptState(path, _describe(e), text) from None


class FileStateStore:
    """`<state_dir>/rollout.json` (mode 0600), replaced atomically; a lock file serialises
    writers."""

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
            text = self.path.read_text()
        except FileNotFoundError:
            return None
        except (OSError, UnicodeDecodeError) as e:
            raise CorruptState(self.path, f"it cannot be read ({e})") from None
        return parse_status(text, self.path)

    def save(self, status: RolloutStatus) -> RolloutStatus:
        with self.locked():
            current = self.load()
            if current is not None and current.revision != status.revision:
                raise StaleState(status.revision, current.revision)
            saved = status.model_copy(update={"revision": status.revision + 1})
            tmp = self.path.with_suffix(".tmp")
            fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
            os.fchmod(fd, 0o600)  # also when a tmp file was left behind with other permissions
            with os.fdopen(fd, "w") as f:
                f.write(saved.model_dump_json(indent=2))
                f.flush()
                os.fsync(f.fileno())
            os.replace(tmp, self.path)  # atomic: readers see the old or the new file, never half
            return saved

    def move_aside(self, now: float | None = None) -> Path:
        """Rename the state file to rollout.json.corrupt-<time> (kept for a post-mortem)."""
        stamp = time.strftime("%Y%m%d-%H%M%S", time.localtime(now or time.time()))
        with self.locked():
            target = self.path.with_name(f"{self.path.name}.corrupt-{stamp}")
            n = 1
            while target.exists():
                n += 1
                target = self.path.with_name(f"{self.path.name}.corrupt-{stamp}-{n}")
            os.replace(self.path, target)
            return target

    def clear(self) -> None:
        with self.locked():
            self.path.unlink(missing_ok=True)


def dumps(status: RolloutStatus) -> str:
    return json.dumps(status.model_dump(mode="json"), indent=2)
