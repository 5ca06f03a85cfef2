"""Train page: set the knobs, train in the background, watch the curves live, stop, keep the best."""

from __future__ import annotations

from pathlib import Path

import streamlit as st

from core import config
from core.corrections import MyPhotos, usable_corrections
from core.data import summarize
from core.estimate import estimate_training
from core.hardware import training_precision
from core.jobs import TrainingBusy, TrainingJob, TrainingState, owner_label
from core.metrics import percent, recorded_accuracies
from core.runs import RunStore
from core.settings import MAX_EPOCHS, PRESETS, Setting, TrainConfig, help_of, settings
from ui import charts
from ui.navigation import run_through_entrypoint
from ui.resources import (
    active_dataset,
    active_model,
    dataset_fingerprint,
    dataset_name,
    dataset_scans,
    session_owner,
    set_session_model,
    training_manager,
)
from ui.status import accuracy_text, clock, duration, plural, run_settings, started_by, training_line

run_through_entrypoint()


# The presets' own values are always among the choices, whatever a preset is later tuned to.
IMAGE_SIZES = sorted({48, 64, 80, 96, 112, 128, 160} | {p.config.image_size for p in PRESETS.values()})
LEARNING_RATES = sorted({1e-4, 2e-4, 5e-4, 1e-3, 2e-3, 5e-3, 1e-2} | {p.config.learning_rate for p in PRESETS.values()})
# Not a preset's: choosing a preset keeps this session's seed and slice of photos.
SESSION_SETTINGS = ("seed", "limit")


def _key(name: str) -> str:
    # Each setting lives in the session under "train_" + its name in core.settings, whether a control shows it
    # (train_epochs) or not (train_net.widths): the map between them is derived, never restated.
    return f"train_{name}"


def _help(name: str) -> str:
    text = help_of(name)
    return text[:1].upper() + text[1:]


def _load_settings(cfg: TrainConfig, everything: bool = False) -> None:
    state = st.session_state
    for setting in settings():
        if everything or setting.name not in SESSION_SETTINGS:
            value = cfg.value(setting.name)
            state[_key(setting.name)] = int(value or 0) if setting.zero_is_none else value  # 0 = none, all
    if everything:  # the preset too: a reloaded page shows what its own run is training with
        state["train_preset"] = cfg.preset


def _own_live_job() -> TrainingJob | None:
    job = training_manager().current
    return job if job is not None and job.running and job.owner == session_owner() else None


def _apply_preset() -> None:
    # Choosing a preset loads its own settings; each control can still be changed afterwards.
    _load_settings(TrainConfig.for_preset(st.session_state["train_preset"]))


def controls_ui() -> None:
    """The training knobs, defaulting to the seed tutorial; they persist for the session."""
    if "train_epochs" not in st.session_state:  # a new session: a reload while this browser's run trains, too
        own = _own_live_job()
        _load_settings(own.config if own else TrainConfig(), everything=True)
    keep = {"persist_state": "session"}
    preset = st.selectbox("Preset", list(PRESETS), key="train_preset", on_change=_apply_preset, **keep)
    st.caption(PRESETS[preset].description)
    c1, c2, c3 = st.columns(3)
    c1.slider("Epochs", 1, MAX_EPOCHS, key="train_epochs", **keep)
    c2.slider("Batch size", 8, 256, step=8, key="train_batch_size", **keep)
    c3.slider("Validation split", 0.05, 0.5, step=0.05, key="train_validation_split", **keep)
    c1, c2, c3, c4 = st.columns(4)
    c1.select_slider("Learning rate", LEARNING_RATES, format_func=lambda v: f"{v:g}", key="train_learning_rate", **keep)
    c2.select_slider("Image size (px)", IMAGE_SIZES, key="train_image_size", **keep)
    c3.radio("Colour", ["grayscale", "rgb"], horizontal=True, key="train_color_mode", **keep)
    c4.number_input(
        "Time budget (min, 0 = none)",
        0,
        24 * 60,
        step=5,
        key="train_time_budget_min",
        help=_help("time_budget_min"),
        **keep,
    )
    c1, c2, c3, c4 = st.columns(4)
    c1.toggle("Augmentation", key="train_augment", help=_help("augment"), **keep)
    c2.toggle("Early stopping", key="train_early_stopping", help=_help("early_stopping"), **keep)
    c3.number_input("Seed", 0, 2**31 - 1, step=1, key="train_seed", help=_help("seed"), **keep)
    c4.number_input("Photos to use (0 = all)", 0, None, step=100, key="train_limit", help=_help("limit"), **keep)
    fixes_ui()
    cfg = chosen_config()
    photos = f"{cfg.limit:,} photos" if cfg.limit else "all photos"
    photos += " with its corrections" if cfg.corrections else ""
    photos += " plus my photos" if cfg.extras else ""
    length = plural(cfg.epochs, "epoch") + (f" or {cfg.time_budget_min:g} minutes" if cfg.time_budget_min else "")
    st.caption(
        f"Start trains the {cfg.preset} preset for {length} in batches of {cfg.batch_size} on {photos}, "
        f"{cfg.image_size}x{cfg.image_size} {cfg.color_mode}, {_held_out_and_precision(cfg)}.",
        help="What Start will run, as the server sees the controls",
    )


