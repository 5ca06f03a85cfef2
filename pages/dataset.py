"""Dataset page: choose the source, see what is in it, and browse the photos as the model sees them."""

from __future__ import annotations

import math
import time
from pathlib import Path

import streamlit as st

from core import config, datasets
from core.corrections import MyPhotos, corrections_path
from core.data import OK, DatasetError, summarize
from core.jobs import FinderBusy, owner_label
from core.label_issues import KINDS, FinderConfig, load_issues
from core.pipeline import ImageError, PipelineConfig, decode, decode_preview
from core.uploads import dataset_candidates
from ui import charts, review
from ui.confirm import confirm_button, forget
from ui.navigation import run_through_entrypoint
from ui.resources import (
    active_dataset,
    active_model,
    dataset_fingerprint,
    dataset_name,
    dataset_notice,
    dataset_scans,
    finder_jobs,
    open_source,
    remove_upload,
    save_upload,
    session_owner,
    session_uploads,
    set_active_dataset,
    training_manager,
)
from ui.status import clock, duration, plural

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


def _default_option(candidates: list[str], current: Path | None) -> str:
    """Where the source chooser starts: the active dataset's entry, else the folder box (a typed one), else a drop."""
    if current is not None and str(current) in candidates:
        return str(current)
    return FOLDER if current is not None else UPLOAD


def _describer(uploaded: dict[str, str]):
    def describe(option: str) -> str:
        if option == UPLOAD:
            return "Drop a zip"
        if option == FOLDER:
            return "A folder on this machine"
        return f"{uploaded[option]} (your upload)" if option in uploaded else f"{Path(option).name} (default)"

    return describe


def upload_ui() -> None:
    st.file_uploader(
        "Kaggle's train.zip, or a zip of cat/ and dog/ folders",
        type=["zip"],
        key="dataset_upload",
        on_change=_on_upload,
    )
    if error := st.session_state.pop("dataset_upload_error", None):
        st.error(error)


def source_ui() -> Path | None:
    """Draw the source chooser and return the chosen dataset, or None while there is none."""
    if notice := dataset_notice():
        st.warning(notice)
    mine = session_uploads()
    uploaded = {str(u.path): u.name for u in mine}
    candidates = [str(p) for p in dataset_candidates(session_owner())]
    current = active_dataset()
    options = [*candidates, UPLOAD, FOLDER]
    if st.session_state.get("dataset_choice") not in options:  # first visit, or its upload was removed
        st.session_state["dataset_choice"] = _default_option(candidates, current)
    choice = st.radio("Source", options, format_func=_describer(uploaded), key="dataset_choice", horizontal=True)
    uploads_ui(mine, expanded=choice == UPLOAD)
    if choice == UPLOAD:
        upload_ui()
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
        path = datasets.check_dataset(typed)
    except DatasetError as err:
        st.error(str(err))
        return None
    if problem := datasets.missing_classes(path.name, datasets.manifest_entries(manifest_of(path))):
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


# ---- Label issues: the finder in the background, then a review of its suspects ----------------------------------

PHASES = {
    "load": "Loading the photos",
    "train": "Training the model of fold",
    "score": "Scoring with the model of fold",
}
FINDER_HELP = (
    "Each photo is scored by a model that never trained on it (2 folds, each model trains on the other half), and "
    "cleanlab ranks the labels most likely wrong first; photos far from all the others, in what the model sees or in "
    "their edges (text cards, logos and drawings are flat areas and hard edges), are marked neither a cat nor a dog. "
    "All 20,000 photos of train.zip take 25 minutes on 2 CPU cores; the default scales with the photos."
)


def _start_finder(path: Path, fingerprint: str) -> None:
    budget = float(st.session_state.get("dataset_issues_budget", FinderConfig().time_budget_min))
    try:
        finder_jobs().start(path, fingerprint, FinderConfig(time_budget_min=budget), owner=session_owner())
    except FinderBusy as err:
        st.session_state["dataset_issues_busy"] = str(err)


def _cancel_finder(fingerprint: str) -> None:
    job = finder_jobs().get(fingerprint)
    if job is not None:
        job.cancel(by=session_owner())
    forget("dataset_issues_cancel_other")


