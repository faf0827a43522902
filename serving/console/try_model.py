"""The console's "Try the model" panel as data: rows (hold-out rows, or an uploaded CSV) sent to
every predictor, pinned one at a time, and their answers side by side.

Requests go through the same door as any caller's (serving/client.py's REST client, with the
Seldon prefix) and are pinned the way the router documents: `x-seldon-predictor` plus the pin
token. A shadow the router does not let anyone pin (router.allowShadowPin off) is asked directly
at one of its live replicas on the local stack; on a cluster it cannot be reached and says so.
"""

from __future__ import annotations

import io
import os
from dataclasses import dataclass

import numpy as np
import pandas as pd

from .. import dataset
from ..client import InferenceFailed, RestClient
from ..errors import ServingError
from ..router.commands import stack_status
from ..router.stack import read_state
from ..spec import load_spec
from .config import ConsoleConfig

PIN_HEADER = "x-seldon-predictor"
PIN_TOKEN_HEADER = "x-serving-pin-token"
#: uploads larger than this are refused (the page keeps them in memory and sends them at once)
MAX_UPLOAD_BYTES = 256 * 1024
MAX_ROWS = 200
AGREE_COLUMN = "all agree"


class UploadProblem(ServingError):
    """An uploaded file the page cannot use; the message says why and what would work."""


def feature_names() -> list[str]:
    return dataset.load().feature_names


def holdout_rows(indices: list[int]) -> pd.DataFrame:
    """Hold-out rows (never used in training) with the features' names, indexed by position."""
    data = dataset.load()
    bad = [i for i in indices if not 0 <= i < len(data.x_test)]
    if bad:
        raise ServingError(f"hold-out rows go from 0 to {len(data.x_test) - 1}; not {bad}")
    frame = pd.DataFrame(data.x_test[indices], columns=data.feature_names,
                         index=[f"hold-out {i}" for i in indices])
    return frame


def holdout_truth(indices: list[int]) -> list[str]:
    data = dataset.load()
    return [data.class_names[int(data.y_test[i])] for i in indices]


def parse_upload(content: bytes, name: str) -> pd.DataFrame:
    """The 30 feature columns of an uploaded CSV, found by name (a header with the features'
    names, any order, extra columns refused) or, without a header, by position."""
    limit = f"{MAX_UPLOAD_BYTES // 1024} KB and {MAX_ROWS} rows"
    if len(content) > MAX_UPLOAD_BYTES:
        raise UploadProblem(f"{name} is {len(content) / 1024:.0f} KB; the limit is {limit}. "
                            "Send fewer rows (e.g. head -n 100)")
    if not content.strip():
        raise UploadProblem(f"{name} is empty; expected CSV rows of the 30 features")
    names = feature_names()
    try:
        text = content.decode("utf-8-sig")
    except UnicodeDecodeError:
        raise UploadProblem(f"{name} is not a text (UTF-8) CSV file") from None
    first = text.splitlines()[0].split(",")
    has_header = not all(_is_number(v) for v in first)
    try:
        frame = pd.read_csv(io.StringIO(text), header=0 if has_header else None,
                            skipinitialspace=True)
    except (pd.errors.ParserError, ValueError) as e:
        raise UploadProblem(f"{name} is not a CSV file pandas can read: {e}") from None
    if has_header:
        frame.columns = [str(c).strip() for c in frame.columns]
        missing = [c for c in names if c not in frame.columns]
        unknown = [c for c in frame.columns if c not in names]
        if missing or unknown:
            parts = []
            if missing:
                parts.append(f"missing {len(missing)} column(s): {', '.join(missing[:4])}"
                             + (" ..." if len(missing) > 4 else ""))
            if unknown:
                parts.append(f"unknown column(s): {', '.join(unknown[:4])}"
                             + (" ..." if len(unknown) > 4 else ""))
            raise UploadProblem(f"{name}: {'; '.join(parts)}. Use the 30 feature names as the "
                                "header (as in the downloaded hold-out rows), or no header and "
                                "30 numbers per row")
        frame = frame[names]
    elif frame.shape[1] != len(names):
        raise UploadProblem(f"{name} has {frame.shape[1]} columns and no header; the model "
                            f"takes {len(names)} numbers per row (or a header with the "
                            "features' names)")
    else:
        frame.columns = names
    if len(frame) > MAX_ROWS:
        raise UploadProblem(f"{name} has {len(frame)} rows; the limit is {limit}")
    for column in frame.columns:
        values = pd.to_numeric(frame[column], errors="coerce")
        bad = frame.index[values.isna() | ~np.isfinite(values.fillna(0))]
        if len(bad):
            raise UploadProblem(f"{name}: column {column!r} has a value that is not a finite "
                                f"number on data row {int(bad[0]) + 1} "
                                f"({frame[column].iloc[int(bad[0])]!r})")
        frame[column] = values.astype(np.float64)
    frame.index = [f"row {i + 1}" for i in range(len(frame))]
    return frame


