"""Cats vs Dogs Studio: navigation and the status sidebar. Each page is a short script in pages/."""

import streamlit as st

from ui.resources import keep_keras_state, sweep_uploads_now_and_then, warm_up_model
from ui.status import render_sidebar

keep_keras_state()
sweep_uploads_now_and_then()
st.set_page_config(page_title="Cats vs Dogs Studio", page_icon=":material/pets:", layout="wide")

page = st.navigation(
    [
        st.Page("pages/dataset.py", title="Dataset", icon=":material/photo_library:", default=True),
        st.Page("pages/train.py", title="Train", icon=":material/model_training:"),
        st.Page("pages/predict.py", title="Predict", icon=":material/pets:"),
        st.Page("pages/runs.py", title="Runs", icon=":material/history:"),
    ]
)
with st.sidebar:
    st.header(":material/pets: Cats vs Dogs Studio", divider="gray")
    render_sidebar()
try:
    page.run()
finally:  # also when the page stops early (st.stop); once per server, after its first page is drawn
    warm_up_model()
