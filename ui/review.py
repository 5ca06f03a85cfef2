"""Review widgets the Dataset and Runs pages share: a photo with one-click corrections, saved per dataset.

Every click is one `core.corrections.record` call: it loads the dataset's corrections file, changes one photo and
writes it atomically under a lock, so two tabs clicking at once never lose one another's decisions.
"""

from __future__ import annotations

import hashlib
import math
from pathlib import Path

import pandas as pd
import streamlit as st

from core.config import CLASS_NAMES
from core.corrections import Corrections, CorrectionsError, load_corrections, record
from core.pipeline import ImageError, decode_preview
from core.predict import Evaluation
from ui.resources import dataset_fingerprint, dataset_name, open_source
from ui.status import plural

THUMB_SIDE = 320
DECIDED = {
    "cat": "relabelled as a cat",
    "dog": "relabelled as a dog",
    "exclude": "excluded (neither)",
    "keep": "label is right",
}


def action_key(prefix: str, name: str, action: str) -> str:
    """The key of one photo's action button: the page's prefix, the action and a short hash of the photo's name."""
    return f"{prefix}_{action}_{hashlib.sha256(name.encode()).hexdigest()[:12]}"


def _decide(fingerprint: str, source: str, name: str, action: str | None, given: str) -> None:
    try:
        record(fingerprint, {name: action}, source=source, given={name: given})
    except (CorrectionsError, OSError) as err:  # a damaged file or a full disk: said, never a traceback
        st.session_state["review_error"] = f"Could not save the correction of {Path(name).name}: {err}"


def corrections_of(path: Path) -> tuple[str, Corrections | None]:
    """A dataset's fingerprint and its saved corrections (None, with the reason shown, if its file is damaged)."""
    fingerprint = dataset_fingerprint(path)
    try:
        return fingerprint, load_corrections(fingerprint, source=dataset_name(path))
    except CorrectionsError as err:
        st.error(f"The corrections of {dataset_name(path)} cannot be read: {err}")
        return fingerprint, None


def actions_ui(prefix: str, path: Path, fingerprint: str, corrections: Corrections, name: str, given: str) -> None:
    """One photo's decision and Undo, or its buttons: relabel as the other class, exclude, label is right."""
    source = dataset_name(path)
    decided = corrections.action(name)
    if decided is not None:
        st.caption(f":material/check_circle: {DECIDED[decided]}")
        args = (fingerprint, source, name, None, given)
        st.button("Undo", key=action_key(prefix, name, "undo"), on_click=_decide, args=args, width="stretch")
        return
    other = CLASS_NAMES[1 - CLASS_NAMES.index(given)]
    for action, label in ((other, f"Relabel as {other}"), ("exclude", "Exclude (neither)"), ("keep", "Label is right")):
        args = (fingerprint, source, name, action, given)
        st.button(label, key=action_key(prefix, name, action), on_click=_decide, args=args, width="stretch")


def gallery_ui(prefix: str, path: Path, photos: pd.DataFrame, captions: list[str], per_page: int = 12) -> None:
    """Photos of a dataset (columns file, given_label), paged, each with its corrections actions."""
    fingerprint, corrections = corrections_of(path)
    if error := st.session_state.pop("review_error", None):
        st.error(error)
    if photos.empty:
        st.caption("No photos here.")
        return
    pages = math.ceil(len(photos) / per_page)
    if st.session_state.get(f"{prefix}_page", 1) > pages:  # a narrower filter: back to its first page
        st.session_state[f"{prefix}_page"] = 1
    page = st.pagination(pages, key=f"{prefix}_page", max_visible_pages=7) if pages > 1 else 1
    st.caption(f"{plural(len(photos), 'photo')} · page {page} of {pages}")
    reader = open_source(path)
    start = (page - 1) * per_page
    columns = st.columns(4)
    for i, row in enumerate(photos.iloc[start : start + per_page].itertuples()):
        with columns[i % 4], st.container(border=True):
            try:
                st.image(decode_preview(reader.read(row.file), THUMB_SIDE), width="stretch")
            except ImageError as err:
                st.caption(f"{Path(row.file).name}: {err}")
            st.caption(captions[start + i])
            if corrections is not None:
                actions_ui(prefix, path, fingerprint, corrections, row.file, row.given_label)


def cells(confusion: list[list[int]]) -> dict[str, str]:
    """The confusion matrix's cells: "cat-dog" (a cat called a dog) to how it is offered, with its count."""
    found = {}
    for t, true in enumerate(CLASS_NAMES):
        for p, said in enumerate(CLASS_NAMES):
            what = f"{true}s right" if t == p else f"{true}s called {said}s"
            found[f"{true}-{said}"] = f"{what} ({confusion[t][p]:,})"
    return found


def confusion_cell_ui(source: Path, result: Evaluation) -> None:
    """Open a cell of the confusion matrix: its photos, most confident first, each with the corrections actions."""
    offered = cells(result.confusion)
    cell = st.segmented_control(
        "Open a cell of the confusion matrix", list(offered), format_func=offered.get, key="runs_cell"
    )
    if cell is None:
        return
    true, said = (CLASS_NAMES.index(part) for part in cell.split("-"))
    frame = result.predictions.dropna(subset=["prob_dog"])
    chosen = frame[(frame.true == true) & ((frame.prob_dog >= 0.5).astype(int) == said)]
    chosen = chosen.assign(confidence=(chosen.prob_dog - 0.5).abs())
    chosen = chosen.sort_values(["confidence", "file"], ascending=[False, True], kind="stable")
    photos = pd.DataFrame({"file": chosen.file, "given_label": CLASS_NAMES[true]})
    captions = [f"{Path(f).name}: P(dog) = {p:.2f}" for f, p in zip(chosen.file, chosen.prob_dog, strict=True)]
    st.caption(f"{offered[cell]}, most confident first. Corrections go to {source.name}'s corrections file.")
    gallery_ui("runs_cell", source, photos, captions)