@st.fragment(run_every=1.0)
def finder_progress_ui(fingerprint: str) -> None:
    """The running search: phase, progress, time left, and Cancel (another session's only after a confirmation)."""
    job = finder_jobs().get(fingerprint)
    state = job.snapshot() if job is not None else None
    if state is None or not state.running:
        st.rerun()  # finished: the whole page redraws with the result
    p = state.progress
    what = "Starting" if p is None else PHASES.get(p.phase, "Ranking the labels")
    if p is not None and p.fold:
        what += f" {p.fold} of {p.folds}"
    left = f" · about {duration(state.eta_s)} left" if state.eta_s is not None else ""
    st.progress(state.fraction, text=f"{what}{left} · running for {duration(time.time() - state.started_at)}")
    if state.owner == session_owner():
        st.button("Cancel search", key="dataset_issues_cancel", on_click=_cancel_finder, args=(fingerprint,))
        return
    st.caption(f"Started by {owner_label(state.owner)} at {clock(state.started_at)}.")
    question = f"Cancel the search {owner_label(state.owner)} started? What it has found so far is lost."
    confirm_button(
        "Cancel another session's search…",
        "dataset_issues_cancel_other",
        question,
        "Yes, cancel it",
        _cancel_finder,
        (fingerprint,),
    )


def default_budget_min(photos: int) -> float:
    """The finder's default budget (25 min for train.zip's 20,000 photos), scaled to this many, 1 to 25 minutes."""
    full = FinderConfig().time_budget_min
    return min(max(round(full * photos / 20_000 * 2) / 2, 1.0), full)


def finder_ui(path: Path, fingerprint: str, photos: int, searched: bool) -> None:
    """Start a search, or follow the running one; say how the last one in this server ended if it did not finish."""
    job = finder_jobs().get(fingerprint)
    if job is not None and job.running:
        finder_progress_ui(fingerprint)
        return
    state = job.snapshot() if job is not None else None
    if state is not None and state.status == "failed":
        st.error(f"The last search failed: {state.error}")
    elif state is not None and state.status == "cancelled":
        by = "you" if state.cancelled_by == session_owner() else owner_label(state.cancelled_by)
        st.info(f"The last search was cancelled by {by}; nothing it found was kept.")
    if busy := st.session_state.pop("dataset_issues_busy", None):
        st.warning(busy)
    training = training_manager().current
    if training is not None and training.running:
        st.caption(
            "A training run is in progress on this server: a search now shares the CPU with it, so in the same time "
            "its models train less and rank less well."
        )
    left, right = st.columns([1, 3], vertical_alignment="bottom")
    left.number_input(
        "Time budget (minutes)",
        0.5,
        600.0,
        default_budget_min(photos),
        0.5,
        key="dataset_issues_budget",
        help=FINDER_HELP,
    )
    right.button(
        "Search again" if searched else "Find label issues",
        key="dataset_issues_start",
        on_click=_start_finder,
        args=(path, fingerprint),
    )


def last_search_caption(saved) -> str:
    """What the saved search found, on which photos, when, and how well its models did."""
    meta = saved.meta
    counts, photos = meta.get("counts", {}), meta.get("photos", 0)
    folds = " and ".join(f"{a:.1%}" for a in meta.get("fold_accuracy", []))
    when = str(meta.get("finished_at", "?"))[:16].replace("T", " ")
    return (
        f"Last search {when} UTC on the {photos:,} photos of {meta.get('source')}: "
        f"{plural(counts.get('other-class', 0), 'photo')} probably of the other class, "
        f"{counts.get('neither', 0):,} neither a cat nor a dog. Out-of-fold accuracy {meta.get('accuracy', 0):.1%} on "
        f"those {photos:,} photos (folds {folds}); took {duration(meta.get('wall_time_s', 0))}."
    )


