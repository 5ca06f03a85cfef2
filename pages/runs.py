"""Runs page: compare saved runs with the shipped model, and evaluate any model on any labeled dataset."""

from __future__ import annotations

from pathlib import Path

import pandas as pd
import streamlit as st

from core import config, registry
from core.config import CLASS_NAMES
from core.data import dataset_version
from core.gradcam import LEGEND, explain, legend
from core.jobs import owner_label
from core.metrics import held_out, percent
from core.predict import Evaluation
from core.registry import ModelChoice
from core.runs import Run, RunStore, model_history, model_meta, odd_run_folders, summary_row
from core.uploads import dataset_candidates
from ui import charts, review
from ui.evaluation import evaluation_of, model_version, side_by_side_ui
from ui.exports import export_downloads_ui
from ui.navigation import run_through_entrypoint
from ui.resources import (
    active_dataset,
    active_model,
    open_source,
    predictor,
    session_owner,
    set_session_model,
    training_source,
)
from ui.status import accuracy_text, clock, duration, plural

run_through_entrypoint()

# Why a listed run offers no model, by the status in its run.json.
NO_MODEL = {
    "running": "This run is still training: its model appears here when its first epoch ends.",
    "interrupted": "This run was interrupted (its process ended) before its first epoch ended: it saved no model.",
    "stopped": "This run was stopped before its first epoch ended: it saved no model to use, download or evaluate.",
}
GALLERY_MAX = 24
COLUMNS = 6
SHIPPED = "Shipped default"
HELD_OUT = "held-out"  # the dataset option: the photos a model's training held out
METRICS = {
    "val_accuracy": "validation accuracy",
    "val_loss": "validation loss",
    "accuracy": "training accuracy",
    "loss": "training loss",
}


@st.cache_data(show_spinner=False, max_entries=256)
def _overlay(model: str, model_mtime: int, source: str, version: str, name: str):
    return explain(predictor(Path(model)), open_source(Path(source)).read(name)).overlay


def table_ui(store: RunStore) -> None:
    """The shipped model and every saved run: epochs done, accuracy with its 95% interval, settings."""
    rows = [summary_row(SHIPPED, model_meta(config.DEFAULT_MODEL))] if config.DEFAULT_MODEL.exists() else []
    table = pd.concat([pd.DataFrame(rows), store.table()], ignore_index=True) if rows else store.table()
    table["time_s"] = [duration(t) if pd.notna(t) else "—" for t in table.time_s]
    st.dataframe(
        table,
        hide_index=True,
        width="stretch",
        column_config={
            "run": st.column_config.TextColumn("model", help="A run's id starts with when it was started (UTC)"),
            "epochs": st.column_config.TextColumn("epochs", help="Completed, of those asked for", width=60),
            "accuracy": st.column_config.ProgressColumn(
                "accuracy",
                format="percent",
                width=110,
                help="As the app predicts, on the photos its training held out (training's own one look if not "
                "measured so)",
            ),
            "95% CI": st.column_config.TextColumn("95% CI", help="Wilson interval: the photos' count sets its width"),
            "held out": st.column_config.NumberColumn(
                "photos", format="localized", help="The held-out photos it was measured on", width=70
            ),
            "settings": st.column_config.TextColumn("settings", width="medium"),
            "time_s": st.column_config.TextColumn("time", help="Wall time of the run", width=70),
            "status": st.column_config.TextColumn("status", width=90),
        },
    )


def _histories(store: RunStore) -> dict[str, pd.DataFrame]:
    found = {SHIPPED: model_history(config.DEFAULT_MODEL)} if config.DEFAULT_MODEL.exists() else {}
    return found | {run.id: run.history for run in store.runs()}


def overlay_ui(store: RunStore) -> None:
    """One metric per epoch for the chosen runs, in one chart; runs without a completed epoch are said so."""
    histories = _histories(store)
    drawable = [name for name, history in histories.items() if len(history) and name != SHIPPED]
    left, right = st.columns([3, 1])
    default = drawable[:3] or [name for name in histories if len(histories[name])][:1]
    chosen = left.multiselect("Overlay the curves of", list(histories), default=default, key="runs_compare")
    metric = right.selectbox("Metric", list(METRICS), format_func=METRICS.get, key="runs_metric")
    empty = [name for name in chosen if not len(histories[name])]
    drawn = {name: histories[name] for name in chosen if name not in empty}
    if drawn:
        st.vega_lite_chart(*charts.runs_overlay(drawn, metric, METRICS[metric]), width="stretch")
    if empty:
        st.caption(
            f"Nothing to draw for {', '.join(empty)}: stopped before its first epoch ended. "
            "Inspect it below for the losses of the batches it trained."
        )


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
        choice = registry.set_default_model(key, by=session_owner())
        st.toast(f"{choice.name} is now the default model for everyone")
    except KeyError:
        st.toast(f"{key} is no longer on this server")
    st.session_state.pop("runs_default_asked", None)


def _cancel_default() -> None:
    st.session_state.pop("runs_default_asked", None)


