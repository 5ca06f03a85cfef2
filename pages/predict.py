"""Predict page: drop photos or use the camera, see each label and P(dog), and where the model looked."""

from __future__ import annotations

import tempfile
from pathlib import Path

import streamlit as st

from core import catalog
from core.catalog import ModelChoice
from core.data import DatasetError, Source
from core.pipeline import ImageError
from core.predict import Prediction, predictions_frame, submission_frame
from ui.navigation import run_through_entrypoint
from ui.resources import active_model, model_notice, predictor, set_session_model

run_through_entrypoint()

IMAGE_TYPES = ["jpg", "jpeg", "png", "webp", "bmp"]
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
    available = {choice.key: choice for choice in catalog.choices()}
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
    st.caption(f"Accuracy measured on {choice.measured_on}.")
    return choice


def _cached(kind: str, model: ModelChoice, files: list, compute) -> list:
    # Per session and per model, so toggling an option or adding one photo does not redo the others.
    version = (kind, model.key, model.path.stat().st_mtime_ns)
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


def predict_files(model: ModelChoice, files: list) -> list[Prediction]:
    """One prediction per file, in order; a hostile file gets its own error and the others still run."""

    def labels(todo: list) -> list[Prediction]:
        return predictor(model.path).predict_many([(f.name, f.getvalue(), None) for f in todo])

    return _cached("labels", model, files, labels)


def explain_files(model: ModelChoice, files: list) -> list:
    """Grad-CAM overlays at the photos' original size (None for a file that cannot be explained)."""
    from core.gradcam import explain

    def overlays(todo: list) -> list:
        found = []
        for f in todo:
            try:
                found.append(explain(predictor(model.path), f.getvalue()).overlay)
            except ImageError:
                found.append(None)
        return found

    return _cached("gradcam", model, files, overlays)


def gallery_ui(files: list, predictions: list[Prediction], overlays: list | None) -> None:
    columns = st.columns(COLUMNS)
    for i, (file, prediction) in enumerate(zip(files[:GALLERY_MAX], predictions, strict=False)):
        with columns[i % COLUMNS], st.container(border=True):
            if prediction.error:
                st.error(f"**{file.name}**: {prediction.error}", icon=":material/block:")
                continue
            shown = overlays[i] if overlays and overlays[i] is not None else file.getvalue()
            st.image(shown, width="stretch")
            st.markdown(f"#### :{COLORS[prediction.label]}[:material/pets: {prediction.label}]")
            st.progress(prediction.prob_dog, text=f"P(dog) = {prediction.prob_dog:.3f} · {file.name}")
    if len(files) > GALLERY_MAX:
        st.caption(f"Showing the first {GALLERY_MAX} of {len(files)} photos; the table below has them all.")


def legend_ui() -> None:
    from core.gradcam import LEGEND, legend

    st.image(legend(512, 14), width=512)
    st.caption(f"Where the model looked (Grad-CAM, last convolutional layer): {LEGEND}.")


def csv_download(label: str, frame, file_name: str, key: str) -> None:
    """A download button for a table as CSV; clicking it does not rerun the page."""
    data = frame.to_csv(index=False)
    st.download_button(label, data, file_name=file_name, mime="text/csv", key=key, on_click="ignore")


def submission_ui(model: ModelChoice) -> None:
    """A zip of unlabeled photos, named like Kaggle's test1/123.jpg, becomes a submission CSV."""
    archive = st.file_uploader("A zip of unlabeled photos, like Kaggle's test1.zip", type=["zip"], key="predict_zip")
    if archive is None:
        return
    predictions = _cached("submission", model, [archive], lambda todo: [predict_archive(model, todo[0])])[0]
    if isinstance(predictions, str):
        st.error(predictions)
        return
    frame = submission_frame(predictions)
    errors = predictions_frame([p for p in predictions if p.error])
    st.success(
        f"{len(frame):,} rows in submission.csv: {len(predictions) - len(errors):,} photos labeled; "
        f"{len(errors):,} could not be read and get the fallback label (Kaggle needs every id)."
    )
    csv_download("Download submission.csv", frame, "submission.csv", "predict_submission_download")
    if len(errors):
        st.dataframe(errors[["file", "error"]], hide_index=True, width="stretch")


def predict_archive(model: ModelChoice, archive) -> list[Prediction] | str:
    """Every photo in an uploaded zip, or the reason the zip cannot be read."""
    bar = st.progress(0.0, text="Reading the zip…")
    with tempfile.TemporaryDirectory() as tmp:
        path = Path(tmp) / "upload.zip"
        path.write_bytes(archive.getvalue())
        try:
            source = Source(path)
        except DatasetError as err:
            return f"{archive.name}: {err}"
        items = [(item.name, lambda n=item.name: source.read(n), item.refusal) for item in source.listing]
        predictions = predictor(model.path).predict_many(
            items, progress=lambda done: bar.progress(done / len(items), text=f"Predicted {done:,} / {len(items):,}")
        )
    bar.empty()
    return predictions


st.title("Predict")
model = model_ui()
if model is None:
    st.stop()
files = st.file_uploader(
    "Drop photos here", type=IMAGE_TYPES, accept_multiple_files=True, key="predict_files", max_upload_size=64
)
left, right = st.columns(2)
show_cam = left.toggle("Show where the model looked", key="predict_gradcam")
if right.toggle("Use the camera", key="predict_use_camera"):
    photo = st.camera_input("Take a photo", key="predict_camera")
    files = [*(files or []), *([photo] if photo else [])]
if files:
    predictions = predict_files(model, files)
    overlays = None
    if show_cam:
        try:
            overlays = explain_files(model, files[:GALLERY_MAX])
            legend_ui()
        except Exception as err:  # an optional view must not take the predictions down with it
            st.warning(f"Could not show where the model looked: {type(err).__name__}: {err}")
    gallery_ui(files, predictions, overlays)
    table = predictions_frame(predictions)
    st.dataframe(table, hide_index=True, width="stretch")
    csv_download("Download results (CSV)", table, "predictions.csv", "predict_download")
else:
    st.caption("JPEG, PNG, WebP or BMP; many at once. Nothing is stored.")
with st.expander("Kaggle submission from a zip"):
    submission_ui(model)
