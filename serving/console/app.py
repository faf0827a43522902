"""The console page (Streamlit): Now, Rollout, Try the model. Started by `serving console`.

Only layout lives here; what is shown and what the buttons do are plain functions in now.py,
rollout_panel.py and try_model.py (the CLI's own functions underneath)."""

from __future__ import annotations

from typing import Any

import pandas as pd
import streamlit as st

from serving.console import now as now_data
from serving.console import rollout_panel, try_model
from serving.console.config import ConsoleConfig, from_env
from serving.errors import ServingError
from serving.rollout.state import Phase

config = from_env()
FEATURES = try_model.feature_names()
st.set_page_config(page_title="Model rollout console", layout="wide")


def unreachable(e: ServingError) -> None:
    st.error(f"Cannot reach {config.where}: {e.message}")
    st.caption(f"This page tries again every {config.refresh_seconds:g} s on its own.")


@st.cache_resource
def live_metrics(c: ConsoleConfig) -> now_data.LiveMetrics:
    return now_data.LiveMetrics(c)


def fmt(value: float | None, pattern: str) -> str:
    return "-" if value is None else pattern.format(value)


def charts(metrics: now_data.LiveMetrics) -> None:
    cols = st.columns(3)
    latest = metrics.latest_at()
    for col, (field, title, scale) in zip(cols, [
            ("requests_per_second", "requests/s", 1.0), ("p99_ms", "p99 latency, ms", 1.0),
            ("error_rate", "errors, % of requests", 100.0)], strict=True):
        series = metrics.series(field)
        # x: seconds before the latest reading, which reads better than clock times
        frame = pd.DataFrame({name: pd.Series({round(t - latest): None if v is None
                                               else v * scale for t, v in points},
                                              dtype=float)
                              for name, points in series.items()})
        frame.index.name = "seconds ago"
        col.caption(title)
        if frame.empty:
            col.caption("(waiting for a second reading)")
        else:
            col.line_chart(frame, height=160)


@st.fragment(run_every=config.refresh_seconds)
def now_panel() -> None:
    st.header("Now")
    try:
        view = now_data.read_now(config)
    except ServingError as e:
        unreachable(e)
        return
    metrics: now_data.LiveMetrics | None = None
    recent: dict[str, now_data.Figures] = {}
    try:
        metrics = live_metrics(config)
        metrics.refresh()
        recent = metrics.recent()
    except ServingError as e:  # what runs is known; only the figures are missing
        st.warning(f"No figures: {e.message}")
    rows = []
    for p in view.predictors:
        f = recent.get(p.name) or now_data.Figures(0.0, None, None, None)
        rows.append({
            "predictor": p.name, "version": p.version, "traffic": p.traffic_label,
            "live replicas": p.live,
            "requests/s": fmt(f.requests_per_second if recent else None, "{:.1f}"),
            "p50 ms": fmt(f.p50_ms, "{:.1f}"), "p99 ms": fmt(f.p99_ms, "{:.1f}"),
            "errors": fmt(f.error_rate, "{:.1%}"),
        })
    st.caption(f"SeldonDeployment {view.deployment} on {config.where}; figures over the last "
               f"{now_data.RECENT_SECONDS:.0f} s")
    st.table(pd.DataFrame(rows), hide_index=True)
    for p in view.predictors:
        for problem in p.problems:
            st.warning(problem)
    if metrics is not None:
        charts(metrics)
    shadow = view.shadow
    if shadow is None:
        st.caption("No shadow runs now.")
        return
    rate = "n/a" if shadow.agreement is None else f"{shadow.agreement:.1%}"
    st.metric(f"Shadow {shadow.predictor} ({shadow.version}) agrees with stable", rate,
              help=f"over {shadow.rows_compared} rows compared" + (
                  f"; {shadow.note}" if shadow.note else ""))
    st.caption(f"{shadow.rows_compared} rows compared" + (f"; {shadow.note}" if shadow.note
                                                          else ""))
    if shadow.disagreements:
        st.caption("Latest disagreements")
        st.table(pd.DataFrame([{
            "compared with": d.predictor, "their answer": d.primary_answer,
            "shadow's answer": d.shadow_answer,
            "input row": "(not recorded)" if d.input_row is None
            else ", ".join(f"{v:g}" for v in d.input_row[:5]) + f", ... ({len(d.input_row)})"}
            for d in shadow.disagreements]), hide_index=True)
        inputs = [d.input_row for d in shadow.disagreements if d.input_row is not None]
        if inputs and all(len(r) == len(FEATURES) for r in inputs):
            with st.expander("Their input rows in full"):
                st.dataframe(pd.DataFrame(inputs, columns=FEATURES), key="disagreement-rows")


ACTION_QUESTIONS = {
    "start": "Start rolling out {version}? Its traffic then goes up step by step, by the plan.",
    "pause": "Pause the rollout? Traffic stays as it is.",
    "resume": "Resume the rollout?",
    "promote": "Promote the candidate now? It becomes the stable version; the remaining "
               "steps are skipped.",
    "abort": "Abort the rollout? All traffic goes back to the stable version.",
}


