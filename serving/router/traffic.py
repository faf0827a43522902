"""Traffic: the weights of the non-shadow predictors and the shadow's mirror percentage.

A `Routes` snapshot is immutable; a change builds a new one, validated with the operator's rules,
and the control process pushes it to nginx as one table (lua/router.lua picks by it per request).
"""

from __future__ import annotations

from dataclasses import dataclass

from ..errors import SpecError
from ..spec import Predictor, Spec, seldon_rule_violations


@dataclass(frozen=True)
class Routes:
    """Weights of the non-shadow predictors and the shadow's mirror percentage."""

    weights: dict[str, int]
    shadow: str | None = None
    mirror_percent: int = 0
    generation: int = 0

    @classmethod
    def from_spec(cls, spec: Spec, generation: int = 0) -> Routes:
        shadow = spec.shadow
        return cls(
            weights=spec.effective_weights(),
            shadow=shadow.name if shadow else None,
            mirror_percent=shadow.traffic if shadow else 0,
            generation=generation,
        )

    def as_dict(self) -> dict[str, object]:
        return {
            "weights": dict(self.weights),
            "shadow": self.shadow,
            "mirrorPercent": self.mirror_percent,
            "generation": self.generation,
        }


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