def _held_out_and_precision(cfg: TrainConfig) -> str:
    held = f"holding out {cfg.validation_split:.0%} for validation"
    held += f" and {cfg.calibration_split:.0%} for calibration" if cfg.calibration_split else ""
    precision = training_precision(cfg.precision)
    if cfg.precision == "auto":
        why = "this CPU has AMX" if precision == "bfloat16" else "no AMX on this CPU"
        return f"{held}, in {precision} ({why})"
    return held if precision == "float32" else f"{held}, in mixed {precision}"


def fixes_ui() -> None:
    """Offer what the Dataset, Runs and Predict pages corrected: this dataset's corrections, and My photos."""
    dataset = active_dataset()
    path, counts = usable_corrections(dataset_fingerprint(dataset)) if dataset is not None else (None, {})
    mine = MyPhotos().list()
    if path is not None:
        what = f"{plural(counts['relabelled'], 'photo')} relabelled, {counts['excluded']:,} excluded"
        st.toggle(
            f"Train with this dataset's corrections ({what})",
            value=True,
            key="train_use_corrections",
            help="Saved from the Label issues review and the Runs page. Corrected photos always train and never "
            "validate, so validation stays the photos a run without corrections validates on, less those.",
        )
    if mine:
        dogs = sum(p.label == "dog" for p in mine)
        st.toggle(
            f"Add my photos ({plural(len(mine) - dogs, 'cat')}, {plural(dogs, 'dog')})",
            key="train_use_my_photos",
            help="The photos corrected on the Predict page (Dataset page, My photos). They always train, never "
            "validate.",
        )


def _fixes() -> dict:
    # The corrections and extras the toggles above chose, as settings; only what exists now is applied.
    state, dataset, chosen = st.session_state, active_dataset(), {}
    if dataset is not None and state.get("train_use_corrections"):
        path, _ = usable_corrections(dataset_fingerprint(dataset))
        chosen["corrections"] = str(path) if path else None
    if state.get("train_use_my_photos") and MyPhotos().list():
        chosen["extras"] = (str(MyPhotos().root),)
    return chosen


def estimate_ui(cfg: TrainConfig, dataset: Path | None) -> None:
    """Before Start: how long the run will take, at the pace this machine kept in a run like it."""
    scan = dataset_scans().get(dataset) if dataset is not None else None
    if scan is None or scan.manifest is None:
        return
    counts = summarize(scan.manifest)
    estimate = estimate_training(cfg, counts["cats"] + counts["dogs"], RunStore().runs())
    budget = f"{cfg.time_budget_min:g} minutes" if cfg.time_budget_min else None
    if estimate is None:
        limit = f" (at most {budget}, its time budget)" if budget else ""
        st.caption(f"No run like this has been timed on this machine yet{limit}: the ETA appears once it trains.")
        return
    pace = f"{estimate.images_per_s:,.0f} images/s, the pace of run {estimate.based_on} here"
    if estimate.budget_bound:
        work = f"its time budget ends it first ({plural(cfg.epochs, 'epoch')} would take longer at {pace})"
    else:
        work = f"{plural(cfg.epochs, 'epoch')} of {estimate.train_photos:,} photos at {pace}"
    st.caption(
        f"Estimated training time: **about {duration(estimate.seconds)}**: {work}; "
        "plus decoding the photos, the first time they are used."
    )


def chosen_config() -> TrainConfig:
    """The TrainConfig the controls show now (read from session state, so a callback sees fresh values)."""
    state = st.session_state
    chosen = {s.name: _from_control(s, state[_key(s.name)]) for s in settings() if _key(s.name) in state}
    return TrainConfig.for_preset(state.get("train_preset", "seed"), **(chosen | _fixes()))


