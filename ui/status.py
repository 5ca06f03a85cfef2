"""What the app is working with, in words: the sidebar's dataset, model and training status."""

from __future__ import annotations

import time
from pathlib import Path

import streamlit as st

from core.data import summarize
from core.jobs import TrainingState, owner_label
from core.metrics import Accuracy, percent
from core.runs import RunStore
from core.settings import SGD_MOMENTUM, NetConfig, OptimizerConfig, TrainConfig
from ui.resources import (
    active_dataset,
    active_model,
    dataset_name,
    dataset_notice,
    dataset_scans,
    model_notice,
    session_label,
    session_owner,
    training_manager,
)


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


def clock(timestamp: float) -> str:
    """A time of day as a page shows when something happened: 14:02:11."""
    return time.strftime("%H:%M:%S", time.localtime(timestamp))


def started_by(state: TrainingState) -> str:
    """Whose run this is, from this session's point of view: "you" or "another session (session 3f9a1c)"."""
    return "you" if state.owner == session_owner() else f"another session ({owner_label(state.owner)})"


def run_settings(state: TrainingState) -> dict[str, str]:
    """Every setting of a run as it was started (from the job, never from any page's controls), in words."""
    cfg = state.config
    scales = ", ".join(f"{round(s * cfg.image_size)}" for s in cfg.train_scales) if cfg.train_scales else "—"
    return {
        "dataset": dataset_name(Path(state.source)),
        "preset": cfg.preset,
        "epochs": str(cfg.epochs),
        "batch size": str(cfg.batch_size),
        "validation split": f"{cfg.validation_split:.0%}",
        "learning rate": f"{cfg.learning_rate:g}",
        "image": f"{cfg.image_size}x{cfg.image_size} {cfg.color_mode}",
        "train sizes (px)": scales,
        "augmentation": augmentation_text(cfg),
        "early stopping": f"on (patience {cfg.patience})" if cfg.early_stopping else "off",
        "network": net_text(cfg.net),
        "optimizer": optimizer_text(cfg.optimizer),
        "time budget": f"{cfg.time_budget_min:g} min" if cfg.time_budget_min else "none",
        "seed": str(cfg.seed),
        "photos": f"{cfg.limit:,}" if cfg.limit else "all",
    }


def augmentation_text(cfg: TrainConfig) -> str:
    """The training photos' augmentation in words: "off", "on", or "on, alternating flips, erasing 50%, CutMix 50%,
    mixup 50%"."""
    if not cfg.augment:
        return "off"
    extras = ["alternating flips"] if cfg.flip == "alternate" else []
    extras += [f"erasing {cfg.erase:.0%}"] if cfg.erase else []
    extras += [f"CutMix {cfg.cutmix:.0%}"] if cfg.cutmix else []
    extras += [f"mixup {cfg.mixup:.0%}"] if cfg.mixup else []
    return ", ".join(["on", *extras])


def _dashed(numbers: tuple[int, ...]) -> str:
    return "-".join(str(n) for n in numbers)


def net_text(net: NetConfig) -> str:
    """A network in words: "seed CNN, convs 64-64" or "VGG-BN, pairs 32-64-128-256, stem 16" (", SE /8"
    with squeeze-and-excitation gates, ", residual" with shortcuts, "stem 16, whitened" with a frozen whitening
    stem, ", convs 1-2-3-3" with a depth per stage)."""
    widths = _dashed(net.widths)
    if net.kind == "seed":
        return f"seed CNN, convs {widths}"
    extras = [f"stem {net.stem}"] * bool(net.stem) + ["whitened"] * net.whiten + [f"SE /{net.se}"] * bool(net.se)
    extras += ["residual"] * net.residual + [f"convs {_dashed(net.convs)}"] * bool(net.convs)
    return ", ".join([f"VGG-BN, pairs {widths}", *extras])


def optimizer_text(optimizer: OptimizerConfig) -> str:
    """An optimiser in words: "adam", or "adamw, weight decay 0.05, label smoothing 0.05"."""
    parts = [optimizer.name]
    parts += [f"Nesterov momentum {SGD_MOMENTUM:g}"] if optimizer.name == "sgd" else []
    parts += [f"weight decay {optimizer.weight_decay:g}"] if optimizer.name != "adam" else []
    parts += [f"label smoothing {optimizer.label_smoothing:g}"] if optimizer.label_smoothing else []
    parts += [f"weights averaged ({optimizer.ema:g} a step)"] if optimizer.ema else []
    parts += [f"weights averaged over the last {optimizer.swa:.0%} of the time"] if optimizer.swa else []
    parts += [f"biases at {optimizer.bias_rate:g}x the rate"] if optimizer.bias_rate != 1 else []
    parts += [f"sharpness-aware (rho {optimizer.sam:g})"] if optimizer.sam else []
    parts += [f"mutual learning with a peer net (weight {optimizer.mutual:g})"] if optimizer.mutual else []
    return ", ".join(parts)


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
    if notice := dataset_notice():
        st.caption(f":orange[{notice}]")
    if path is None:
        st.caption("None yet: see the Dataset page.")
        return
    scan = dataset_scans().get(path)
    name = dataset_name(path)
    if scan.manifest is not None:
        counts = summarize(scan.manifest)
        unlabeled = f" · {counts['unlabeled']:,} unlabeled" if counts["unlabeled"] else ""
        classes = f"{counts['cats']:,} cats · {counts['dogs']:,} dogs{unlabeled}"
        st.caption(f"**{name}**  \n{classes} · {counts['skipped']:,} skipped")
    elif scan.error:
        st.caption(f"**{name}**  \n{scan.error}")
    else:
        st.caption(f"**{name}**  \nscanning {scan.done:,} / {f'{scan.total:,}' if scan.total else '?'}…")


def _model_status() -> None:
    model = active_model()
    if notice := model_notice():
        st.caption(f":orange[{notice}]")
    if model is None:
        st.caption("None yet: train one on the Train page.")
        return
    accuracy, tip = accuracy_text(model.score, model.single_look)
    st.caption(f"**{model.name}** · {model.preset or 'unknown'} preset  \n{accuracy}", help=tip)


def _training_status() -> None:
    job = training_manager().current
    state = job.snapshot() if job else None
    if state is None or not state.running:
        elsewhere = other_process_runs()
        st.caption(f"In progress in another process: {elsewhere}" if elsewhere else "No run in progress.")
        return
    st.progress(state.fraction, text=training_line(state))
    st.caption(f"Started by {started_by(state)} at {clock(state.started_at)}")


def other_process_runs() -> str:
    """The runs training in other processes (a CLI, another server) into this runs folder, in words; '' if none."""
    # Called when this server trains nothing, so every run in progress belongs to another process.
    runs = [run.meta for run in RunStore().in_progress()]
    return ", ".join(f"**{m['id']}** (pid {m.get('pid')}, since {m.get('started_at', '')[11:19]} UTC)" for m in runs)


@st.fragment(run_every="2s")
def render_sidebar() -> None:
    """Dataset, model and training status, refreshed every two seconds."""
    st.markdown("**Dataset**")
    _dataset_status()
    st.markdown("**Active model**")
    _model_status()
    st.markdown("**Training**")
    _training_status()
    st.caption(f"This browser is **{session_label()}**", help="How other sessions see your runs named")
