"""Dataset page: choose the source, see what is in it, and browse the photos as the model sees them."""

from __future__ import annotations

import math
from pathlib import Path

import streamlit as st

from core import catalog, config
from core.data import OK, DatasetError, summarize
from core.jobs import dataset_scans
from core.pipeline import ImageError, PipelineConfig, decode, decode_preview
from ui import charts
from ui.navigation import run_through_entrypoint
from ui.resources import (
    active_dataset,
    active_model,
    dataset_name,
    dataset_notice,
    open_source,
    remove_upload,
    save_upload,
    session_owner,
    session_uploads,
    set_active_dataset,
)
from ui.status import clock

run_through_entrypoint()

UPLOAD, FOLDER = "upload", "folder"
SMALL_ZIP_BYTES = 64 * 2**20
PER_PAGE = 24
GRID_COLUMNS = 6
THUMB_SIDE = 320  # px, twice a grid cell's width

HOW_TO_GET_DATA = f"""
**No dataset yet.** The app trains on Kaggle's *Dogs vs. Cats* photos:

1. Sign in at [kaggle.com](https://www.kaggle.com/c/dogs-vs-cats/data), accept the competition rules and download
   the data (or run `kaggle competitions download -c dogs-vs-cats`).
2. Unzip the download: it holds `train.zip` (Kaggle's full training set: 25,000 labeled photos) and `test1.zip`
   (12,500 unlabeled ones).
3. Put `train.zip` at `{config.DATA_DIR / "train.zip"}` (or its extracted `train/` folder beside it) and reload,
   or drop the zip in the box above.

A zip of class folders (`cat/`, `dog/`) works too. The Predict page works without any dataset.
"""


def _on_upload() -> None:
    # A callback, so the new zip can become the selected source before the radio is drawn.
    uploaded = st.session_state.get("dataset_upload")
    if uploaded is None:
        return
    uploaded.seek(0)
    try:
        upload = save_upload(uploaded.name, uploaded)
    except DatasetError as err:
        st.session_state["dataset_upload_error"] = str(err)
        return
    set_active_dataset(upload.path, upload.name)
    st.session_state["dataset_choice"] = str(upload.path)


def uploads_ui(mine: list, expanded: bool) -> None:
    """This browser's uploads, each with a Remove button; no other session sees them."""
    if not mine:
        return
    with st.expander(f"Your uploads ({len(mine)})", expanded=expanded):
        st.caption(
            f"Only this browser lists them. Each is kept while you use it and removed after "
            f"{config.UPLOAD_TTL_HOURS:g} hours unused; the same zip dropped twice is stored once."
        )
        for upload in mine:
            left, right = st.columns([6, 1], vertical_alignment="center")
            size = f"{upload.size / 2**20:,.1f} MB" if upload.size >= 2**20 else f"{upload.size / 2**10:,.0f} KB"
            left.markdown(f"**{upload.name}** · {size} · dropped {clock(upload.uploaded_at)}")
            right.button("Remove", key=f"dataset_remove_{upload.digest[:16]}", on_click=remove_upload, args=(upload,))


def source_ui() -> Path | None:
    """Draw the source chooser and return the chosen dataset, or None while there is none."""
    if notice := dataset_notice():
        st.warning(notice)
    mine = session_uploads()
    uploaded = {str(u.path): u.name for u in mine}
    candidates = [str(p) for p in catalog.dataset_candidates(session_owner())]
    current = active_dataset()
    options = [*candidates, UPLOAD, FOLDER]
    if current is not None and str(current) in candidates:
        default = candidates.index(str(current))
    elif current is not None:
        default = options.index(FOLDER)
    else:
        default = options.index(UPLOAD)

    def describe(option: str) -> str:
        if option == UPLOAD:
            return "Drop a zip"
        if option == FOLDER:
            return "A folder on this machine"
        return f"{uploaded[option]} (your upload)" if option in uploaded else f"{Path(option).name} (default)"

    if st.session_state.get("dataset_choice") not in options:  # first visit, or its upload was removed
        st.session_state["dataset_choice"] = options[default]
    choice = st.radio("Source", options, format_func=describe, key="dataset_choice", horizontal=True)
    uploads_ui(mine, expanded=choice == UPLOAD)
    if choice == UPLOAD:
        st.file_uploader(
            "Kaggle's train.zip, or a zip of cat/ and dog/ folders",
            type=["zip"],
            key="dataset_upload",
            on_change=_on_upload,
        )
        if error := st.session_state.pop("dataset_upload_error", None):
            st.error(error)
        return None
    if choice == FOLDER:
        return folder_ui(current, candidates)
    set_active_dataset(Path(choice), uploaded.get(choice))
    return Path(choice)


