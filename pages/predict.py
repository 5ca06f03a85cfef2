"""Predict page: drop photos or use the camera, see each label and P(dog), and where the model looked."""

from __future__ import annotations

import hashlib
from collections.abc import Callable

import pandas as pd
import streamlit as st

from core import config, registry
from core.corrections import MyPhotos
from core.data import DatasetError, Source, dataset_version, iter_inputs
from core.gradcam import LEGEND, explain, legend
from core.pipeline import ImageError, decode_preview
from core.predict import Prediction, predictions_frame, submission_frame
from core.registry import ModelChoice
from ui.navigation import run_through_entrypoint
from ui.resources import active_model, model_notice, predictor, set_session_model
from ui.status import accuracy_text, plural

run_through_entrypoint()

IMAGE_TYPES = [ext.removeprefix(".") for ext in config.IMAGE_EXTENSIONS]  # every format the pipeline decodes
PREVIEW_SIDE = 480  # px: the cards show at most ~320 px; a 40 MP photo never travels to the browser whole
GALLERY_MAX = 48  # the table holds every result; the gallery shows the first ones
COLUMNS = 4
COLORS = {"cat": "orange", "dog": "blue"}


def _pick_model() -> None:
    try:
        set_session_model(st.session_state["predict_model"])
    except KeyError:  # deleted since the list was drawn: the page redraws with what is left
        st.session_state.pop("predict_model", None)


def model_ui() -> ModelChoice | None:
    """The model picker: the shipped default, if any, then saved runs; a pick is this session's, nobody else's."""
    if notice := model_notice():
        st.warning(notice)
    available = {choice.key: choice for choice in registry.choices()}
    if not available:
        st.info(
            "No model yet. Train one on the Train page (a few minutes on a CPU), or ship one as "
            "`models/default.keras` with `python -m core train train.zip --preset best`."
        )
        return None
    keys = list(available)
    active = active_model() or available[keys[0]]
    if st.session_state.get("predict_model") != active.key:  # follows picks made on the Train or Runs page
        st.session_state["predict_model"] = active.key if active.key in keys else keys[0]
    st.selectbox(
        "Model",
        keys,
        format_func=lambda key: available[key].label,
        key="predict_model",
        on_change=_pick_model,
        help=(
            "For this session only: other visitors keep their own. The default for everyone is set on the Runs "
            "page. Uploaded model files are never loaded."
        ),
    )
    choice = available[st.session_state["predict_model"]]
    accuracy, tip = accuracy_text(choice.score, choice.single_look)
    st.caption(f"Accuracy {accuracy}.", help=tip)
    return choice


def _cached(kind: str, model: ModelChoice, files: list, compute) -> list:
    # Per session and per model, so toggling an option or adding one photo does not redo the others.
    version = (kind, model.key, dataset_version(model.path))  # an upload's own version is its file_id
    cache = st.session_state.setdefault(f"predict_{kind}_cache", {})
    if cache.get("version") != version:
        cache.clear()
        cache["version"] = version
    todo = [f for f in files if f.file_id not in cache]
    if todo:
        cache.update(zip([f.file_id for f in todo], compute(todo), strict=True))
    for gone in cache.keys() - {f.file_id for f in files} - {"version"}:  # removed from the uploader
        del cache[gone]
    return [cache[f.file_id] for f in files]


ZIP_HERE = "a zip: drop it in “A whole zip of photos” below to label its photos, or on the Dataset page to train"


def predict_files(model: ModelChoice, files: list) -> list[Prediction]:
    """One prediction per file, in order; a hostile file gets its own error and the others still run."""

    def labels(todo: list) -> list[Prediction]:
        return predictor(model.path).predict_many(iter_inputs(todo, zip_refusal=ZIP_HERE))

    return _cached("labels", model, files, labels)


def preview_files(model: ModelChoice, files: list) -> list:
    """What each photo decodes to, small and 8-bit RGB, for its card (None where it cannot be decoded)."""

    def previews(todo: list) -> list:
        found = []
        for f in todo:
            try:
                found.append(None if f.name.lower().endswith(".zip") else decode_preview(f.getvalue(), PREVIEW_SIDE))
            except ImageError:
                found.append(None)
        return found

    return _cached("preview", model, files, previews)


