"""End to end: a real `streamlit run` server driven by a real Chromium through Playwright."""

from __future__ import annotations

import re
import shutil
import time
from pathlib import Path
from types import SimpleNamespace

import pytest
from harness import IDLE, launch_chromium, running_server, screenshot

from core.data import Source
from core.settings import MAX_EPOCHS

pytestmark = pytest.mark.browser

ARTIFACTS = Path(__file__).resolve().parent.parent / "test-artifacts"
LONG = 180_000  # ms: a 2-core CPU shared with training


@pytest.fixture(scope="module")
def server(small_zip, train_zip, tiny_model, tmp_path_factory):
    """A server whose default dataset is small_zip and whose one saved run is the tiny model.

    Kaggle's train.zip can be typed as a folder path too: its folder is an allowed data root (CVD_DATA_ROOTS).
    """
    base = tmp_path_factory.mktemp("browser-app")
    dirs = SimpleNamespace(data=base / "data", runs=base / "runs", models=base / "models")
    for folder in vars(dirs).values():
        folder.mkdir()
    (dirs.data / "train.zip").symlink_to(small_zip)
    shutil.copytree(tiny_model.parent, dirs.runs / tiny_model.parent.name)
    env = {"CVD_DATA_DIR": str(dirs.data), "CVD_RUNS_DIR": str(dirs.runs), "CVD_MODELS_DIR": str(dirs.models)}
    env["CVD_DATA_ROOTS"] = str(train_zip.parent)
    with running_server(env, base / "server.log") as url:
        yield SimpleNamespace(url=url, **vars(dirs))


@pytest.fixture(scope="module")
def browser():
    from playwright.sync_api import sync_playwright

    with sync_playwright() as playwright:
        chromium = launch_chromium(playwright)
        yield chromium
        chromium.close()


@pytest.fixture
def page(browser):
    context = browser.new_context(viewport={"width": 1400, "height": 1000})
    tab = context.new_page()
    tab.set_default_timeout(LONG)
    yield tab
    context.close()


def open_page(page, server, path: str = ""):
    page.goto(f"{server.url}/{path}")
    page.wait_for_selector(IDLE)
    return page


def artifact(page, name: str) -> None:
    screenshot(page, ARTIFACTS / f"{name}.png")


def use_photos(page, count: int) -> None:
    """Train on a balanced slice: type into the 'Photos to use' box, commit it, and see the server take it."""
    box = page.get_by_role("spinbutton", name="Photos to use (0 = all)")
    box.fill(str(count))
    box.press("Enter")
    page.get_by_text(f"on {count:,} photos").wait_for()


def set_slider(page, label: str, keys: list[str], echo: str) -> None:
    """Move a slider with the keyboard (Home, End, arrows), as a user can, and see the server take it."""
    slider = page.get_by_test_id("stSlider").filter(has_text=label).get_by_role("slider")
    for key in keys:
        slider.press(key)
    page.get_by_text(echo).wait_for()


def batches_logged(page) -> int:
    found = re.search(r"([\d,]+) batches logged", page.get_by_text("batches logged").inner_text())
    return int(found.group(1).replace(",", ""))


def wait_for_epoch(page, epoch: int, timeout_s: float = LONG / 1000) -> None:
    """Poll the progress line until it reports this epoch or a later one (an epoch can pass between redraws)."""
    progress = page.get_by_text(re.compile(r"epoch \d+/\d+ · batch"))
    deadline = time.time() + timeout_s
    while time.time() < deadline:
        if progress.count():
            found = re.search(r"epoch (\d+)/", progress.first.inner_text())
            if found and int(found[1]) >= epoch:
                return
        time.sleep(0.1)
    raise AssertionError(f"training never reached epoch {epoch}")


def test_dropping_two_photos_and_a_hostile_file_gives_two_labels_and_one_error(page, server, small_zip, bad_inputs):
    tmp = server.data.parent / "drop"
    tmp.mkdir(exist_ok=True)
    photos = []
    for name in ("train/cat.1001.jpg", "train/dog.1001.jpg"):
        photos.append(tmp / Path(name).name)
        photos[-1].write_bytes(Source(small_zip).read(name))
    open_page(page, server, "predict")
    uploader = page.locator(".st-key-predict_files").get_by_test_id("stFileUploaderDropzoneInput")
    uploader.set_input_files([*photos, bad_inputs / "text-named.jpg"])

    labels = page.locator("[data-testid='stMain'] h4")
    labels.nth(1).wait_for()
    page.get_by_text("not an image").wait_for()
    page.wait_for_selector(IDLE)
    assert labels.count() == 2
    assert all(re.search(r"\b(cat|dog)\b", text) for text in labels.all_inner_texts())
    errors = page.get_by_test_id("stAlertContentError")
    assert errors.count() == 1 and "text-named.jpg" in errors.inner_text()
    page.get_by_text("P(dog) = ").nth(1).wait_for()
    page.wait_for_selector(IDLE)
    assert page.get_by_text("P(dog) = ").count() == 2
    artifact(page, "predict")