def folder_ui(current: Path | None, candidates: list[str]) -> Path | None:
    """A typed folder or zip under the allowed roots, scanned in the background before it becomes the dataset."""
    roots = ", ".join(str(root) for root in config.data_roots())
    typed = st.text_input(
        "Folder or zip path",
        value=str(current) if current and str(current) not in candidates else "",
        key="dataset_folder",
        placeholder=str(config.DATA_DIR / "PetImages"),
        help=f"Under {roots} (set CVD_DATA_ROOTS for more); a relative path is read from {config.DATA_DIR}",
    )
    if not typed:
        return None
    try:
        path = catalog.check_dataset(typed)
    except DatasetError as err:
        st.error(str(err))
        return None
    if problem := catalog.missing_classes(path.name, catalog.manifest_entries(manifest_of(path))):
        st.error(problem)
        return None
    set_active_dataset(path)
    return path


@st.fragment(run_every=0.5)
def scan_progress_ui(path: Path) -> None:
    """Progress of a scan running in the background, with Cancel; the whole page redraws when it is done."""
    state = dataset_scans().get(path)
    if state.finished:
        st.rerun()
    name = dataset_name(path)
    if state.total:
        st.progress(state.done / state.total, text=f"Scanning {name}: {state.done:,} / {state.total:,} photos…")
    else:
        st.progress(0.0, text=f"Listing the files of {name}…")
    st.button("Cancel scan", key="dataset_scan_cancel", on_click=dataset_scans().cancel, args=(path,))


def manifest_of(path: Path):
    """The dataset's manifest; a long scan shows its progress and keeps going if the user leaves the page."""
    if not path.exists():
        st.error(f"{dataset_name(path)} is no longer there: choose another source.")
        st.stop()
    state = dataset_scans().get(path)
    # A small source is scanned within a blink, so wait that long rather than flash a progress bar;
    # a big zip (Kaggle's is 543 MB) takes seconds, so show its progress at once.
    blink = 0.3 if path.is_dir() or path.stat().st_size < SMALL_ZIP_BYTES else 0
    if not state.wait(timeout=blink):
        scan_progress_ui(path)
        st.stop()
    if state.cancelled:
        st.info(f"The scan of {dataset_name(path)} was cancelled.")
        st.button("Scan again", key="dataset_scan_again", on_click=dataset_scans().forget, args=(path,))
        st.stop()
    if state.error:
        st.error(state.error)
        st.stop()
    return state.manifest