def server_default_ui() -> None:
    """Which model every session gets until it picks its own, who made it so, and this session's own."""
    default = registry.default_model()
    if default is None:
        return
    record = registry.default_model_record()
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
    default = registry.default_model()
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


def model_options(store: RunStore) -> dict[str, ModelChoice | Run]:
    """Everything to inspect: the shipped model, then every run, with or without a saved model."""
    found: dict[str, ModelChoice | Run] = {c.key: c for c in registry.choices() if c.key == registry.DEFAULT_KEY}
    return found | {run.id: run for run in store.runs()}


def comparable(options: dict[str, ModelChoice | Run]) -> dict[str, ModelChoice]:
    """The models to put side by side: the shipped one, and every run that saved a model."""
    return {
        key: o if isinstance(o, ModelChoice) else registry.describe(o.id, o.model_path, o.meta)
        for key, o in options.items()
        if isinstance(o, ModelChoice) or o.has_model
    }


def batches_ui(run: Run) -> None:
    """A run that saved no model still shows the loss of every batch it trained."""
    batches, meta = run.batches, run.meta
    if len(batches):
        st.markdown(f"**Training loss of the {plural(len(batches), 'batch')} it trained**")
        per_epoch = -(-meta.get("n_train", 0) // max(meta.get("global_batch") or 1, 1)) or None  # ceiling
        st.vega_lite_chart(*charts.batch_loss(batches, batches_per_epoch=per_epoch), width="stretch")
    else:
        st.caption("It logged no batch.")


def inspect_ui(store: RunStore, picked: ModelChoice | Run) -> ModelChoice | None:
    """What the picked model is and how it scored; returns it for evaluation (None: a run that saved no model)."""
    run = picked if isinstance(picked, Run) else None
    meta = run.meta if run else model_meta(picked.path)
    if run is not None and not meta:
        st.warning(f"{run.id}: its run.json cannot be read (half-written, or damaged): nothing to show.")
        return None
    cfg, metrics = meta.get("config", {}), meta.get("metrics", {})
    choice = registry.describe(run.id, run.model_path, meta) if run else picked
    accuracy, tip = accuracy_text(choice.score, choice.single_look)
    epochs = f"{metrics.get('epochs_completed', 0)} of {plural(cfg.get('epochs', 0), 'epoch')}"
    scored = f"  \nAccuracy {accuracy}" if choice.score is not None else ""
    st.caption(
        f"{cfg.get('preset')} preset · {meta.get('n_images', 0):,} photos of {meta.get('dataset', {}).get('source')} · "
        f"{epochs} · status {run.status if run else meta.get('status')}{scored}",
        help=tip,
    )
    if run is None:
        st.download_button(
            "Download model (.keras)",
            picked.path.read_bytes,  # read only when clicked
            file_name=picked.path.name,
            mime="application/octet-stream",
            key="runs_download",
            on_click="ignore",
        )
        return picked
    if not run.has_model:
        st.warning(NO_MODEL.get(run.status, NO_MODEL["stopped"]))
        batches_ui(run)
        return None
    actions_ui(store, run)
    return choice


def dataset_options(model: ModelChoice) -> tuple[dict[str, str], Path | None]:
    """Where a model can be evaluated: the photos its training held out, and every labeled dataset of this session."""
    meta = model_meta(model.path)
    trained_on, names = training_source(meta), meta.get("validation_names")
    options = {}
    if trained_on and names:
        options[HELD_OUT] = f"the {len(names):,} photos of {trained_on.name} it never trained on"
    for path in dict.fromkeys([p for p in (active_dataset(),) if p] + dataset_candidates(session_owner())):
        note = ", some of which it trained on" if path == trained_on else ""
        options[str(path)] = f"every labeled photo of {path.name}{note}"
    return options, trained_on


def evaluate_ui(model: ModelChoice) -> None:
    """Pick a dataset, evaluate the model on it: accuracy with intervals, confusion, calibration and mistakes."""
    st.markdown(f"**Evaluate {model.name} on a dataset**")
    options, trained_on = dataset_options(model)
    if trained_on is None:
        name = model_meta(model.path).get("dataset", {}).get("source", "its dataset")
        st.caption(
            f"It was trained on {name}, which is not open here: choose it on the Dataset page to evaluate it on "
            "the photos its training held out."
        )
    if not options:
        st.info("No dataset is open here: choose one on the Dataset page to evaluate this model on it.")
        return
    if st.session_state.get("runs_eval_dataset") not in options:  # another model, or a dataset gone
        st.session_state["runs_eval_dataset"] = next(iter(options))
    left, right = st.columns([4, 1], vertical_alignment="bottom")
    choice = left.selectbox("On", list(options), format_func=options.get, key="runs_eval_dataset")
    if not right.toggle("Evaluate", key="runs_evaluate", persist_state="session"):
        return
    if choice == HELD_OUT:
        source, names = trained_on, tuple(model_meta(model.path)["validation_names"])
    else:
        source, names = Path(choice), None
    with st.spinner(f"Evaluating {model.name} on {options[choice]}…"):
        result = evaluation_of(model, source, names)
    if result.n == 0:
        st.info(f"{source.name} has no labeled photos it could read: name them like cat.1.jpg, or use cat/ and dog/.")
        return
    on = held_out(result.n, source.name) if choice == HELD_OUT else f"the {result.n:,} labeled photos of {source.name}"
    results_ui(model, source, result, on)


def results_ui(model: ModelChoice, source: Path, result: Evaluation, on: str) -> None:
    """Accuracy, per-class accuracy and calibration with their intervals, the confusion matrix and the mistakes."""
    score, per_class = result.score(on), result.class_scores()
    accuracy, tip = accuracy_text(score)
    cols = st.columns(4)
    cols[0].metric("Accuracy", percent(score.value), help=tip)
    for col, (name, part) in zip(cols[1:3], per_class.items(), strict=True):
        shown = percent(part.value) if part.n else "—"
        col.metric(f"{name.capitalize()}s right", shown, help=f"{part.correct:,} of {part.n:,}; {part.interval_text}")
    cols[3].metric(
        "Calibration error",
        percent(result.calibration_error()),
        help="Expected calibration error (ECE): how far its confidence is from how often it is right, averaged "
        "over the bins of the reliability diagram, weighted by their photos. 0% is perfectly calibrated.",
    )
    classes = " · ".join(f"{name}s {part.headline}" for name, part in per_class.items() if part.n)
    st.caption(f"Accuracy {accuracy}; {plural(result.skipped, 'photo')} could not be read.  \n{classes}")
    left, right = st.columns(2)
    with left:
        st.markdown("**Confusion matrix**")
        st.vega_lite_chart(*charts.confusion(result.confusion), width="content")
        st.caption(confusion_sentence(result.confusion))
    with right:
        st.markdown("**Reliability**: how sure it was, against how often it was right")
        bins = result.calibration()
        st.vega_lite_chart(*charts.reliability(bins), width="content")
        st.caption(reliability_sentence(bins))
    review.confusion_cell_ui(source, result)
    misclassified_ui(model, source, result)


def confusion_sentence(confusion: list[list[int]]) -> str:
    """Which mistake it makes more often, in words."""
    (cats_right, cats_as_dogs), (dogs_as_cats, dogs_right) = confusion
    cat_error = cats_as_dogs / max(cats_right + cats_as_dogs, 1)
    dog_error = dogs_as_cats / max(dogs_as_cats + dogs_right, 1)
    said = f"{plural(cats_as_dogs, 'cat')} called a dog, {plural(dogs_as_cats, 'dog')} called a cat"
    if cat_error and dog_error and max(cat_error, dog_error) >= 1.2 * min(cat_error, dog_error):
        more, less = ("cats", "dogs") if cat_error > dog_error else ("dogs", "cats")
        said += f": {more} are mistaken {max(cat_error, dog_error) / min(cat_error, dog_error):.1f}x as often as {less}"
    return said + "."


def reliability_sentence(bins: pd.DataFrame) -> str:
    """The least sure bin in words, where calibration matters most."""
    if bins.empty:
        return ""
    low = bins.iloc[0]
    return (
        f"When {low.low:.0%}–{low.high:.0%} sure it was right {percent(low.accuracy)} of the time "
        f"({int(low.correct):,} of {plural(int(low.photos), 'photo')}). On the dashed line a model is right as often "
        "as it is sure."
    )


def misclassified_ui(model: ModelChoice, source: Path, result: Evaluation) -> None:
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
        model_key = (str(model.path), model_version(model.path), str(source), dataset_version(source))
        try:
            photos = [_overlay(*model_key, name) for name in shown.file]
            st.image(legend(512, 14), width=512)
            st.caption(f"Grad-CAM, last convolutional layer: {LEGEND}.")
        except Exception:  # an optional view must not take the gallery down with it
            st.warning("Could not show where the model looked for these photos.")
    columns = st.columns(COLUMNS)
    for i, (row, photo) in enumerate(zip(shown.itertuples(), photos, strict=True)):
        with columns[i % COLUMNS]:
            st.image(photo, width="stretch")
            st.caption(f"{Path(row.file).name}: a {CLASS_NAMES[int(row.true)]}, P(dog) = {row.prob_dog:.2f}")


def odd_folders_ui() -> None:
    """Folders in the runs folder that are not listed, and why: a symlink, a run still being written."""
    odd = odd_run_folders()
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
options = model_options(store)
if not options:
    st.info("No saved runs yet: train one on the Train page.")
    st.stop()
forget_gone_runs([*options, SHIPPED])
table_ui(store)
overlay_ui(store)
st.divider()
server_default_ui()
key = st.selectbox(
    "Inspect", list(options), format_func=lambda k: SHIPPED if k == registry.DEFAULT_KEY else k, key="runs_selected"
)
model = inspect_ui(store, options[key])
if model is not None:
    export_downloads_ui(model)
    st.divider()
    evaluate_ui(model)
    st.divider()
    side_by_side_ui(model, comparable(options))