def _is_number(text: str) -> bool:
    try:
        float(text)
    except ValueError:
        return False
    return True


@dataclass
class Door:
    """How to ask one predictor: the ingress with its pin, or (a shadow) a replica directly."""

    predictor: str
    version: str
    shadow: bool
    url: str
    headers: dict[str, str]
    direct_url: str | None = None

    @property
    def column(self) -> str:
        return f"{self.predictor} ({self.version})" + (" shadow" if self.shadow else "")


def doors(config: ConsoleConfig) -> list[Door]:
    """Every predictor running now, non-shadow first."""
    if config.kubernetes:
        from .now import read_now

        if not config.ingress:
            raise ServingError("to try the model on a cluster, start the console with "
                               "--ingress http://<istio-ingress>/seldon/<namespace>/<deployment>")
        pin = os.environ.get(load_spec(config.values_path).router.pin_token_env, "")
        return [Door(p.name, p.version, p.shadow, config.ingress,
                     {PIN_HEADER: p.name, PIN_TOKEN_HEADER: pin})
                for p in sorted(read_now(config).predictors, key=lambda p: p.shadow)]
    state = read_state(config.state_dir)
    status = stack_status(config.state_dir, timeout=3)
    out = []
    for p in sorted(status["predictors"], key=lambda p: p["shadow"]):
        live = [r["url"] for r in p["replicas"] if r["alive"]]
        out.append(Door(p["name"], p["version"], p["shadow"], str(state["seldonUrl"]),
                        {PIN_HEADER: p["name"], PIN_TOKEN_HEADER: str(state["pinToken"])},
                        live[0] if live and p["shadow"] else None))
    return out


def ask(door: Door, model: str, rows: np.ndarray) -> tuple[list[int], list[float], str]:
    """Labels, the probability of each label, and a note on how it was asked."""
    client = RestClient(door.url, headers=door.headers, timeout=10)
    try:
        try:
            answer = client.infer(model, rows)
        except InferenceFailed as e:
            if not (door.shadow and e.status == 403 and door.direct_url):
                raise
            # the router keeps the shadow's answers from callers: ask its replica directly
            client.close()
            client = RestClient(door.direct_url, timeout=10)
            answer = client.infer(model, rows)
            return _labels(answer.labels, answer.probabilities) + (
                "asked its replica directly (router.allowShadowPin is off)",)
        note = "pinned"
        if answer.predictor and answer.predictor != door.predictor:
            note = f"not pinned: answered by {answer.predictor}"
        return _labels(answer.labels, answer.probabilities) + (note,)
    except InferenceFailed as e:
        raise ServingError(f"{door.predictor} did not answer: {e.message}") from e
    except Exception as e:  # connection refused, timeouts: the stack went away
        if isinstance(e, ServingError):
            raise
        raise ServingError(f"{door.predictor} did not answer ({type(e).__name__}: {e})") from e
    finally:
        client.close()


def _labels(labels: np.ndarray, proba: np.ndarray | None) -> tuple[list[int], list[float]]:
    ints = [int(v) for v in labels]
    if proba is None:
        return ints, [float("nan")] * len(ints)
    return ints, [float(proba[i][label]) for i, label in enumerate(ints)]


@dataclass
class Answers:
    table: pd.DataFrame
    """One row per input row: each predictor's answer, and whether they all agree."""
    notes: dict[str, str]
    disagreements: int


def answers(config: ConsoleConfig, rows: pd.DataFrame) -> Answers:
    """Each running predictor's answer for each row, side by side."""
    model = (load_spec(config.values_path).model.name if config.kubernetes
             else str(read_state(config.state_dir)["model"]))
    classes = dataset.load().class_names
    x = rows.to_numpy(dtype=np.float64)
    table = pd.DataFrame(index=rows.index)
    notes: dict[str, str] = {}
    labels: list[list[int]] = []
    for door in doors(config):
        try:
            got, proba, note = ask(door, model, x)
        except ServingError as e:
            notes[door.column] = e.message
            table[door.column] = "no answer"
            continue
        notes[door.column] = note
        labels.append(got)
        table[door.column] = [f"{classes[v]} ({p:.2f})" if 0 <= v < len(classes) else str(v)
                              for v, p in zip(got, proba, strict=True)]
    agree = [len({answer[i] for answer in labels}) <= 1 for i in range(len(rows))]
    table[AGREE_COLUMN] = agree
    return Answers(table, notes, agree.count(False))


def as_csv(rows: pd.DataFrame, result: Answers) -> bytes:
    """The rows and the answers, for download."""
    return rows.join(result.table).to_csv(index_label="row").encode()