def explain_files(model: ModelChoice, files: list) -> list:
    """Grad-CAM overlays at the photos' original size (None for a file that cannot be explained)."""

    def overlays(todo: list) -> list:
        found = []
        for f in todo:
            try:
                found.append(explain(predictor(model.path), f.getvalue()).overlay)
            except ImageError:
                found.append(None)
        return found

    return _cached("gradcam", model, files, overlays)


def card_ui(file, prediction: Prediction, picture, mine: dict[str, str]) -> None:
    """One file's card: the photo as decoded, its label and P(dog); or the reason it has none."""
    if prediction.error:
        st.error(f"**{file.name}**: {prediction.error}", icon=":material/block:")
        return
    if picture is not None:
        st.image(picture, width="stretch")
    st.markdown(f"#### :{COLORS[prediction.label]}[:material/pets: {prediction.label}]")
    st.progress(prediction.prob_dog, text=f"P(dog) = {prediction.prob_dog:.3f} · {file.name}")
    correct_ui(file, prediction, mine)


def _content_hash(file) -> str:
    # Per session and upload, so a rerun does not hash every photo again.
    cache = st.session_state.setdefault("predict_sha_cache", {})
    if file.file_id not in cache:
        cache[file.file_id] = hashlib.sha256(file.getvalue()).hexdigest()
    return cache[file.file_id]


def _correct(file, label: str) -> None:
    try:
        MyPhotos().add(file.getvalue(), label, file.name)
        st.toast(f"{file.name} is in my photos as a {label}")
    except (ImageError, ValueError, OSError) as err:
        st.session_state["predict_correct_error"] = f"{file.name} could not be added to my photos: {err}"


def _uncorrect(sha: str) -> None:
    MyPhotos().prune([sha])


def correct_ui(file, prediction: Prediction, mine: dict[str, str]) -> None:
    """ "Wrong? Correct it.": the photo goes into my photos (by content) with the other label; or Undo."""
    sha = _content_hash(file)
    if sha in mine:
        st.caption(f":material/check_circle: In my photos as a {mine[sha]}, for training")
        st.button("Undo", key=f"predict_uncorrect_{sha[:16]}", on_click=_uncorrect, args=(sha,))
        return
    right = config.CLASS_NAMES[1 - config.CLASS_NAMES.index(prediction.label)]
    st.button(
        f"Wrong? Correct it: a {right}",
        key=f"predict_correct_{sha[:16]}",
        on_click=_correct,
        args=(file, right),
        help=f"Adds this photo to my photos as a {right} (Dataset page), so training can learn from it",
    )


def gallery_ui(files: list, predictions: list[Prediction], pictures: list) -> None:
    if error := st.session_state.pop("predict_correct_error", None):
        st.error(error)
    mine = {photo.sha256: photo.label for photo in MyPhotos().list()}
    columns = st.columns(COLUMNS)
    for i, (file, prediction, picture) in enumerate(zip(files[:GALLERY_MAX], predictions, pictures, strict=False)):
        with columns[i % COLUMNS], st.container(border=True):
            try:
                card_ui(file, prediction, picture, mine)
            except Exception:  # one card that cannot be drawn must not take the others, the table or the CSV down
                st.warning(f"**{file.name}**: this card could not be drawn; its result is in the table below.")
    if len(files) > GALLERY_MAX:
        st.caption(f"Showing the first {GALLERY_MAX} of {len(files)} photos; the table below has them all.")


def results_table(predictions: list[Prediction]):
    """The results as shown: an empty error cell for a photo that was labeled, not 'None'."""
    table = predictions_frame(predictions)
    return table.assign(error=table.error.fillna(""))


def table_ui(table) -> None:
    """The results, with empty cells (not 'None') where a file has no label."""
    prob = [f"{p:.3f}" if pd.notna(p) else "" for p in table.prob_dog]
    shown = table.assign(label=table.label.fillna(""), prob_dog=prob)
    column = st.column_config.TextColumn("P(dog)", help="The model's probability that the photo shows a dog")
    st.dataframe(shown, hide_index=True, width="stretch", column_config={"prob_dog": column})


def legend_ui() -> None:
    st.image(legend(512, 14), width=512)
    st.caption(f"Where the model looked (Grad-CAM, last convolutional layer): {LEGEND}.")


