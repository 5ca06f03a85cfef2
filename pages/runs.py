"""Runs page: compare saved runs, evaluate one on its validation split, download, activate or delete it."""

from __future__ import annotations

from pathlib import Path

import streamlit as st

from core import catalog
from core.config import CLASS_NAMES
from core.jobs import owner_label, source_version
from core.predict import Evaluation, evaluate
from core.runs import Run, RunStore
from ui import charts
from ui.navigation import run_through_entrypoint
from ui.resources import active_model, open_source, predictor, session_owner, set_session_model, training_source
from ui.status import clock

run_through_entrypoint()

# Why a listed run offers no model, by the status in its run.json.
NO_MODEL = {
    "running": "This run is still training: its model appears here when its first epoch ends.",
    "interrupted": "This run was interrupted (its process ended) before its first epoch ended: it saved no model.",
    "stopped": "This run was stopped before its first epoch ended: it saved no model to use, download or evaluate.",
}
GALLERY_MAX = 24
COLUMNS = 6
METRICS = {
    "val_accuracy": "validation accuracy",
    "val_loss": "validation loss",
    "accuracy": "training accuracy",
    "loss": "training loss",
}


@st.cache_data(show_spinner="Evaluating on the validation split…", max_entries=16)
def _evaluation(model: str, model_version: int, source: str, version: tuple, names: tuple[str, ...]) -> Evaluation:
    return evaluate(predictor(Path(model)), source, names)


def evaluation_of(run: Run, source: Path) -> Evaluation:
    """The run's model on its own validation photos, computed once per run and dataset version."""
    names = tuple(run.meta.get("validation_names", []))
    return _evaluation(str(run.model_path), _version(run.model_path), str(source), source_version(source), names)


@st.cache_data(show_spinner=False, max_entries=256)
def _overlay(model: str, model_version: int, source: str, version: tuple, name: str):
    from core.gradcam import explain

    return explain(predictor(Path(model)), open_source(Path(source)).read(name)).overlay


def _version(path: Path) -> int:
    return path.stat().st_mtime_ns


def table_ui(store: RunStore) -> list[str]:
    """Every saved run with its settings and results; returns their ids, newest first."""
    table = store.table()
    st.dataframe(
        table,
        hide_index=True,
        width="stretch",
        column_config={
            "best_val_accuracy": st.column_config.ProgressColumn("best val. accuracy", format="percent"),
            "learning_rate": st.column_config.NumberColumn("learning rate", format="%.0e"),
            "wall_time_s": st.column_config.NumberColumn("time (s)", format="%.0f"),
        },
    )
    return table.run.tolist()


def overlay_ui(store: RunStore, ids: list[str]) -> None:
    """One metric per epoch for the chosen runs, in one chart."""
    left, right = st.columns([3, 1])
    chosen = left.multiselect("Overlay the curves of", ids, default=ids[:3], key="runs_compare")
    metric = right.selectbox("Metric", list(METRICS), format_func=METRICS.get, key="runs_metric")
    if chosen:
        histories = {run.id: run.history for run in store.runs() if run.id in chosen}  # deleted meanwhile: left out
        st.vega_lite_chart(*charts.runs_overlay(histories, metric, METRICS[metric]), width="stretch")


def _confirm_delete(run_id: str) -> None:
    st.session_state["runs_deleting"] = run_id


def _delete(store: RunStore, run_id: str) -> None:
    try:
        store.delete(run_id)
        st.toast(f"Deleted {run_id}")
    except (KeyError, OSError):
        st.toast(f"{run_id} was already gone")
    st.session_state.pop("runs_deleting", None)


def _use(run_id: str) -> None:
    try:
        set_session_model(run_id)
    except KeyError:
        st.toast(f"{run_id} is no longer on this server")


def _ask_default(key: str) -> None:
    st.session_state["runs_default_asked"] = key