def summary_ui(path: Path, manifest) -> None:
    """Counts per class, image sizes, and every skipped or unlabeled file with its reason."""
    counts = summarize(manifest)
    cols = st.columns(4)
    cols[0].metric("Cats", f"{counts['cats']:,}")
    cols[1].metric("Dogs", f"{counts['dogs']:,}")
    cols[2].metric("Unlabeled", f"{counts['unlabeled']:,}")
    cols[3].metric("Skipped", f"{counts['skipped']:,}")
    left, right = st.columns(2)
    with left:
        st.markdown("**Images per class**")
        st.vega_lite_chart(*charts.class_counts(counts), width="stretch")
    with right:
        st.markdown("**Image sizes**")
        sizes = charts.image_sizes(manifest)
        st.vega_lite_chart(*sizes, width="stretch")
        if len(sizes.data) == 1:  # one dot says little on its own
            only = sizes.data.iloc[0]
            st.caption(f"All {int(only.images):,} readable photos are {int(only.width)}x{int(only.height)} px.")
    problems = manifest[(manifest.status != OK) | manifest.label.isna()]
    if len(problems):
        st.markdown(f"**Skipped or unlabeled files ({len(problems):,})**")
        reasons = problems.status.where(problems.status != OK, "unlabeled: can be predicted, not used for training")
        st.dataframe(
            problems.assign(reason=reasons)[["name", "reason", "bytes"]], hide_index=True, width="stretch", height=240
        )
    if st.button("Rescan", key="dataset_rescan", help="Read the source again, e.g. after adding photos to a folder"):
        dataset_scans().forget(path)
        st.rerun()


def browse_ui(path: Path, manifest) -> None:
    """A paged thumbnail grid with a class filter, a name search and the model's-eye view."""
    left, middle, right = st.columns([1, 2, 2])
    label = left.selectbox("Class", ["all", "cat", "dog", "unlabeled"], key="dataset_class")
    search = middle.text_input("File name contains", key="dataset_search", placeholder="e.g. cat.12")
    model = active_model()  # the model this session predicts with, whatever the Train page is set to
    pipeline = model.pipeline if model is not None and model.pipeline is not None else PipelineConfig()
    whose = f"{model.name}'s input" if model is not None and model.pipeline is not None else "the seed's input"
    model_view = right.toggle(
        f"As the model sees it ({pipeline.size}x{pipeline.size} {pipeline.color_mode})",
        key="dataset_model_view",
        help=f"Beside each photo, {whose}: the photo preprocessed exactly as the active model gets it",
    )
    shown = manifest[manifest.status == OK]
    if label == "unlabeled":
        shown = shown[shown.label.isna()]
    elif label != "all":
        shown = shown[shown.label == config.CLASS_NAMES.index(label)]
    if search:
        shown = shown[shown.name.str.contains(search, case=False, regex=False)]
    if shown.empty:
        st.info("No photos match.")
        return
    pages = math.ceil(len(shown) / PER_PAGE)
    if st.session_state.get("dataset_page", 1) > pages:  # a narrower filter: back to its first page
        st.session_state["dataset_page"] = 1
    page = st.pagination(pages, key="dataset_page", max_visible_pages=9) if pages > 1 else 1
    st.caption(f"{len(shown):,} matching · page {page} of {pages}")
    source = open_source(path)
    columns = st.columns(GRID_COLUMNS)
    for i, row in enumerate(shown.iloc[(page - 1) * PER_PAGE : page * PER_PAGE].itertuples()):
        with columns[i % GRID_COLUMNS]:
            caption = f"{Path(row.name).name} · {row.width}x{row.height}"
            try:  # what the pipeline decodes, never the raw bytes: a browser cannot show a 16-bit PNG or a TIFF
                data = source.read(row.name)
                shown = decode_preview(data, THUMB_SIDE)
                seen = decode(data, pipeline) if model_view else None
            except ImageError as err:
                st.caption(f"{row.name}: {err}")
                continue
            if seen is not None:
                pair = st.columns(2)
                pair[0].image(shown, width="stretch")
                pair[1].image(seen, width="stretch", clamp=True)
                st.caption(caption)
            else:
                st.image(shown, caption=caption, width="stretch")


st.title("Dataset")
dataset = source_ui()
if dataset is None:
    if not catalog.dataset_candidates(session_owner()):
        st.info(HOW_TO_GET_DATA)
    st.stop()

manifest = manifest_of(dataset)
summary_tab, browse_tab = st.tabs(["Summary", "Browse"])
with summary_tab:
    summary_ui(dataset, manifest)
with browse_tab:
    browse_ui(dataset, manifest)