def allowed(action: str, phase: Phase | None) -> bool:
    if action == "start":
        return phase is None or phase.terminal
    if phase is None or phase.terminal:
        return False
    return {"pause": phase is Phase.PROGRESSING, "resume": phase is Phase.PAUSED}.get(action,
                                                                                     True)


@st.fragment(run_every=config.refresh_seconds)
def rollout_section() -> None:
    st.header("Rollout")
    try:
        view = rollout_panel.read_rollout(config)
        versions = rollout_panel.candidate_versions(config)
    except ServingError as e:
        unreachable(e)
        return
    phase = view.status.phase if view else None
    if view is None:
        st.write("No rollout yet.")
    else:
        st.subheader(view.headline)
        st.write(f"**Step:** {view.step}  \n**Traffic:** {view.traffic}  \n"
                 f"**Failed checks:** {view.status.failed_checks} of "
                 f"{view.plan.analysis.failure_limit} allowed  \n**Latest:** "
                 f"{view.status.message}")
        if view.checks:
            st.caption("Latest analysis: how the candidate compares with stable")
            st.table(pd.DataFrame(view.checks), hide_index=True)
    left, *buttons = st.columns([2, 1, 1, 1, 1, 1])
    version = left.selectbox("Version to roll out", versions, key="version",
                             disabled=not allowed("start", phase))
    for col, action in zip(buttons, rollout_panel.ACTIONS, strict=True):
        if col.button(action.capitalize(), key=f"ask-{action}",
                      disabled=not allowed(action, phase), use_container_width=True):
            st.session_state["pending"] = {"action": action, "version": version}
            st.session_state.pop("result", None)
    confirm()
    result: tuple[bool, list[str]] | None = st.session_state.get("result")
    if result is not None:
        ok, lines = result
        (st.success if ok else st.error)("  \n".join(lines))
    if view is not None and view.history:
        with st.expander("What happened, newest first", expanded=True):
            st.table(pd.DataFrame(view.history), hide_index=True)


def confirmed() -> None:
    """The confirm button's callback (runs before the rerun it causes)."""
    pending = st.session_state.pop("pending", None)
    token = st.session_state.pop("token", "")
    if not pending:
        return
    try:
        lines = rollout_panel.act(config, pending["action"], token, pending["version"])
        st.session_state["result"] = (True, lines)
    except ServingError as e:
        st.session_state["result"] = (False, [e.message])


def cancelled() -> None:
    st.session_state.pop("pending", None)
    st.session_state.pop("token", None)


def confirm() -> None:
    pending: dict[str, Any] | None = st.session_state.get("pending")
    if not pending:
        return
    action = pending["action"]
    with st.container(border=True):
        st.warning(ACTION_QUESTIONS[action].format(version=pending["version"]))
        st.text_input("Admin token", type="password", key="token",
                      help="locally: adminToken in the stack's state file "
                           f"({config.state_dir}/stack.json)")
        yes, no = st.columns(2)
        yes.button(f"Yes, {action}", key="confirm", type="primary", on_click=confirmed)
        no.button("Cancel", key="cancel", on_click=cancelled)


def highlight(row: pd.Series) -> list[str]:
    colour = "" if row[try_model.AGREE_COLUMN] else "background-color: #ffd9d9"
    return [colour] * len(row)


def try_section() -> None:
    st.header("Try the model")
    source = st.radio("Rows", ["Hold-out rows", "Upload a CSV"], horizontal=True, key="source")
    rows: pd.DataFrame | None = None
    truth: list[str] | None = None
    if source == "Hold-out rows":
        a, b = st.columns(2)
        first = int(a.number_input("First hold-out row", 0, 142, 0, key="first"))
        count = int(b.number_input("How many rows", 1, 50, 10, key="count"))
        indices = [i for i in range(first, first + count) if i < 143]
        rows, truth = try_model.holdout_rows(indices), try_model.holdout_truth(indices)
    else:
        upload = st.file_uploader(
            f"CSV of the 30 features (header with their names, or none), at most "
            f"{try_model.MAX_UPLOAD_BYTES // 1024} KB and {try_model.MAX_ROWS} rows",
            type=["csv"], key="upload")
        if upload is not None:
            try:
                rows = try_model.parse_upload(upload.getvalue(), upload.name)
            except ServingError as e:
                st.error(e.message)
    if rows is None:
        return
    with st.expander(f"The {len(rows)} input rows"):
        st.dataframe(rows, key="inputs")
    if st.button("Ask every predictor", key="ask", type="primary"):
        try:
            got = try_model.answers(config, rows)
        except ServingError as e:
            unreachable(e)
            return
        if truth is not None:
            got.table.insert(0, "actual", truth)
        st.session_state["answers"] = (rows, got)
    saved = st.session_state.get("answers")
    if saved is None:
        return
    rows, got = saved
    st.write(f"**{got.disagreements}** of {len(got.table)} rows with different answers "
             "(highlighted).")
    st.dataframe(got.table.style.apply(highlight, axis=1), key="answers-table")
    st.caption("  \n".join(f"{name}: {note}" for name, note in got.notes.items()))
    st.download_button("Download as CSV", try_model.as_csv(rows, got), "answers.csv",
                       "text/csv", key="download")


st.title("Model rollout console")
now_panel()
rollout_section()
try_section()