def label_issues_ui(path: Path, manifest) -> None:
    """The finder, then its suspects, most suspect first, with one-click corrections saved for this dataset."""
    fingerprint = dataset_fingerprint(path)
    counts = summarize(manifest)
    saved = load_issues(fingerprint)  # the last finished search (any session's, from disk), also while one runs
    finder_ui(path, fingerprint, counts["cats"] + counts["dogs"], saved is not None)
    if saved is None:
        return
    st.caption(last_search_caption(saved))
    suspects = saved.suspects
    left, right = st.columns(2)
    kind = left.selectbox("Kind", ["all", *KINDS], key="dataset_issues_kind")
    status = right.selectbox("Show", ["all", "to review", "reviewed"], key="dataset_issues_status")
    if kind != "all":
        suspects = suspects[suspects.kind == kind]
    _, corrections = review.corrections_of(path)
    if corrections is not None and corrections.photos:
        done = corrections.summary()
        st.caption(
            f"Reviewed so far: {done['relabelled']:,} relabelled, {done['excluded']:,} excluded, {done['reviewed']:,} "
            f"right, saved for training in `{corrections_path(fingerprint)}`."
        )
    if status != "all" and corrections is not None:
        reviewed = suspects.file.isin(list(corrections.photos))
        suspects = suspects[reviewed if status == "reviewed" else ~reviewed]
    captions = [
        f"**{Path(r.file).name}** · {r.kind} · given {r.given_label}, P(dog) {r.p_dog:.2f} · score {r.score:.4f}"
        for r in suspects.itertuples()
    ]
    review.gallery_ui("dataset_issues", path, suspects, captions)


# ---- My photos ------------------------------------------------------------------------------------------------


def _prune(shas: list[str]) -> None:
    removed = MyPhotos().prune(shas)
    st.toast(f"Removed {plural(removed, 'photo')} from my photos")
    forget("dataset_my_clear")


def my_photos_ui() -> None:
    """The photos users labelled on the Predict page ("Wrong? Correct it."): browse and remove them."""
    store = MyPhotos()
    photos = store.list()
    counts = {label: sum(p.label == label for p in photos) for label in config.CLASS_NAMES}
    st.caption(
        f"{plural(counts['cat'], 'cat')} and {plural(counts['dog'], 'dog')} labelled on the Predict page (by anyone "
        "on this server), kept by content (the same photo twice is stored once), as cat/ and dog/ folders: a "
        "dataset of their own that training can add."
    )
    if not photos:
        st.caption("No photos yet: on the Predict page, “Wrong? Correct it.” adds a photo here with its right label.")
        return
    pages = math.ceil(len(photos) / PER_PAGE)
    page = st.pagination(pages, key="dataset_my_page", max_visible_pages=9) if pages > 1 else 1
    columns = st.columns(GRID_COLUMNS)
    for i, photo in enumerate(photos[(page - 1) * PER_PAGE : page * PER_PAGE]):
        with columns[i % GRID_COLUMNS]:
            try:
                st.image(decode_preview(photo.path.read_bytes(), THUMB_SIDE), width="stretch")
            except (ImageError, OSError):
                st.caption("(cannot be shown)")
            st.caption(
                f"**{photo.label}** · {photo.name or photo.sha256[:12]} · {photo.added_at[:16].replace('T', ' ')} UTC"
            )
            st.button("Remove", key=f"dataset_my_remove_{photo.sha256[:16]}", on_click=_prune, args=([photo.sha256],))
    question = f"Remove all {plural(len(photos), 'photo')} from my photos, for every session of this server?"
    confirm_button(
        "Remove all…", "dataset_my_clear", question, "Yes, remove them all", _prune, ([p.sha256 for p in photos],)
    )


st.title("Dataset")
dataset = source_ui()
if dataset is None:
    if not dataset_candidates(session_owner()):
        st.info(HOW_TO_GET_DATA)
    st.stop()

manifest = manifest_of(dataset)
summary_tab, browse_tab, issues_tab, mine_tab = st.tabs(["Summary", "Browse", "Label issues", "My photos"])
with summary_tab:
    summary_ui(dataset, manifest)
with browse_tab:
    browse_ui(dataset, manifest)
with issues_tab:
    label_issues_ui(dataset, manifest)
with mine_tab:
    my_photos_ui()
