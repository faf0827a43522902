"""The routing table: which predictor a request goes to, and whether it is mirrored.

A `Routes` snapshot is immutable; changing weights builds a new one and swaps a single reference,
so a request in flight always sees one consistent table (no lost or half-routed requests).
"""

from __future__ import annotations

import bisect
import hashlib
import random
from dataclasses import dataclass, field

from ..errors import SpecError
from ..spec import Predictor, Spec, seldon_rule_violations


@dataclass(frozen=True)
class Routes:
    """Weights of the non-shadow predictors and the shadow's mirror percentage."""

    weights: dict[str, int]
    shadow: str | None = None
    mirror_percent: int = 0
    generation: int = 0
    _names: list[str] = field(default_factory=list, repr=False, compare=False)
    _cumulative: list[float] = field(default_factory=list, repr=False, compare=False)

    def __post_init__(self) -> None:
        live = [(n, w) for n, w in self.weights.items() if w > 0]
        total = float(sum(w for _, w in live)) or 1.0
        running = 0.0
        for name, weight in live:
            running += weight / total
            self._names.append(name)
            self._cumulative.append(running)

    @classmethod
    def from_spec(cls, spec: Spec, generation: int = 0) -> Routes:
        shadow = spec.shadow
        return cls(
            weights=spec.effective_weights(),
            shadow=shadow.name if shadow else None,
            mirror_percent=shadow.traffic if shadow else 0,
            generation=generation,
        )

    def pick(self, sticky_key: str | None = None) -> str:
        """A predictor by weight; with a sticky key, the same key always gets the same one."""
        if not self._names:
            raise SpecError("no predictor has traffic > 0", status_code=503)
        point = _hash_unit(sticky_key) if sticky_key else random.random()
        index = bisect.bisect_right(self._cumulative, point)
        return self._names[min(index, len(self._names) - 1)]

    def should_mirror(self) -> bool:
        return self.shadow is not None and random.random() * 100 < self.mirror_percent

    def as_dict(self) -> dict[str, object]:
        return {
            "weights": dict(self.weights),
            "shadow": self.shadow,
            "mirrorPercent": self.mirror_percent,
            "generation": self.generation,
        }


def _hash_unit(key: str) -> float:
    """A stable point in [0, 1) for a caller id (not Python's per-process randomised hash)."""
    digest = hashlib.blake2b(key.encode(), digest_size=8).digest()
    return int.from_bytes(digest, "big") / 2**64


def updated_predictors(
    predictors: list[Predictor],
    weights: dict[str, int] | None,
    mirror_percent: int | None,
) -> list[Predictor]:
    """Apply a traffic change to the predictor list, validated with the operator's rules."""
    names = {p.name for p in predictors}
    shadow = next((p for p in predictors if p.shadow), None)
    errors = []
    for name, weight in (weights or {}).items():
        if name not in names:
            errors.append(f"weights.{name}: no such predictor; predictors are {sorted(names)}")
        elif shadow is not None and name == shadow.name:
            errors.append(f"weights.{name}: is the shadow; set its share with mirrorPercent")
        elif not isinstance(weight, int) or isinstance(weight, bool) or not 0 <= weight <= 100:
            errors.append(f"weights.{name}: must be an integer from 0 to 100, got {weight!r}")
    if mirror_percent is not None:
        if shadow is None:
            errors.append("mirrorPercent: there is no shadow predictor to mirror to")
        elif not isinstance(mirror_percent, int) or not 0 <= mirror_percent <= 100:
            errors.append(
                f"mirrorPercent: must be an integer from 0 to 100, got {mirror_percent!r}"
            )
    if errors:
        raise SpecError("traffic change refused:\n  " + "\n  ".join(errors))
    changed = []
    for p in predictors:
        update: dict[str, int] = {}
        if weights and p.name in weights:
            update["traffic"] = weights[p.name]
        if p.shadow and mirror_percent is not None:
            update["traffic"] = mirror_percent
        changed.append(p.model_copy(update=update))
    violations = seldon_rule_violations(changed)
    if violations:
        raise SpecError("traffic change refused:\n  " + "\n  ".join(violations))
    return changed
