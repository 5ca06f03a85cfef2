"""Several people on one dashboard: a real `streamlit run`, and one Chromium with a browser context per person.

Each context has its own cookies, as two people's browsers do; a reload keeps its context's cookies, as a real
reload does. That is what run and upload ownership rest on (ui.resources.session_owner).
"""

from __future__ import annotations

import json
import re
import shutil
import time
from pathlib import Path
from types import SimpleNamespace

import pytest
from harness import IDLE, launch_chromium, running_server, screenshot, server_dirs

from core.settings import MAX_EPOCHS

pytestmark = pytest.mark.browser

ARTIFACTS = Path(__file__).resolve().parent.parent / "test-artifacts"
LONG = 180_000  # ms: a 2-core CPU shared with training
VIEWPORT = {"width": 1400, "height": 1000}
OLD_RUN = "20000101-000000-seed-0ld1"


@pytest.fixture(scope="module")
def server(small_zip, tiny_model, tmp_path_factory):
    """A server whose default dataset is small_zip, with the tiny model's run and a symlinked run folder."""
    base = tmp_path_factory.mktemp("browser-sessions")
    dirs = server_dirs(base, small_zip, tiny_model.parent)
    shutil.copytree(tiny_model.parent, dirs.runs / OLD_RUN)
    (dirs.runs / "server-default.json").write_text(json.dumps({"model": OLD_RUN}))  # not the newest run
    shutil.copytree(tiny_model.parent, base / "elsewhere")
    (dirs.runs / "20990101-000000-seed-link").symlink_to(base / "elsewhere")
    env = {"CVD_DATA_DIR": str(dirs.data), "CVD_RUNS_DIR": str(dirs.runs), "CVD_MODELS_DIR": str(dirs.models)}
    with running_server(env, base / "server.log") as url:
        yield SimpleNamespace(url=url, env=env, base=base, **vars(dirs))


@pytest.fixture(scope="module")
def browser():
    from playwright.sync_api import sync_playwright

    with sync_playwright() as playwright:
        chromium = launch_chromium(playwright)
        yield chromium
        chromium.close()


@pytest.fixture
def person(browser):
    """A new browser context per call: another person, with cookies of their own."""
    contexts = []

    def new_person():
        context = browser.new_context(viewport=VIEWPORT)
        contexts.append(context)
        tab = context.new_page()
        tab.set_default_timeout(LONG)
        return tab

    yield new_person
    for context in contexts:
        context.close()


def open_page(page, server, path: str = ""):
    page.goto(f"{server.url}/{path}")
    page.wait_for_selector(IDLE)
    return page


def artifact(page, name: str) -> None:
    screenshot(page, ARTIFACTS / f"{name}.png")


def who(page) -> str:
    """The label other sessions see this browser's runs under, from its sidebar: "session 3f9a1c"."""
    line = page.get_by_test_id("stSidebar").get_by_text("This browser is").first
    return re.search(r"This browser is (session \w+)", line.inner_text())[1]


def set_slider(page, label: str, keys: list[str], echo: str) -> None:
    """Move a slider with the keyboard, as a user can, and see the server take it."""
    slider = page.get_by_test_id("stSlider").filter(has_text=label).get_by_role("slider")
    for key in keys:
        slider.press(key)
    page.get_by_text(echo).wait_for()


def wait_for_epoch(page, epoch: int, timeout_s: float = LONG / 1000) -> None:
    """Poll the progress line until it reports this epoch or a later one."""
    progress = page.get_by_text(re.compile(r"epoch \d+/\d+ · batch"))
    deadline = time.time() + timeout_s
    while time.time() < deadline:
        if progress.count():
            found = re.search(r"epoch (\d+)/", progress.first.inner_text())
            if found and int(found[1]) >= epoch:
                return
        time.sleep(0.1)
    raise AssertionError(f"training never reached epoch {epoch}")


def settings_table(page) -> dict[str, str]:
    """The "Settings of this run" lists the Train page draws from the job, as {setting: value}."""
    page.get_by_text("Settings of this run").wait_for()
    items = page.locator("[data-testid='stMain'] li").all_inner_texts()
    return dict(item.split(": ", 1) for item in items if ": " in item)


def listening_addresses(port: int) -> list[str]:
    """The local addresses of every listening TCP socket on this port, from the kernel's socket tables."""
    found = []
    for table in ("/proc/net/tcp", "/proc/net/tcp6"):
        for line in Path(table).read_text().splitlines()[1:]:
            fields = line.split()
            address, hex_port = fields[1].rsplit(":", 1)
            if fields[3] == "0A" and int(hex_port, 16) == port:  # 0A: LISTEN
                found.append(f"{table.rsplit('/', 1)[1]}:{address}")
    return found


def test_streamlit_run_with_the_projects_config_listens_only_on_localhost(server):
    # No --server.address: what the project's .streamlit/config.toml says is what a user gets.
    with running_server(server.env, server.base / "default-address.log", address=None) as url:
        port = int(url.rsplit(":", 1)[1])
        assert listening_addresses(port) == ["tcp:0100007F"]  # 127.0.0.1 only; not 0.0.0.0, not [::]


