"""What the app is working with, in words: the sidebar's dataset, model and training status."""

from __future__ import annotations

import streamlit as st

from core.data import summarize
from core.jobs import TrainingState, dataset_scans, training_manager
from core.metrics import Accuracy, percent
from ui.resources import active_dataset, active_model


def duration(seconds: float | None) -> str:
    """1h 02m, 3m 20s or 42s; an em dash when unknown."""
    if seconds is None:
        return "—"
    seconds = int(round(seconds))
    if seconds >= 3600:
        return f"{seconds // 3600}h {seconds % 3600 // 60:02d}m"
    if seconds >= 60:
        return f"{seconds // 60}m {seconds % 60:02d}s"
    return f"{seconds}s"


def training_line(state: TrainingState) -> str:
    """One line of progress: phase, epoch and batch, ETA; or how the run ended."""
    if state.status == "loading":
        return f"Decoding photos: {state.loaded:,} / {state.to_load:,}" if state.to_load else "Opening the dataset…"
    if state.running:
        verb = "Stopping after this batch" if state.status == "stopping" else "Training"
        return (
            f"{verb}: epoch {max(state.epoch, 1)}/{state.epochs} · batch {state.batch}/{state.batches} · "
            f"ETA {duration(state.eta_s)}"
        )
    return f"Run {state.status} after {duration(state.elapsed_s)}"


def plural(count: int, noun: str) -> str:
    """1 epoch, 2 epochs, 1,000 photos."""
    return f"{count:,} {noun}" + ("" if count == 1 else "s")


def accuracy_text(score: Accuracy | None, single_look: Accuracy | None = None) -> tuple[str, str | None]:
    """An accuracy with its 95% interval and photos, and a tooltip: how it was predicted, the other figure."""
    if score is None:
        return "accuracy not measured", None
    tip = f"Predicted {score.how}. The 95% interval (Wilson) is where the accuracy on new photos like these lies."
    if single_look is not None and single_look is not score:
        tip += f" With one look per photo, as training measured it: {percent(single_look.value)}."
    return f"{score.headline} right on {score.on}", tip


def _dataset_status() -> None:
    path = active_dataset()
    if path is None:
        st.caption("None yet: see the Dataset page.")
        return
    scan = dataset_scans().get(path)
    if scan.manifest is not None:
        counts = summarize(scan.manifest)
        unlabeled = f" · {counts['unlabeled']:,} unlabeled" if counts["unlabeled"] else ""
        classes = f"{counts['cats']:,} cats · {counts['dogs']:,} dogs{unlabeled}"
        st.caption(f"**{path.name}**  \n{classes} · {counts['skipped']:,} skipped")
    elif scan.error:
        st.caption(f"**{path.name}**  \n{scan.error}")
    else:
        st.caption(f"**{path.name}**  \nscanning {scan.done:,} / {f'{scan.total:,}' if scan.total else '?'}…")


def _model_status() -> None:
    model = active_model()
    if model is None:
        st.caption("None yet: train one on the Train page.")
        return
    accuracy, tip = accuracy_text(model.score, model.single_look)
    st.caption(f"**{model.name}** · {model.preset or 'unknown'} preset  \n{accuracy}", help=tip)


def _training_status() -> None:
    job = training_manager().current
    state = job.snapshot() if job else None
    if state is None or not state.running:
        st.caption("No run in progress.")
        return
    st.progress(state.fraction, text=training_line(state))


@st.fragment(run_every="2s")
def render_sidebar() -> None:
    """Dataset, model and training status, refreshed every two seconds."""
    st.markdown("**Dataset**")
    _dataset_status()
    st.markdown("**Active model**")
    _model_status()
    st.markdown("**Training**")
    _training_status()
