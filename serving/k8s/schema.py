"""Files the chart derives from serving/spec.py, so the chart and the local stack cannot drift:

- values.schema.json: the JSON Schema Helm validates values with, generated from the pydantic model
  (types, bounds, enums, unknown keys refused, field docstrings as descriptions);
- files/predictor-defaults.json: the per-predictor defaults, because Helm merges defaults into maps
  but not into the items of a list (templates/_helpers.tpl applies them).

`make manifests` writes both; a test fails when they are stale.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

from pydantic import BaseModel

from ..spec import Predictor, Spec

GENERATED = "generated from serving/spec.py by 'make manifests'; do not edit"


def _drop_titles(node: Any) -> Any:
    # pydantic titles repeat the key names; descriptions carry the meaning.
    if isinstance(node, dict):
        return {k: _drop_titles(v) for k, v in node.items() if k != "title" or isinstance(v, dict)}
    if isinstance(node, list):
        return [_drop_titles(v) for v in node]
    return node


def values_schema() -> dict[str, Any]:
    schema = _drop_titles(Spec.model_json_schema(by_alias=True, mode="validation"))
    return {
        "$schema": "https://json-schema.org/draft/2020-12/schema",
        "$comment": GENERATED,
        **schema,
    }


def predictor_defaults() -> dict[str, Any]:
    """{'fields': leaf defaults, 'sections': {section: its defaults}} for one predictor."""
    fields: dict[str, Any] = {}
    sections: dict[str, Any] = {}
    for name, info in Predictor.model_fields.items():
        if info.is_required():
            continue
        default = info.get_default(call_default_factory=True)
        key = info.alias or name
        if isinstance(default, BaseModel):
            sections[key] = default.model_dump(mode="json", by_alias=True)
        else:
            fields[key] = default.value if hasattr(default, "value") else default
    return {"comment": GENERATED, "fields": fields, "sections": sections}


def _dump(payload: dict[str, Any]) -> str:
    return json.dumps(payload, indent=2, sort_keys=False) + "\n"


def generated_files(chart_dir: Path) -> dict[Path, str]:
    return {
        chart_dir / "values.schema.json": _dump(values_schema()),
        chart_dir / "files" / "predictor-defaults.json": _dump(predictor_defaults()),
    }