def test_a_run_is_owned_by_the_browser_that_started_it_and_a_reload_shows_its_settings(person, server):
    alice, bob = person(), person()
    open_page(alice, server, "train")
    alice_is = who(alice)
    set_slider(alice, "Batch size", ["Home"], "in batches of 8 ")
    set_slider(alice, "Epochs", ["End"], f"for {MAX_EPOCHS} epochs")  # 1,500+ batches: far longer than it waits
    alice.locator(".st-key-train_start button").click()
    alice.get_by_text("batches logged").wait_for()

    open_page(bob, server, "train")
    assert who(bob) != alice_is
    # .first: a fragment that redraws every second can briefly show its old copy beside the new one
    read_only = bob.get_by_test_id("stAlertContentInfo").filter(has_text=f"Started by another session ({alice_is})")
    read_only.first.wait_for()
    assert settings_table(bob)["epochs"] == str(MAX_EPOCHS) and settings_table(bob)["batch size"] == "8"
    assert bob.get_by_text("Start trains the seed preset for 10 epochs in batches of 32").count() == 1  # his own
    stop = bob.locator(".st-key-train_stop").get_by_role("button")  # a button with help is drawn twice, once hidden
    assert stop.inner_text() == "Stop their run…"
    stop.click()
    asked = bob.get_by_test_id("stAlertContentWarning").filter(has_text="This run belongs to another session")
    asked.wait_for()
    assert alice_is in asked.inner_text()
    artifact(bob, "train-non-owner")
    bob.locator(".st-key-train_stop_cancel button").click()
    asked.wait_for(state="detached")
    assert read_only.first.is_visible()  # still training

    alice.reload()  # a new Streamlit session, in the same browser
    alice.wait_for_selector(IDLE)
    alice.get_by_text("Settings of this run").wait_for()
    settings = settings_table(alice)
    assert (settings["dataset"], settings["preset"], settings["epochs"], settings["batch size"]) == (
        "train.zip",
        "seed",
        str(MAX_EPOCHS),
        "8",
    )
    assert settings["learning rate"] == "0.001" and settings["image"] == "80x80 grayscale"
    assert alice.get_by_text(f"Start trains the seed preset for {MAX_EPOCHS} epochs in batches of 8").count() == 1
    assert alice.get_by_test_id("stAlertContentInfo").filter(has_text="Started by another session").count() == 0
    assert "Started by you" in alice.get_by_test_id("stSidebar").inner_text()
    stop = alice.locator(".st-key-train_stop").get_by_role("button")
    assert stop.inner_text() == "Stop"
    wait_for_epoch(alice, 2)  # one epoch done: there is a best so far
    stop.click()  # the owner's Stop takes one click, after a reload too
    alice.get_by_test_id("stAlertContentSuccess").filter(has_text="Run was stopped").wait_for()
    assert alice.get_by_text("Stopped by").count() == 0


def test_an_upload_is_listed_only_for_the_browser_that_dropped_it(person, server, bad_inputs):
    alice, bob = person(), person()
    open_page(alice, server)
    alice.get_by_test_id("stRadio").get_by_text("Drop a zip").click()
    uploader = alice.locator(".st-key-dataset_upload").get_by_test_id("stFileUploaderDropzoneInput")
    uploader.set_input_files([{"name": "not-a-zip.zip", "mimeType": "application/zip", "buffer": b"plain text"}])
    error = alice.get_by_test_id("stAlertContentError")
    error.wait_for()
    assert error.inner_text() == "not-a-zip.zip: not a readable zip file"
    uploader.set_input_files([bad_inputs / "class-folders.zip"])
    alice.get_by_text("class-folders.zip (your upload)").wait_for()
    alice.get_by_test_id("stMetric").first.wait_for()  # scanned and summarised
    alice.wait_for_selector(IDLE)

    open_page(bob, server)
    assert bob.get_by_text("(your upload)").count() == 0 and bob.get_by_text("Your uploads").count() == 0
    assert "train.zip" in bob.get_by_test_id("stSidebar").inner_text()

    alice.reload()  # the browser keeps its uploads across a reload, and shows the default dataset again
    alice.wait_for_selector(IDLE)
    alice.get_by_text("class-folders.zip (your upload)").wait_for()
    alice.get_by_text("Your uploads (1)").click()
    alice.get_by_text("removed after 24 hours unused").wait_for()
    artifact(alice, "dataset-uploads")


def test_the_runs_page_asks_before_making_a_default_for_everyone_and_names_odd_folders(person, server):
    page = open_page(person(), server, "runs")
    odd = page.get_by_test_id("stAlertContentWarning").filter(has_text="Not listed as runs:")
    odd.wait_for()
    assert "20990101-000000-seed-link: a symbolic link" in odd.inner_text()
    assert page.get_by_test_id("stException").count() == 0
    page.wait_for_selector(IDLE)
    default = page.get_by_text(f"Default model for everyone: {OLD_RUN}")  # as made so before this server started
    assert default.count() == 1 and page.locator(".st-key-runs_make_default button").is_enabled()
    page.locator(".st-key-runs_make_default button").click()  # for the newest run, shown first
    asked = page.get_by_test_id("stAlertContentWarning").filter(has_text="default model for everyone")
    asked.wait_for()
    assert "Every session of this server" in asked.inner_text()
    artifact(page, "runs-make-default")
    page.locator(".st-key-runs_make_default_cancel button").click()
    asked.wait_for(state="detached")