def test_training_draws_live_curves_then_its_summary(page, server):
    open_page(page, server, "train")
    use_photos(page, 300)  # all of the server's small zip
    set_slider(page, "Batch size", ["Home"], "in batches of 8 ")
    # MAX_EPOCHS (at least 50) epochs of 30 batches: far longer than the test watches on any machine, so it never
    # races the run's end.
    set_slider(page, "Epochs", ["End"], f"for {MAX_EPOCHS} epochs")
    page.locator(".st-key-train_start button").click()

    page.get_by_text("batches logged").wait_for()
    seen = []  # (batches logged, charts drawn) each time we look, as a user watching the page would
    clicked = reloaded = False
    while not (reloaded and len({b for b, charts in seen if charts}) >= 4):  # the chart grew after the reload too
        if page.get_by_text("batches logged").is_visible():
            seen.append((batches_logged(page), page.get_by_test_id("stVegaLiteChart").count()))
            distinct = len({batches for batches, _ in seen})
            if distinct == 2 and not clicked:
                page.get_by_text("Augmentation", exact=True).click()  # another widget: a full rerun mid-run
                clicked = True
            elif distinct == 3 and not reloaded:
                artifact(page, "train-live")
                page.reload()  # the run lives in the server, not in the tab
                page.get_by_text("batches logged").wait_for()
                reloaded = True
        assert not page.get_by_test_id("stAlertContentSuccess").is_visible(), f"the run ended first: {seen}"
        time.sleep(0.2)
    assert [b for b, _ in seen] == sorted(b for b, _ in seen)  # after the click and the reload too
    wait_for_epoch(page, 2)  # one epoch done: the summary has a best epoch to show

    page.locator(".st-key-train_stop button").click()
    summary = page.get_by_test_id("stAlertContentSuccess").filter(has_text="Run was stopped")
    summary.wait_for()
    done = int(
        re.search(rf"(\d+) / {MAX_EPOCHS}", page.get_by_test_id("stMetric").filter(has_text="Epochs").inner_text())[1]
    )
    assert batches_logged(page) >= 30 * done >= 30  # 30 batches an epoch (240 training photos, batch 8)
    # epoch curves, per-batch loss (the seed's learning rate is constant) and the confusion matrix
    assert page.get_by_test_id("stVegaLiteChart").count() == 3
    artifact(page, "train")


def test_stop_ends_the_run_at_the_next_batch_and_keeps_it(page, server):
    open_page(page, server, "train")
    use_photos(page, 100)
    set_slider(page, "Epochs", ["End"], f"for {MAX_EPOCHS} epochs")  # far longer than this test waits
    page.locator(".st-key-train_start button").click()
    wait_for_epoch(page, 2)  # one epoch done: there is a best so far

    page.locator(".st-key-train_stop button").click()
    page.get_by_test_id("stAlertContentSuccess").filter(has_text="Run was stopped").wait_for()
    done = int(
        re.search(rf"(\d+) / {MAX_EPOCHS}", page.get_by_test_id("stMetric").filter(has_text="Epochs").inner_text())[1]
    )
    assert 1 <= done < MAX_EPOCHS
    assert page.locator(".st-key-train_stop button").is_disabled()
    artifact(page, "train-stopped")


def test_a_fresh_servers_first_visit_by_deep_link_gets_the_whole_app(page, server):
    # A new server, opened straight at /predict: the page must come with its sidebar and navigation, which
    # Streamlit 1.67 skips for a first visit to a page of a pages/ folder (ui.navigation fixes it).
    env = {"CVD_DATA_DIR": str(server.data), "CVD_RUNS_DIR": str(server.runs), "CVD_MODELS_DIR": str(server.models)}
    with running_server(env, server.data.parent / "deep-link-server.log") as url:
        page.goto(f"{url}/predict")
        page.get_by_role("heading", name="Predict", exact=True).wait_for()
        page.wait_for_selector(IDLE)
        sidebar = page.get_by_test_id("stSidebar")
        assert "Active model" in sidebar.inner_text()
        nav = page.get_by_test_id("stSidebarNav")
        assert all(nav.get_by_text(name, exact=True).count() == 1 for name in ("Dataset", "Train", "Predict", "Runs"))
        assert not page.get_by_test_id("stException").count()


def test_every_page_renders_and_the_sidebar_follows_navigation(page, server):
    open_page(page, server)
    sidebar = page.get_by_test_id("stSidebar")
    for name in ("Dataset", "Train", "Predict", "Runs"):
        page.get_by_test_id("stSidebarNav").get_by_text(name, exact=True).click()
        page.get_by_role("heading", name=name, exact=True).wait_for()
        page.wait_for_selector(IDLE)
        assert not page.get_by_test_id("stException").count()
        assert "150 cats · 150 dogs" in sidebar.inner_text() and "Active model" in sidebar.inner_text()
        artifact(page, f"page-{name.lower()}")
    assert page.get_by_test_id("stDataFrame").count() >= 1  # the runs table, with the runs trained above