def _from_control(setting: Setting, value):
    if setting.zero_is_none and not value:  # 0 = none (no time budget), all (photos)
        return None
    return setting.type(value) if setting.type in (int, float, tuple) else value


def _start() -> None:
    try:
        training_manager().start(active_dataset(), chosen_config(), runs_dir=config.RUNS_DIR, owner=session_owner())
    except TrainingBusy as err:
        st.session_state["train_busy"] = str(err)


def _stop() -> None:
    # Only the session that started the run stops it with one click; others go through _confirm_stop.
    if job := _own_live_job():
        job.stop(by=session_owner())


def _ask_stop(job_id: str) -> None:
    st.session_state["train_stop_asked"] = job_id


def _confirm_stop(job_id: str) -> None:
    job = training_manager().current
    if job is not None and job.id == job_id:  # the run the confirmation named, never one started since
        job.stop(by=session_owner())
    st.session_state.pop("train_stop_asked", None)


def _make_active(run_id: str) -> None:
    try:
        set_session_model(run_id)
        st.toast(f"This session now predicts with {run_id}")
    except KeyError:
        st.toast(f"{run_id} is no longer on this server")


def progress_ui(state: TrainingState) -> None:
    """Epoch, batch and ETA on a bar, and what is being trained on."""
    st.progress(state.fraction, text=training_line(state))
    if state.n_train:
        st.caption(
            f"{state.config.preset} preset on {Path(state.source).name}: {state.n_train:,} training and "
            f"{state.n_val:,} validation photos · {state.replicas} replica(s) of {state.per_replica_batch} images "
            f"per batch · {len(state.batch_log):,} batches logged · {duration(state.elapsed_s)} elapsed"
        )


def summary_ui(state: TrainingState) -> None:
    """How the run ended: accuracy on its held-out photos, time, throughput, confusion matrix, where it was saved."""
    if state.status == "failed":
        st.error(f"The run failed: {state.error}")
        return
    result = state.result
    if result is None:
        st.warning("Stopped while decoding the photos, before training began: nothing was saved.")
        return
    ended = {
        "finished": "finished",
        "early-stopped": "stopped early",
        "time-budget": "used its time budget",
        "stopped": "was stopped",
    }[result.status]
    if not result.run.has_model:
        st.warning(
            f"Run stopped before its first epoch ended: no model was saved, so it is not offered as a model. "
            f"Its {plural(len(state.batch_log), 'batch')} of losses (above) are kept in "
            f"`{result.run.batches_path}` and shown on the Runs page."
        )
        return
    st.success(f"Run {ended}: saved to `{result.run.path}`. It is listed on the Runs page.")
    app, single = recorded_accuracies(result.run.meta)
    accuracy, tip = accuracy_text(app or single, single)
    cols = st.columns(4)
    cols[0].metric("Accuracy on held-out photos", percent((app or single).value) if app or single else "—", help=tip)
    cols[1].metric(
        "Time",
        duration(state.elapsed_s),
        help=f"From Start to the end; {duration(result.wall_time_s)} of it decoding, training and measuring, "
        "the rest starting TensorFlow.",
    )
    cols[2].metric("Images per second", f"{result.metrics.get('train_images_per_s', 0):,.0f}", help="While fitting")
    cols[3].metric("Epochs", f"{result.metrics.get('epochs_completed', 0)} / {state.config.epochs}")
    st.caption(f"Accuracy {accuracy}.")
    if confusion := result.metrics.get("confusion"):
        st.markdown("**Confusion matrix** on its held-out photos")
        st.vega_lite_chart(*charts.confusion(confusion), width="content")
    active = active_model()
    if active is not None and active.key == result.run.id:
        st.caption("This session predicts with this run's model.")
    else:
        st.button(
            "Use this model in this session",
            key="train_make_active",
            on_click=_make_active,
            args=(result.run.id,),
            help="For this session only; the default for everyone is set on the Runs page",
        )


def owner_ui(state: TrainingState) -> None:
    """Whose run this is; another session's run is read-only here."""
    if state.running and state.owner == session_owner():
        st.caption(f"Started by you at {clock(state.started_at)}: only this browser stops it with one click.")
    elif state.running:
        st.info(
            f"Started by {started_by(state)} at {clock(state.started_at)}: the {state.config.preset} preset on "
            f"{dataset_name(Path(state.source))}. You can watch it; stopping it needs a confirmation.",
            icon=":material/lock:",
        )
    if state.stopped_by and state.stopped_by != state.owner:
        st.caption(f"Stopped by {owner_label(state.stopped_by)}, not by the session that started it.")


