"""Fresh README screenshots of every dashboard page, taken in Chromium against real data.

Usage: python benchmarks/screenshots.py [--out docs/screenshots] [--photos 4000] [--epochs 4]

The server opens Kaggle's train.zip from ../shared/data through a symlink in a temp folder (nothing is copied into
the project), trains a short seed run live on a balanced slice, predicts unseen test1.zip photos with the app's
active model (the shipped default when there is one) and evaluates the shipped model on the photos it held out.
"""

from __future__ import annotations

import argparse
import sys
import tempfile
import zipfile
from pathlib import Path

from core import config
from core.config import ROOT

# The browser harness is test infrastructure (tests/harness.py): tests/ is not installed with core and ui,
# so this script, like pytest, finds it on the path.
sys.path.insert(0, str(ROOT / "tests"))
from harness import IDLE, launch_chromium, running_server, screenshot  # noqa: E402

VIEWPORT = {"width": 1400, "height": 1000}
WAIT = 600_000  # ms: training on a shared 2-core CPU


def settle(page) -> None:
    page.wait_for_selector(IDLE, timeout=WAIT)
    page.wait_for_timeout(1500)  # charts and images finish drawing after the script run ends


def dataset(page, url: str, out: Path) -> None:
    page.goto(url)
    page.get_by_test_id("stMetric").first.wait_for(timeout=WAIT)  # the 20,000-photo scan is done
    settle(page)
    screenshot(page, out / "dataset.png")
    page.get_by_role("tab", name="Browse").click()
    page.get_by_text("As the model sees it").click()
    settle(page)
    screenshot(page, out / "dataset-browse.png")


def train(page, url: str, out: Path, photos: int, epochs: int) -> None:
    page.goto(f"{url}/train")
    settle(page)
    box = page.get_by_role("spinbutton", name="Photos to use (0 = all)")
    box.fill(str(photos))
    box.press("Enter")
    page.get_by_text(f"on {photos:,} photos").wait_for(timeout=WAIT)
    slider = page.get_by_test_id("stSlider").filter(has_text="Epochs").get_by_role("slider")
    slider.press("Home")
    for _ in range(epochs - 1):
        slider.press("ArrowRight")
    page.get_by_text(f"for {epochs} epochs").wait_for(timeout=WAIT)
    page.locator(".st-key-train_start button").click()
    # Before epoch 1 ends the per-batch loss is drawn alone (the seed's learning rate is constant, said in words);
    # then the epoch curves join it.
    page.get_by_test_id("stVegaLiteChart").nth(1).wait_for(timeout=WAIT)
    page.wait_for_timeout(1500)
    screenshot(page, out / "train-live.png")
    page.get_by_test_id("stAlertContentSuccess").wait_for(timeout=WAIT)
    settle(page)
    screenshot(page, out / "train.png")


def predict(page, url: str, out: Path, tmp: Path) -> None:
    with zipfile.ZipFile(config.KAGGLE_TEST_ZIP) as zf:
        names = sorted(n for n in zf.namelist() if n.endswith(".jpg"))[:7]
        files = []
        for name in names:
            files.append(tmp / Path(name).name)
            files[-1].write_bytes(zf.read(name))
    files += [config.BAD_INPUTS / "gray16.png", config.BAD_INPUTS / "truncated.jpg"]  # a 16-bit PNG decodes
    page.goto(f"{url}/predict")
    settle(page)
    page.locator(".st-key-predict_files").get_by_test_id("stFileUploaderDropzoneInput").set_input_files(files)
    page.locator("[data-testid='stMain'] h4").nth(len(files) - 2).wait_for(timeout=WAIT)
    settle(page)
    screenshot(page, out / "predict.png")
    page.get_by_text("Show where the model looked").click()
    page.get_by_text("Grad-CAM").wait_for(timeout=WAIT)
    settle(page)
    screenshot(page, out / "predict-gradcam.png")


def runs(page, url: str, out: Path) -> None:
    page.goto(f"{url}/runs")
    settle(page)
    # The shipped model is inspected first; it is evaluated on the 2,000 photos of train.zip it never trained on.
    page.locator(".st-key-runs_evaluate").get_by_text("Evaluate").click()
    page.get_by_text("Misclassified photos").wait_for(timeout=WAIT)
    settle(page)
    screenshot(page, out / "runs.png")


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--out", type=Path, default=ROOT / "docs" / "screenshots")
    parser.add_argument("--photos", type=int, default=4000, help="photos for the live training run")
    parser.add_argument("--epochs", type=int, default=4)
    args = parser.parse_args()
    args.out.mkdir(parents=True, exist_ok=True)

    from playwright.sync_api import sync_playwright

    with tempfile.TemporaryDirectory(prefix="cvd-shots-") as tmp:
        tmp = Path(tmp)
        for folder in ("data", "runs", "photos"):
            (tmp / folder).mkdir()
        (tmp / "data" / "train.zip").symlink_to(config.KAGGLE_TRAIN_ZIP)
        env = {"CVD_DATA_DIR": str(tmp / "data"), "CVD_RUNS_DIR": str(tmp / "runs")}
        with running_server(env, tmp / "server.log") as url, sync_playwright() as playwright:
            browser = launch_chromium(playwright)
            page = browser.new_page(viewport=VIEWPORT)
            dataset(page, url, args.out)
            train(page, url, args.out, args.photos, args.epochs)
            predict(page, url, args.out, tmp / "photos")
            runs(page, url, args.out)
            browser.close()
    for shot in sorted(args.out.glob("*.png")):
        print(shot.relative_to(ROOT) if shot.is_relative_to(ROOT) else shot)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
