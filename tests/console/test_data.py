"""The console's data functions: uploads, disagreements, and what they read from a real stack."""

from __future__ import annotations

import time
from pathlib import Path

import pytest

from serving import dataset
from serving.console import now, rollout_panel, try_model
from serving.errors import ServingError
from serving.rollout.state import FileStateStore, Phase

from ..prometheus import PROMETHEUS
from ..prometheus import prometheus as real_prometheus
from ..router.conftest import Stack
from .conftest import config_of


def csv_of(rows: list[list[float]], header: list[str] | None = None) -> bytes:
    lines = ([",".join(header)] if header else []) + [",".join(map(str, r)) for r in rows]
    return ("\n".join(lines) + "\n").encode()


ROWS = dataset.load().x_test[:3].tolist()
NAMES = dataset.load().feature_names


def test_upload_by_name_in_any_order_or_by_position() -> None:
    reordered = list(reversed(NAMES))
    by_name = try_model.parse_upload(csv_of([r[::-1] for r in ROWS], reordered), "a.csv")
    by_position = try_model.parse_upload(csv_of(ROWS), "b.csv")
    assert list(by_name.columns) == NAMES
    assert by_name.to_numpy().tolist() == by_position.to_numpy().tolist() == ROWS


@pytest.mark.parametrize(("content", "expected"), [
    (csv_of(ROWS, ["radius"] + NAMES[1:]), "missing 1 column(s): mean radius; unknown "
                                            "column(s): radius"),
    (csv_of([r[:29] for r in ROWS]), "has 29 columns and no header; the model takes 30"),
    (csv_of([ROWS[0], ["x"] + ROWS[1][1:]], NAMES), "column 'mean radius' has a value that is "
                                                     "not a finite number on data row 2 ('x')"),
    (csv_of([[float("nan")] + ROWS[0][1:]], NAMES), "not a finite number on data row 1"),
    (b"", "is empty"),
    (b"\xff\xfe\x00garbage", "not a text (UTF-8) CSV"),
    (csv_of(ROWS * 70), "has 210 rows; the limit is 256 KB and 200 rows"),
    (b"1," * (try_model.MAX_UPLOAD_BYTES // 2 + 1), "the limit is 256 KB"),
])
def test_bad_uploads_get_a_message_naming_the_problem(content: bytes, expected: str) -> None:
    with pytest.raises(try_model.UploadProblem) as e:
        try_model.parse_upload(content, "rows.csv")
    assert expected in e.value.message and "rows.csv" in e.value.message


def test_a_router_disagreement_shows_both_answers() -> None:
    d = now.disagreement({"primary": "stable", "detail": "row 3: primary {'predict': [0], "
                          "'predict_proba': [0.93, 0.07]} vs shadow {'predict': [1], "
                          "'predict_proba': [0.37, 0.63]}"})
    assert (d.predictor, d.primary_answer, d.shadow_answer, d.input_row) == (
        "stable", "malignant (p=0.93)", "benign (p=0.63)", None)
    # the comparator's examples carry the input row by input name
    with_row = now.disagreement({"primary": "stable", "input": {"input-0": [1, 2.5]},
                                 "detail": "x", "primaryAnswer": {"predict": 1},
                                 "shadowAnswer": {"predict": [0]}})
    assert (with_row.input_row, with_row.primary_answer, with_row.shadow_answer) == (
        [1.0, 2.5], "benign", "malignant")


def test_now_reads_what_serving_status_reads(at_baseline: Stack) -> None:
    view = now.read_now(config_of(at_baseline))
    assert [(p.name, p.version, p.traffic_label, p.live) for p in view.predictors] == [
        ("stable", "v1", "100%", "1/1"), ("shadow", "v4", "mirrors 100%", "1/1")]
    status = at_baseline.status()
    assert view.shadow is not None
    assert view.shadow.rows_compared <= status["shadow"]["agreement"]["rowsCompared"]
    deadline = time.monotonic() + 30
    while not (shadow := now.read_now(config_of(at_baseline)).shadow).disagreements:  # type: ignore[union-attr]
        assert time.monotonic() < deadline, "v4 as the shadow never disagreed"
        time.sleep(0.5)
    # from the comparator (the stack's state file names it): the input row and both answers
    latest = shadow.disagreements[0]  # type: ignore[union-attr]
    assert latest.input_row is not None and len(latest.input_row) == 30, latest
    assert (latest.primary_answer.split()[0], latest.shadow_answer.split()[0]) == (
        "malignant", "benign")  # v4 always answers the majority class
    assert latest.input_row in dataset.load().x_test.tolist()  # a row callers sent


def test_live_metrics_count_the_load(at_baseline: Stack) -> None:
    metrics = now.LiveMetrics(config_of(at_baseline))
    metrics.refresh()
    time.sleep(1.5)
    metrics.refresh()
    recent = metrics.recent()
    stable = recent["stable"]
    assert stable.requests_per_second > 1, recent  # the background load
    assert stable.p50_ms is not None and 0 < stable.p50_ms <= stable.p99_ms  # type: ignore[operator]
    assert stable.error_rate == 0.0
    assert [v for _, v in metrics.series("requests_per_second")["stable"]][-1] > 1


def test_no_stack_says_what_to_run(at_baseline: Stack) -> None:
    config = config_of(at_baseline, state_dir=at_baseline.state_dir.parent / "nothing-here")
    with pytest.raises(ServingError, match="serving up"):
        now.read_now(config)
    with pytest.raises(ServingError, match="serving up"):
        now.LiveMetrics(config).refresh()


def test_a_wrong_token_changes_nothing(at_baseline: Stack) -> None:
    config = config_of(at_baseline)
    started = time.monotonic()
    with pytest.raises(ServingError, match="wrong admin token; it is adminToken in"):
        rollout_panel.act(config, "start", "guess", "v2")
    assert time.monotonic() - started >= rollout_panel.WRONG_TOKEN_DELAY
    with pytest.raises(ServingError, match="enter the admin token"):
        rollout_panel.act(config, "abort", " ")
    assert FileStateStore(at_baseline.state_dir).load() is None
    assert [p["name"] for p in at_baseline.status()["predictors"]] == ["stable", "shadow"]


def test_candidates_are_the_versions_with_digests_but_stable(at_baseline: Stack) -> None:
    assert rollout_panel.candidate_versions(config_of(at_baseline)) == ["v2", "v3", "v4"]


def test_answers_pin_each_predictor(at_baseline: Stack) -> None:
    rows = try_model.holdout_rows(list(range(40)))
    got = try_model.answers(config_of(at_baseline), rows)
    assert list(got.table.columns) == ["stable (v1)", "shadow (v4) shadow", try_model.AGREE_COLUMN]
    assert got.notes["stable (v1)"] == "pinned"
    assert "directly (router.allowShadowPin is off)" in got.notes["shadow (v4) shadow"]
    # v4 always answers the majority class: it agrees exactly where stable says benign
    stable = got.table["stable (v1)"].str.startswith("benign")
    assert (got.table[try_model.AGREE_COLUMN] == stable).all()
    assert 0 < got.disagreements < 40
    csv = try_model.as_csv(rows, got).decode().splitlines()
    assert csv[0].startswith("row,mean radius,") and csv[0].endswith(",all agree")
    assert len(csv) == 41


def test_pause_and_resume_from_the_page(at_baseline: Stack) -> None:
    """Start runs the controller in the background; pause holds the rollout (the controller
    stops); resume, as 'serving rollout resume', starts the controller again and it walks on to
    the plan's pause-until-resume step."""
    config = config_of(at_baseline)
    token = at_baseline.state["adminToken"]
    store = FileStateStore(at_baseline.state_dir)

    def wait_for(phase: Phase, step: int) -> None:
        deadline = time.monotonic() + 60
        while (s := store.load()) is None or (s.phase, s.step_index) != (phase, step):
            assert time.monotonic() < deadline, s
            time.sleep(0.2)

    rollout_panel.act(config, "start", token, "v2")
    wait_for(Phase.PROGRESSING, 1)  # at 20%, in the 5 s pause
    assert rollout_panel.act(config, "pause", token) == ["Paused: paused by an operator"]
    deadline = time.monotonic() + 15
    while rollout_panel.controller_running(config) is not None:  # it stops when paused
        assert time.monotonic() < deadline
        time.sleep(0.2)
    assert store.load().step_index == 1  # type: ignore[union-attr]
    with pytest.raises(ServingError, match="the rollout is already paused"):
        rollout_panel.act(config, "pause", token)
    lines = rollout_panel.act(config, "resume", token)
    assert "drives it in the background" in lines[-1]
    wait_for(Phase.PAUSED, 3)  # walked on to 50% and the pause-until-resume step
    view = rollout_panel.read_rollout(config)
    assert view is not None and view.headline.startswith("Rollout of v2 is paused")
    assert [e["what"] for e in view.history][:4] == ["Paused", "Moved on", "Moved on",
                                                     "Resumed"]
    rollout_panel.act(config, "abort", token)
    running = [(p["name"], p["version"], p["traffic"]) for p in at_baseline.status()["predictors"]]
    assert running == [("stable", "v1", 100), ("shadow", "v4", 100)]




@pytest.mark.skipif(PROMETHEUS is None, reason="the 'prometheus' server is not installed "
                    "(Debian package 'prometheus'; .ci/run installs it)")
def test_live_metrics_through_prometheus(at_baseline: Stack, tmp_path: Path) -> None:
    """With --prometheus (as on a cluster) the figures come from PromQL over the same names."""
    target = at_baseline.state["restUrl"].removeprefix("http://")
    with real_prometheus(tmp_path, {"router": target}) as url:
        metrics = now.LiveMetrics(config_of(at_baseline, prometheus=url))
        deadline = time.monotonic() + 60
        while True:  # until Prometheus has two scrapes of the router
            try:
                metrics.refresh()
                if (stable := metrics.recent().get("stable")) and stable.requests_per_second > 1:
                    break
            except ServingError:
                pass  # not up yet
            assert time.monotonic() < deadline, "no rate of the stable predictor from Prometheus"
            time.sleep(0.5)
        assert stable.p99_ms is not None and stable.p99_ms > 0
        assert stable.error_rate == 0.0
        assert metrics.series("requests_per_second")["stable"]
