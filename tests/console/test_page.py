"""The page's logic through Streamlit's own testing API (AppTest runs app.py in-process, widgets
clicked by key) against the real local stack."""

from __future__ import annotations

import shutil
from pathlib import Path

import pytest
from streamlit.testing.v1 import AppTest

from serving.console import try_model
from serving.console.commands import APP
from serving.console.config import ConsoleConfig
from serving.rollout.state import FileStateStore

from ..router.conftest import Stack
from .conftest import NAMES_ROW, config_of


def page(config: ConsoleConfig, monkeypatch: pytest.MonkeyPatch) -> AppTest:
    for key, value in config.to_env().items():
        monkeypatch.setenv(key, value)
    at = AppTest.from_file(str(APP), default_timeout=30)
    at.run()
    assert not at.exception, [e.value for e in at.exception]
    return at


def test_now_shows_predictors_weights_replicas_and_agreement(
        at_baseline: Stack, monkeypatch: pytest.MonkeyPatch) -> None:
    at = page(config_of(at_baseline), monkeypatch)
    table = at.table[0].value
    assert table[["predictor", "version", "traffic", "live replicas"]].values.tolist() == [
        ["stable", "v1", "100%", "1/1"], ["shadow", "v4", "mirrors 100%", "1/1"]]
    assert not at.error
    assert at.metric[0].label == "Shadow shadow (v4) agrees with stable"
    assert at.metric[0].value.endswith("%") or at.metric[0].value == "n/a"
    assert "No rollout yet." in [m.value for m in at.markdown]


def test_unreachable_stack_says_what_to_run_and_the_page_recovers(
        at_baseline: Stack, monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> None:
    state_dir = tmp_path / "state"
    at = page(config_of(at_baseline, state_dir=state_dir), monkeypatch)
    errors = [e.value for e in at.error]
    assert errors and all("'serving up'" in e for e in errors), errors
    assert not at.table
    # the stack comes (here: its state file appears); the next refresh shows it
    state_dir.mkdir()
    shutil.copy(at_baseline.state_dir / "stack.json", state_dir / "stack.json")
    at.run()
    assert not at.error, [e.value for e in at.error]
    assert at.table[0].value["predictor"].tolist() == ["stable", "shadow"]


def test_a_button_asks_for_confirmation_and_the_token(
        at_baseline: Stack, monkeypatch: pytest.MonkeyPatch) -> None:
    at = page(config_of(at_baseline), monkeypatch)
    assert at.button(key="ask-abort").disabled and at.button(key="ask-pause").disabled
    at.selectbox(key="version").select("v2")
    at.button(key="ask-start").click().run()
    assert "Start rolling out v2?" in at.warning[0].value
    at.button(key="cancel").click().run()
    assert not at.warning and FileStateStore(at_baseline.state_dir).load() is None
    at.button(key="ask-start").click().run()
    at.text_input(key="token").input("not-the-token")
    at.button(key="confirm").click().run()
    assert "wrong admin token" in at.error[0].value
    assert FileStateStore(at_baseline.state_dir).load() is None  # nothing was done


def test_try_the_model_with_hold_out_rows(at_baseline: Stack,
                                          monkeypatch: pytest.MonkeyPatch) -> None:
    at = page(config_of(at_baseline), monkeypatch)
    at.number_input(key="count").set_value(20)
    at.button(key="ask").click().run()
    table = at.dataframe[-1].value
    assert list(table.columns) == ["actual", "stable (v1)", "shadow (v4) shadow",
                                   try_model.AGREE_COLUMN]
    assert len(table) == 20
    summary = next(m.value for m in at.markdown if "rows with different answers" in m.value)
    assert summary.startswith(f"**{(~table[try_model.AGREE_COLUMN]).sum()}** of 20")
    assert at.get("download_button")


def test_an_upload_with_wrong_columns_gets_a_clear_message(
        at_baseline: Stack, monkeypatch: pytest.MonkeyPatch) -> None:
    at = page(config_of(at_baseline), monkeypatch)
    at.radio(key="source").set_value("Upload a CSV").run()
    bad = b"height,weight\n1,2\n"
    at.file_uploader(key="upload").upload("people.csv", bad, "text/csv").run()
    message = at.error[0].value
    assert "people.csv: missing 30 column(s): mean radius" in message
    assert "unknown column(s): height, weight" in message
    good = (NAMES_ROW + "\n").encode()
    at.file_uploader(key="upload").upload("rows.csv", good, "text/csv").run()
    assert not at.error
    at.button(key="ask").click().run()
    assert len(at.dataframe[-1].value) == 1