def csv_download(label: str, frame, file_name: str, key: str) -> None:
    """A download button for a table as CSV; clicking it does not rerun the page."""
    data = frame.to_csv(index=False)
    st.download_button(label, data, file_name=file_name, mime="text/csv", key=key, on_click="ignore")


def submission_ui(model: ModelChoice) -> None:
    """Every photo of a dropped zip labeled: a results CSV, and Kaggle's submission when named like test1/123.jpg."""
    archive = st.file_uploader(
        "A zip of photos, e.g. Kaggle's test1.zip", type=["zip"], key="predict_zip", max_upload_size=1024
    )
    if archive is None:
        return
    bar = st.empty()

    def progress(done: int, total: int) -> None:
        bar.progress(done / max(total, 1), text=f"Predicted {done:,} / {total:,}")

    def labels(todo: list) -> list:
        bar.progress(0.0, text="Reading the zip…")
        return [predict_archive(model, todo[0], progress)]

    predictions = _cached("submission", model, [archive], labels)[0]
    bar.empty()
    if isinstance(predictions, str):
        st.error(predictions)
        return
    frame = submission_frame(predictions)
    failed = [p for p in predictions if p.error]
    labeled = plural(len(predictions) - len(failed), "photo")
    if len(frame):
        st.success(
            f"{plural(len(frame), 'row')} in submission.csv: {labeled} labeled; {len(failed):,} could not be read "
            "and get the fallback label (Kaggle needs every id)."
        )
        csv_download("Download submission.csv", frame, "submission.csv", "predict_submission_download")
    else:
        st.info(
            f"{labeled} labeled in {archive.name}, but none is named like Kaggle's test photos (test1/123.jpg), "
            "so there is no submission to make. Every result is in the table and its CSV."
        )
    table = results_table(predictions)
    csv_download("Download results (CSV)", table, "predictions.csv", "predict_zip_download")
    if not len(frame):
        table_ui(table)
    elif failed:
        table_ui(table[table.error != ""])


def predict_archive(model: ModelChoice, archive, progress: Callable[[int, int], None]) -> list[Prediction] | str:
    """Every photo in an uploaded zip, read from memory as a zip on disk is; or the reason the zip cannot be read."""
    try:
        source = Source.from_bytes(archive.name, archive.getvalue())  # the upload's own buffer, never a temp file
    except DatasetError as err:
        return str(err)
    items = list(source.inputs())
    return predictor(model.path).predict_many(items, progress=lambda done: progress(done, len(items)))


st.title("Predict")
model = model_ui()
if model is None:
    st.stop()
files = st.file_uploader(
    "Drop photos here",
    type=[*IMAGE_TYPES, "zip"],  # a zip is taken, to say where zips go, rather than refused with a bare red chip
    accept_multiple_files=True,
    key="predict_files",
    max_upload_size=64,
    help="Photos, up to 64 MB each. A zip of photos goes in “A whole zip of photos” below.",
)
left, right = st.columns(2)
show_cam = left.toggle("Show where the model looked", key="predict_gradcam")
if right.toggle("Use the camera", key="predict_use_camera"):
    photo = st.camera_input("Take a photo", key="predict_camera")
    files = [*(files or []), *([photo] if photo else [])]
if files:
    predictions = predict_files(model, files)
    pictures = preview_files(model, files[:GALLERY_MAX])
    if show_cam:
        try:
            overlays = explain_files(model, files[:GALLERY_MAX])
            pictures = [o if o is not None else p for o, p in zip(overlays, pictures, strict=True)]
            legend_ui()
        except Exception:  # an optional view must not take the predictions down with it
            st.warning("Could not show where the model looked for these photos; their labels are below.")
    gallery_ui(files, predictions, pictures)
    table = results_table(predictions)
    table_ui(table)
    csv_download("Download results (CSV)", table, "predictions.csv", "predict_download")
else:
    formats = ", ".join(ext.upper() for ext in IMAGE_TYPES if ext not in ("jpeg", "tiff"))
    st.caption(f"{formats}; many at once. Nothing is stored unless you correct a prediction.")
with st.expander("A whole zip of photos (results CSV, Kaggle submission)"):
    submission_ui(model)