def settings_ui(state: TrainingState) -> None:
    """The run's own settings, read from the job: a reloaded page or another session sees what really trains."""
    settings = list(run_settings(state).items())
    st.markdown(f"**Settings of {'this run' if state.running else 'the last run'}**, as it was started")
    per_column = -(-len(settings) // 3)
    for column, i in zip(st.columns(3), range(0, len(settings), per_column), strict=True):
        column.markdown("\n".join(f"- {name}: **{value}**" for name, value in settings[i : i + per_column]))


def confirm_stop_ui(job: TrainingJob) -> None:
    """Stopping another session's run: say whose it is and what it is, then ask."""
    state = job.snapshot()
    st.warning(
        f"This run belongs to another session, **{owner_label(state.owner)}**: the {state.config.preset} preset "
        f"on {dataset_name(Path(state.source))}, started at {clock(state.started_at)}. Stopping it ends their "
        "training at the next batch (the best epoch so far is kept). Stop their run?"
    )
    yes, no, _ = st.columns([1, 1, 4])
    yes.button("Yes, stop their run", key="train_stop_confirm", type="primary", on_click=_confirm_stop, args=(job.id,))
    no.button("Cancel", key="train_stop_cancel", on_click=st.session_state.pop, args=("train_stop_asked", None))


def buttons_ui(can_start: bool, job: TrainingJob | None) -> None:
    # Outside the polling fragment: a click never races a redraw of the button it lands on.
    running = job is not None and job.running
    theirs = running and job.owner != session_owner()
    left, right, _ = st.columns([1, 2, 5])
    left.button("Start", key="train_start", type="primary", on_click=_start, disabled=not can_start)
    if theirs:
        right.button(
            "Stop their run…",
            key="train_stop",
            on_click=_ask_stop,
            args=(job.id,),
            help="Another session started this run: you will be asked to confirm",
        )
    else:
        right.button("Stop", key="train_stop", on_click=_stop, disabled=not running)
    if busy := st.session_state.pop("train_busy", None):
        st.warning(busy)
    if theirs and st.session_state.get("train_stop_asked") == job.id:
        confirm_stop_ui(job)


def live_ui(was_running: bool) -> None:
    """The run's progress and curves; while it trains, a fragment redraws them from the job every second."""
    job = training_manager().current
    if job is None:
        st.caption("No run yet on this server: press Start.")
        return
    state = job.snapshot()
    if state.running != was_running:
        st.rerun()  # the run started or ended: redraw the whole page, buttons included
    progress_ui(state)
    owner_ui(state)
    settings_ui(state)
    if state.history:
        st.vega_lite_chart(*charts.epoch_curves(state.history_frame()), width="stretch")
    elif state.running and state.epoch <= 1:
        st.caption("Loss and accuracy per epoch, on training and validation photos, appear when epoch 1 ends.")
    if state.batch_log:
        batch_charts_ui(state.batch_frame(), state.batches)
    if not state.running:
        summary_ui(state)


def batch_charts_ui(batches, per_epoch: int) -> None:
    """Every batch's loss, smoothed as in TensorBoard (linear or log scale), and the learning rate it trained at."""
    title, left, right = st.columns([3, 2, 1], vertical_alignment="bottom")
    title.markdown("**Training loss per batch**, as it happens")
    smoothing = left.slider("Smoothing", 0.0, 0.99, 0.6, step=0.01, key="train_smoothing", persist_state="session")
    log_scale = right.toggle("Log scale", key="train_log_scale", persist_state="session")
    st.vega_lite_chart(*charts.batch_loss(batches, smoothing, log_scale, per_epoch), width="stretch")
    rates = batches.learning_rate.dropna()
    if rates.nunique() > 1:
        st.markdown("**Learning rate** per batch")
        st.vega_lite_chart(*charts.learning_rate(batches, per_epoch), width="stretch")
    elif len(rates):
        st.caption(f"Learning rate: {rates.iloc[0]:g} throughout (this preset keeps it constant).")


st.title("Train")
dataset = active_dataset()
if dataset is None:
    st.info("Choose a dataset on the Dataset page first.")
    st.page_link("pages/dataset.py", label="Go to the Dataset page", icon=":material/photo_library:")
else:
    st.caption(f"Dataset: **{dataset_name(dataset)}**")
controls_ui()
estimate_ui(chosen_config(), dataset)
job = training_manager().current
running = job is not None and job.running
buttons_ui(can_start=dataset is not None, job=job)
st.fragment(live_ui, run_every="1s" if running else None)(running)