def made_pictures(folder: Path) -> list[Path]:
    """A GIF, a TIFF, a 16-bit PNG and a 1x1 PNG, made here: formats a browser cannot all show as they are."""
    import cv2
    import numpy as np
    from PIL import Image

    rng = np.random.default_rng(1)
    folder.mkdir(exist_ok=True)
    colour = rng.integers(0, 255, (60, 80, 3), np.uint8)
    Image.fromarray(colour).convert("P").save(folder / "made.gif")
    Image.fromarray(colour).save(folder / "made.tif")
    cv2.imwrite(str(folder / "made16.png"), rng.integers(0, 65535, (60, 80), np.uint16))
    cv2.imwrite(str(folder / "made-1x1.png"), colour[:1, :1])
    return [folder / name for name in ("made.gif", "made.tif", "made16.png", "made-1x1.png")]


CARDS = (
    "[data-testid='stMain'] h4, [data-testid='stMain'] [data-testid='stAlertContentError'], "
    "[data-testid='stMain'] [data-testid='stAlertContentWarning']"
)


def test_every_hostile_file_and_odd_format_dropped_together_gets_its_own_card(page, server, bad_inputs):
    files = sorted(bad_inputs.iterdir()) + made_pictures(server.data.parent / "made")
    open_page(page, server, "predict")
    page.locator(".st-key-predict_files").get_by_test_id("stFileUploaderDropzoneInput").set_input_files(files)

    # One card per file: a label (h4) or its reason; nothing refused at the door, nothing crashed.
    download = page.get_by_test_id("stDownloadButton").filter(has_text="Download results (CSV)")
    download.wait_for()  # drawn after every card and the table
    page.wait_for_selector(IDLE)
    assert page.locator(CARDS).count() == len(files)
    assert not page.get_by_test_id("stException").count()
    assert page.get_by_test_id("stDataFrame").count() == 1 and download.count() == 1
    for picture in ("made.gif", "made.tif", "made16.png", "gray16.png", "rgba.png"):  # they decode: a label each
        assert page.get_by_text(re.compile(rf"P\(dog\) = [\d.]+ · {re.escape(picture)}")).count() == 1, picture
    errors = page.get_by_test_id("stAlertContentError").all_inner_texts()
    for name, reason in [("zero-byte.jpg", "empty"), ("bomb-20000x20000.png", "too many pixels")]:
        assert any(name in text and reason in text for text in errors), name
    assert sum("A whole zip of photos" in text for text in errors) == 3  # the three zips say where zips go
    artifact(page, "predict-every-file")


def test_stop_before_the_first_epoch_leaves_a_run_but_no_selectable_model(page, server, train_zip):
    open_page(page, server)  # this tab trains on Kaggle's 20,000 photos, so its first epoch is long
    page.get_by_text("A folder on this machine").click()
    box = page.get_by_role("textbox", name="Folder or zip path")
    box.fill(str(train_zip))
    box.press("Enter")
    page.get_by_test_id("stMetric").filter(has_text="10,000").first.wait_for()  # scanned: 10,000 cats
    page.get_by_test_id("stSidebarNav").get_by_text("Train", exact=True).click()
    page.get_by_role("heading", name="Train", exact=True).wait_for()
    use_photos(page, 4000)
    set_slider(page, "Batch size", ["Home"], "in batches of 8 ")  # 400 batches in the first epoch
    page.locator(".st-key-train_start button").click()
    # Training, not decoding (Stop then keeps nothing at all), and not a summary left by an earlier run.
    main = page.get_by_test_id("stMain")
    main.get_by_text(re.compile(r"Training: epoch 1/\d+ · batch \d+/400")).wait_for()
    page.locator(".st-key-train_stop button").click()

    warning = page.get_by_test_id("stAlertContentWarning").filter(has_text="before its first epoch ended")
    warning.wait_for()
    assert "no model was saved" in warning.inner_text()
    run_id = re.search(r"runs/([^/]+)/batches\.csv", warning.inner_text())[1]
    assert page.get_by_test_id("stVegaLiteChart").count() >= 1  # the losses of the batches it trained

    page.get_by_test_id("stSidebarNav").get_by_text("Predict", exact=True).click()
    page.get_by_role("heading", name="Predict", exact=True).wait_for()
    page.wait_for_selector(IDLE)
    page.locator(".st-key-predict_model").click()
    options = page.get_by_role("option")
    options.first.wait_for()
    assert not any(run_id in text for text in options.all_inner_texts())
    page.keyboard.press("Escape")

    page.get_by_test_id("stSidebarNav").get_by_text("Runs", exact=True).click()
    page.get_by_role("heading", name="Runs", exact=True).wait_for()
    page.wait_for_selector(IDLE)
    assert not page.get_by_test_id("stException").count()
    artifact(page, "runs-with-a-stopped-run")