def _make_default(key: str) -> None:
    try:
        choice = catalog.set_server_default(key, by=session_owner())
        st.toast(f"{choice.name} is now the default model for everyone")
    except KeyError:
        st.toast(f"{key} is no longer on this server")
    st.session_state.pop("runs_default_asked", None)


def _cancel_default() -> None:
    st.session_state.pop("runs_default_asked", None)


def server_default_ui() -> None:
    """Which model every session gets until it picks its own, who made it so, and this session's own."""
    default = catalog.server_default()
    if default is None:
        return
    record = catalog.server_default_record()
    who = ""
    if record.get("model") == default.key and isinstance(record.get("set_at"), int | float):
        who = f" (made so by {owner_label(record.get('set_by'))} at {clock(record['set_at'])})"
    mine = active_model()
    yours = f" This session predicts with **{mine.name}**." if mine is not None else ""
    st.caption(f"Default model for everyone: **{default.name}**{who}.{yours}")


def confirm_default_ui(run: Run) -> None:
    """The default for everyone changes only after a confirmation that says so."""
    st.warning(
        f"Make **{run.id}** the default model for everyone? Every session of this server that has not picked its "
        "own model will predict with it, now and after a restart, until someone changes it here."
    )
    yes, no, _ = st.columns([2, 1, 3])
    yes.button(
        "Yes, make it the default for everyone",
        key="runs_make_default_confirm",
        type="primary",
        on_click=_make_default,
        args=(run.id,),
    )
    no.button("Cancel", key="runs_make_default_cancel", on_click=_cancel_default)


def actions_ui(store: RunStore, run: Run) -> None:
    """Use in this session, make the default for everyone (confirmed), download, delete (confirmed)."""
    c1, c2, c3, c4, _ = st.columns([3, 4, 4, 2, 2])
    active = active_model()
    if active is not None and active.key == run.id:
        c1.button("Used in this session", key="runs_use", disabled=True)
    else:
        c1.button("Use in this session", key="runs_use", on_click=_use, args=(run.id,))
    default = catalog.server_default()
    is_default = default is not None and default.key == run.id
    if is_default:
        c2.button("Default for everyone", key="runs_make_default", disabled=True)
    else:
        c2.button("Make default for everyone…", key="runs_make_default", on_click=_ask_default, args=(run.id,))
    c3.download_button(
        "Download model (.keras)",
        run.model_path.read_bytes,  # read only when clicked
        file_name=f"{run.id}.keras",
        mime="application/octet-stream",
        key="runs_download",
        on_click="ignore",
    )
    c4.button("Delete…", key="runs_delete", on_click=_confirm_delete, args=(run.id,))
    if st.session_state.get("runs_default_asked") == run.id and not is_default:
        confirm_default_ui(run)
    if st.session_state.get("runs_deleting") == run.id:
        fallback = " It is the default model for everyone: sessions go back to the shipped one." if is_default else ""
        st.warning(f"Delete **{run.id}** and its model for good?{fallback}")
        yes, no, _ = st.columns([1, 1, 4])
        yes.button("Yes, delete", key="runs_delete_confirm", type="primary", on_click=_delete, args=(store, run.id))
        no.button("Cancel", key="runs_delete_cancel", on_click=st.session_state.pop, args=("runs_deleting", None))


def evaluation_ui(run: Run) -> None:
    """Confusion matrix, per-class accuracy and mistakes, on the photos the run held out for validation."""
    source = training_source(run.meta)
    if source is None:
        name = run.meta.get("dataset", {}).get("source", "its dataset")
        st.info(f"This run was trained on {name}, which is not open here: choose it on the Dataset page to evaluate.")
        return
    result = evaluation_of(run, source)
    left, right = st.columns([1, 2])
    with left:
        st.markdown("**Confusion matrix**")
        st.vega_lite_chart(*charts.confusion(result.confusion), width="content")
    with right:
        cols = st.columns(3)
        cols[0].metric("Accuracy", f"{result.accuracy:.1%}", help=f"{result.n:,} validation photos of {source.name}")
        for col, name in zip(cols[1:], CLASS_NAMES, strict=True):
            value = result.per_class.get(name)
            col.metric(f"{name.capitalize()}s right", f"{value:.1%}" if value is not None else "—")
        st.caption(f"{result.n:,} validation photos of {source.name}; {result.skipped} could not be read.")
    misclassified_ui(run, source, result)


