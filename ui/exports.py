"""The Runs page's downloads of a model in every export format, each built on demand, never at page load.

An export is made by core.fastpath.ensure_export_in_child (TensorFlow runs in a child process, not in the server)
and kept beside the model, keyed by its sha256, so a second visitor or a later visit downloads it at once.
"""

from __future__ import annotations

import logging

import streamlit as st

from core.export import FORMATS, ExportError, export_bundle, export_path
from core.fastpath import current_export, ensure_export_in_child
from core.registry import ModelChoice

FORMAT_LABELS = {
    "onnx": ("ONNX", "ONNX Runtime, OpenVINO, Triton"),
    "saved_model": ("SavedModel", "TensorFlow Serving"),
    "litert": ("LiteRT", "phones: the .tflite of Android and iOS"),
}
_ASKED_KEY = "runs_export_asked"
_log = logging.getLogger(__name__)


def _ask(fmt: str) -> None:
    # A callback, not the button's return value: that is gone if the script run is restarted before it is read.
    st.session_state[_ASKED_KEY] = fmt


def _build(model: ModelChoice, fmt: str) -> None:
    name = FORMAT_LABELS[fmt][0]
    with st.spinner(f"Exporting {model.name} to {name} (TensorFlow runs in a separate process; under a minute)…"):
        try:
            ensure_export_in_child(model.path, fmt, note=_log.info)
        except (ExportError, OSError) as err:
            _log.warning("could not export %s to %s: %s", model.path, fmt, err)
            st.error(f"{model.name} could not be exported to {name}: {err}")


def export_downloads_ui(model: ModelChoice) -> None:
    """Per export format, its download (the export, its metadata, an example script), or a button that builds it."""
    st.markdown("**Download for other runtimes**")
    columns = st.columns(len(FORMATS))
    for column, fmt in zip(columns, FORMATS, strict=True):
        name, runtimes = FORMAT_LABELS[fmt]
        with column:
            if st.session_state.get(_ASKED_KEY) == fmt:
                del st.session_state[_ASKED_KEY]
                _build(model, fmt)
            artifact = current_export(model.path, fmt)  # checks an export there (bytes and model hash); builds none
            if artifact is None:
                st.button(
                    f"Export to {name}", key=f"runs_export_{fmt}", help=f"For {runtimes}", on_click=_ask, args=(fmt,)
                )
                continue
            st.download_button(
                f"Download {name} (.zip)",
                lambda artifact=artifact: export_bundle(artifact),  # zipped only when clicked
                file_name=f"{model.name.replace(' ', '-').lower()}-{fmt}.zip",
                mime="application/zip",
                key=f"runs_export_{fmt}_download",
                on_click="ignore",
            )
    st.caption(
        "Each zip holds the export (uint8 RGB or gray in, P(dog) out; the /255 is inside), its metadata sidecar "
        "(preprocessing, labels, threshold, the mirrored second look for unsure photos, the accuracy and what it "
        "was measured on) and an example script that prints what `python -m core predict` prints. Exported files "
        f"are kept beside the model ({export_path(model.path, 'onnx').name}, …) and rebuilt when it changes."
    )
