"""Evaluations on the Runs page: one per model and dataset version, and two models side by side on the same photos."""

from __future__ import annotations

from pathlib import Path

import pandas as pd
import streamlit as st

from core import compare
from core.data import dataset_version
from core.metrics import percent
from core.predict import Evaluation, evaluate
from core.registry import ModelChoice
from core.runs import model_meta
from ui.resources import predictor, training_source


@st.cache_data(show_spinner=False, max_entries=16)
def _evaluation(model: str, model_version: int, source: str, version: str, names: tuple[str, ...] | None):
    return evaluate(predictor(Path(model)), source, names)


def model_version(path: Path) -> int:
    return path.stat().st_mtime_ns


def evaluation_of(model: ModelChoice, source: Path, names: tuple[str, ...] | None) -> Evaluation:
    """A model on a dataset (all its labeled photos, or only the named ones), once per model and dataset version."""
    return _evaluation(str(model.path), model_version(model.path), str(source), dataset_version(source), names)


def _described(choice: ModelChoice, meta: dict) -> str:
    fixes = compare.training_fixes(meta)
    return f"{choice.name} (trained with {fixes})" if fixes else f"{choice.name} (its dataset as given)"


def side_by_side_ui(model: ModelChoice, others: dict[str, ModelChoice]) -> None:
    """This model beside another on the photos neither trained on: by default, for a run trained with corrections
    or extra photos, the one trained without them (and the other way round)."""
    st.markdown(f"**{model.name} side by side with another model, on the same photos**")
    meta = model_meta(model.path)
    metas = {key: model_meta(choice.path) for key, choice in others.items() if key != model.key}
    if not metas:
        st.caption("No other model to compare it with yet.")
        return
    default = compare.partner(meta, metas) or next(iter(metas))
    if st.session_state.get("runs_beside") not in metas:  # another model inspected, or a run deleted
        st.session_state["runs_beside"] = default
    left, right = st.columns([4, 1], vertical_alignment="bottom")
    key = left.selectbox(
        "Beside", list(metas), format_func=lambda k: _described(others[k], metas[k]), key="runs_beside"
    )
    names = compare.shared_held_out(meta, metas[key])
    if not names:
        st.info(f"{model.name} and {others[key].name} share no held-out photo: they trained on different datasets.")
        return
    source = training_source(meta)
    if source is None:
        st.caption(f"Choose {meta.get('dataset', {}).get('source')} on the Dataset page to compare them on it.")
        return
    if not right.toggle("Compare", key="runs_side_by_side", persist_state="session"):
        st.caption(f"They both held out the same {len(names):,} photos of {source.name}.")
        return
    with st.spinner(f"Evaluating both on the {len(names):,} photos neither trained on…"):
        pair = {m.name: (m, evaluation_of(m, source, tuple(names))) for m in (model, others[key])}
    _side_by_side_table(pair, {model.name: meta, others[key].name: metas[key]}, len(names), source.name)
    (first, a), (second, b) = ((name, e) for name, (_, e) in pair.items())
    st.caption(compare.paired(a, b).sentence(first, second))


def _side_by_side_table(pair: dict, metas: dict[str, dict], n: int, source: str) -> None:
    rows = []
    for name, (_, result) in pair.items():
        score, per_class = result.score(f"the same {n:,} photos of {source}"), result.class_scores()
        rows.append(
            {
                "model": name,
                "trained with": compare.training_fixes(metas[name]) or "its dataset as given",
                "accuracy": score.headline,
                **{f"{c}s right": percent(p.value) if p.n else "—" for c, p in per_class.items()},
                "calibration error": percent(result.calibration_error()),
                "photos": result.n,
            }
        )
    st.dataframe(pd.DataFrame(rows), hide_index=True, width="stretch")