def misclassified_ui(run: Run, source: Path, result: Evaluation) -> None:
    """The most confident mistakes first, optionally with where the model looked."""
    frame = result.predictions.dropna(subset=["prob_dog"])
    wrong = frame[(frame.prob_dog >= 0.5).astype(int) != frame.true]
    wrong = wrong.assign(confidence=(wrong.prob_dog - 0.5).abs()).sort_values("confidence", ascending=False)
    st.markdown(f"**Misclassified photos ({len(wrong):,})**, most confident mistakes first")
    if wrong.empty:
        return
    shown = wrong.head(GALLERY_MAX)
    reader = open_source(source)
    photos = [reader.read(name) for name in shown.file]
    if st.toggle("Show where the model looked", key="runs_gradcam"):
        from core.gradcam import LEGEND, legend

        model_key = (str(run.model_path), _version(run.model_path), str(source), source_version(source))
        try:
            photos = [_overlay(*model_key, name) for name in shown.file]
            st.image(legend(512, 14), width=512)
            st.caption(f"Grad-CAM, last convolutional layer: {LEGEND}.")
        except Exception as err:  # an optional view must not take the gallery down with it
            st.warning(f"Could not show where the model looked: {type(err).__name__}: {err}")
    columns = st.columns(COLUMNS)
    for i, (row, photo) in enumerate(zip(shown.itertuples(), photos, strict=True)):
        with columns[i % COLUMNS]:
            st.image(photo, width="stretch")
            st.caption(f"{Path(row.file).name}: a {CLASS_NAMES[int(row.true)]}, P(dog) = {row.prob_dog:.2f}")


def odd_folders_ui() -> None:
    """Folders in the runs folder that are not listed, and why: a symlink, a run still being written."""
    odd = catalog.odd_run_folders()
    if odd:
        names = "; ".join(f"`{name.replace('`', '')}`: {why}" for name, why in odd)
        st.warning(f"Not listed as runs: {names}.", icon=":material/folder_off:")


def forget_gone_runs(ids: list[str]) -> None:
    # A run deleted by another session (or by hand) must not stay selected in this one's widgets.
    if st.session_state.get("runs_selected") not in (None, *ids):
        st.session_state.pop("runs_selected")
    if any(run_id not in ids for run_id in st.session_state.get("runs_compare", [])):
        st.session_state.pop("runs_compare")


st.title("Runs")
store = RunStore()
odd_folders_ui()
ids = table_ui(store) if store.runs() else []
if not ids:
    st.info("No saved runs yet: train one on the Train page.")
    st.stop()
forget_gone_runs(ids)
overlay_ui(store, ids)
st.divider()
server_default_ui()
run_id = st.selectbox("Inspect a run", ids, key="runs_selected")
try:
    run = store.get(run_id)
except KeyError:
    st.warning(f"{run_id} is no longer on this server: it was deleted since this page was drawn.")
    st.stop()
meta = run.meta
if not meta:
    st.warning(f"{run_id}: its run.json cannot be read (half-written, or damaged): nothing to show.")
    st.stop()
best = meta.get("metrics", {}).get("best_val_accuracy")
st.caption(
    f"{meta.get('config', {}).get('preset')} preset · {meta.get('n_images', 0):,} photos of "
    f"{meta.get('dataset', {}).get('source')} · best validation accuracy "
    f"{f'{best:.1%}' if best is not None else '—'} · status {run.status}"
)
if not run.has_model:
    st.warning(NO_MODEL.get(run.status, NO_MODEL["stopped"]))
    st.stop()
actions_ui(store, run)
if st.toggle("Evaluate on its validation split", key="runs_evaluate", persist_state="session"):
    evaluation_ui(run)
