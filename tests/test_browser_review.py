"""Closing the loop in a real browser: a prediction corrected on Predict shows up in my photos on the Dataset page."""

from __future__ import annotations

import re
from pathlib import Path
from types import SimpleNamespace

import pytest
from harness import IDLE, launch_chromium, running_server, screenshot, server_dirs

from core.data import Source
from core.label_issues import FinderConfig, find_label_issues, save_issues

pytestmark = pytest.mark.browser

ARTIFACTS = Path(__file__).resolve().parent.parent / "test-artifacts"
LONG = 180_000  # ms: a 2-core CPU shared with training
QUICK = FinderConfig(image_size=32, train_scales=(1.0,), epochs=2, batch_size=16)


@pytest.fixture(scope="module")
def server(small_zip, tiny_model, tmp_path_factory):
    """A server whose default dataset is small_zip, with the tiny model's run and a saved label-issue search."""
    base = tmp_path_factory.mktemp("browser-review")
    dirs = server_dirs(base, small_zip, tiny_model.parent)
    save_issues(find_label_issues(small_zip, QUICK, cache_dir=False), dirs.data / "corrections")
    env = {"CVD_DATA_DIR": str(dirs.data), "CVD_RUNS_DIR": str(dirs.runs), "CVD_MODELS_DIR": str(dirs.models)}
    with running_server(env, base / "server.log") as url:
        yield SimpleNamespace(url=url, base=base, **vars(dirs))


@pytest.fixture
def page(server):
    from playwright.sync_api import sync_playwright

    with sync_playwright() as playwright:
        browser = launch_chromium(playwright)
        tab = browser.new_context(viewport={"width": 1400, "height": 1000}).new_page()
        tab.set_default_timeout(LONG)
        yield tab
        browser.close()


def open_page(page, server, path: str = ""):
    page.goto(f"{server.url}/{path}")
    page.wait_for_selector(IDLE)
    return page


def test_a_corrected_prediction_shows_up_in_my_photos(page, server, small_zip):
    photo = server.base / "drop" / "cat.1001.jpg"
    photo.parent.mkdir(exist_ok=True)
    photo.write_bytes(Source(small_zip).read("train/cat.1001.jpg"))
    open_page(page, server, "predict")
    page.locator(".st-key-predict_files").get_by_test_id("stFileUploaderDropzoneInput").set_input_files([photo])
    correct = page.get_by_role("button", name="Wrong? Correct it: a ")
    correct.wait_for()
    label = correct.inner_text().removeprefix("Wrong? Correct it: a ").strip()
    correct.click()
    page.get_by_text(f"In my photos as a {label}, for training").wait_for()
    page.wait_for_selector(IDLE)
    screenshot(page, ARTIFACTS / "predict-correct-it.png")

    open_page(page, server)
    page.get_by_role("tab", name="My photos").click()
    mine = page.get_by_text(f"{label} · cat.1001.jpg")
    mine.wait_for()
    assert (
        page.get_by_text(
            f"{'1 cat and 0 dogs' if label == 'cat' else '0 cats and 1 dog'} labelled on the Predict"
        ).count()
        == 1
    )
    screenshot(page, ARTIFACTS / "dataset-my-photos.png")


def test_the_review_gallery_and_a_confusion_cell_in_the_browser(page, server):
    open_page(page, server)
    page.get_by_role("tab", name="Label issues").click()
    page.get_by_text("Last search").wait_for()
    page.get_by_role("button", name="Exclude (neither)").first.click()
    page.get_by_text("excluded (neither)").wait_for()
    page.wait_for_selector(IDLE)
    screenshot(page, ARTIFACTS / "dataset-label-issues.png")
    assert list((server.data / "corrections").glob("*[0-9a-f].json"))  # the dataset's corrections file

    open_page(page, server, "runs")
    page.get_by_text("Evaluate", exact=True).click()
    page.get_by_text("Open a cell of the confusion matrix").wait_for()
    page.get_by_test_id("stButtonGroup").get_by_text("dogs right").click()
    page.get_by_text("most confident first. Corrections go to").wait_for()
    page.wait_for_selector(IDLE)
    screenshot(page, ARTIFACTS / "runs-confusion-cell.png")


def test_a_search_shows_its_progress_and_time_left_and_cancels(page, server):
    open_page(page, server)
    page.get_by_role("tab", name="Label issues").click()
    page.get_by_role("button", name="Search again").click()
    page.get_by_text(re.compile(r"· running for")).wait_for()  # the search is running
    page.get_by_text(re.compile(r"about .+ left · running for")).wait_for()  # and knows its time left
    screenshot(page, ARTIFACTS / "dataset-label-issues-running.png")
    page.get_by_role("button", name="Cancel search").click()
    page.get_by_text("The last search was cancelled by you").wait_for()
    page.get_by_text(re.compile("^Last search .* UTC on the 300 photos")).wait_for()  # the saved result is kept
