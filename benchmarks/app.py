"""Dashboard latency in a real browser: `streamlit run` to the first page, the first drop on a fresh server, and
a dropped photo to its label once the model is warm.

Usage: python benchmarks/app.py [--starts 3] [--drops 10] [--pause 3] [--data DIR] [--model-runs DIR]

Side by side, in one run, against Chromium driven by Playwright:
- cold start: from launching `streamlit run streamlit_app.py` to the first page done rendering (the app's script
  state is notRunning), with the Dataset page as the user finds it: data/train.zip present (a symlink to
  ../shared/data/dogs-vs-cats/train.zip when --data is not given). Target: at most 3 s.
- first drop: on that fresh server, --pause seconds after the first page appeared (a user finding the Predict page
  and a photo), one photo dropped on Predict to its label on screen. Timed with the server's background warm-up of
  the model (the default) and without it (CVD_WARM_UP_MODEL=0), on alternate fresh servers.
- drop to label: on one server, once the model is loaded and warm, from handing one photo to the uploader to its
  label on screen (upload, rerun, decode, inference and render). Target: at most 300 ms.
The model is the app's active one (the shipped default or a saved run); with none, a tiny seed model is trained
first on 200 photos into a temp folder (not timed).
"""

from __future__ import annotations

import argparse
import os
import statistics
import sys
import tempfile
import time
import zipfile
from pathlib import Path

from core import config, registry
from core.config import ROOT

# The browser harness is test infrastructure (tests/harness.py): tests/ is not installed with core and ui,
# so this script, like pytest, finds it on the path.
sys.path.insert(0, str(ROOT / "tests"))
from harness import IDLE, launch_chromium, start_server, wait_healthy  # noqa: E402

FIRST_RENDER_TARGET_S = 3.0
DROP_TO_LABEL_TARGET_MS = 300.0


def cold_start(browser, env: dict, log: Path, photo: Path, pause_s: float) -> tuple[float, float]:
    """Seconds from Popen(streamlit run) to the first page rendered; then ms for the first drop, pause_s later."""
    page = browser.new_page()
    page.goto("about:blank")  # the browser is up before the clock starts, as a user's is
    started = time.perf_counter()
    proc, url = start_server(env, log)
    try:
        wait_healthy(proc, url, log)  # the moment `streamlit run` says "You can now view your app"
        page.goto(url, timeout=60_000)
        page.wait_for_selector(IDLE, timeout=120_000)
        first_page = time.perf_counter() - started
        page.wait_for_timeout(pause_s * 1000)
        page.get_by_test_id("stSidebarNav").get_by_text("Predict", exact=True).click()
        return first_page, drop_on(page, photo)
    finally:
        page.close()
        proc.terminate()
        proc.wait(30)


# Timed in the page with a MutationObserver: Playwright's own waits poll at up to 500 ms intervals.
WATCH_FOR_LABEL = """() => {
    window.labelShown = new Promise(resolve => {
        const main = document.querySelector("[data-testid='stMain']");
        new MutationObserver((_, observer) => {
            if (main.querySelector("h4")) { observer.disconnect(); resolve(performance.now()); }
        }).observe(main, {childList: true, subtree: true});
    });
    return performance.now();
}"""


def drop_on(page, photo: Path) -> float:
    """Milliseconds from giving the Predict page's uploader one photo to its label being shown."""
    page.get_by_role("heading", name="Predict", exact=True).wait_for(timeout=60_000)
    page.wait_for_selector(IDLE, timeout=120_000)
    uploader = page.locator(".st-key-predict_files").get_by_test_id("stFileUploaderDropzoneInput")
    started = page.evaluate(WATCH_FOR_LABEL)
    uploader.set_input_files(photo)
    return page.evaluate("window.labelShown") - started


def drop_to_label(browser, url: str, photo: Path) -> float:
    """Milliseconds from giving the uploader one photo to its label being shown, in a fresh session."""
    page = browser.new_page()
    try:
        page.goto(f"{url}/predict", timeout=60_000)
        return drop_on(page, photo)
    finally:
        page.close()


def photos(out: Path, n: int) -> list[Path]:
    """n original-size, unlabeled Kaggle photos from test1.zip, written to a temp folder (never the project)."""
    with zipfile.ZipFile(config.KAGGLE_TEST_ZIP) as zf:
        names = sorted(name for name in zf.namelist() if name.endswith(".jpg"))[:n]
        for name in names:
            (out / Path(name).name).write_bytes(zf.read(name))
    return [out / Path(name).name for name in names]


def runs_with_a_model(runs_dir: Path, spare: Path) -> Path:
    """runs_dir if the app has a model there (or a shipped default); else a tiny seed model trained into spare."""
    config.RUNS_DIR = runs_dir
    if registry.choices():
        return runs_dir
    from core.settings import TrainConfig
    from core.train import train

    print(f"no model yet: training a tiny seed model on 200 photos into {spare}", file=sys.stderr)
    train(config.KAGGLE_TRAIN_ZIP, TrainConfig(epochs=1, limit=200), runs_dir=spare)
    config.RUNS_DIR = spare
    return spare


def measure(browser, env: dict, tmp: Path, photos_: list[Path], starts: int, pause_s: float) -> dict[str, list]:
    """Cold starts with their first drops, with and without the warm-up, then drops on a warm server."""
    found: dict[str, list] = {"starts": [], "first on": [], "first off": []}
    for i in range(starts):  # alternating, so both see the same spells of a noisy machine
        for mode in ("on", "off"):
            log = tmp / f"start{i}{mode}.log"
            warm = {"CVD_WARM_UP_MODEL": "1" if mode == "on" else "0"}
            first_page, first_drop = cold_start(browser, env | warm, log, photos_[0], pause_s)
            found["starts"].append(first_page)
            found[f"first {mode}"].append(first_drop)
    proc, url = start_server(env, tmp / "server.log")
    try:
        wait_healthy(proc, url, tmp / "server.log")
        drop_to_label(browser, url, photos_[0])  # loads and warms the model if not yet: not timed
        found["drops"] = [drop_to_label(browser, url, photo) for photo in photos_[1:]]
    finally:
        proc.terminate()
        proc.wait(30)
    return found


def report(found: dict[str, list], pause_s: float) -> None:
    """A table of medians and ranges, and the ratios that matter."""
    rows = [
        ("streamlit run -> first page (s)", found["starts"], FIRST_RENDER_TARGET_S, "{:.2f}"),
        (f"first drop, {pause_s:g} s after it, warm-up (ms)", found["first on"], None, "{:.0f}"),
        (f"first drop, {pause_s:g} s after it, no warm-up (ms)", found["first off"], None, "{:.0f}"),
        ("photo dropped -> label, model warm (ms)", found["drops"], DROP_TO_LABEL_TARGET_MS, "{:.0f}"),
    ]
    print(f"{'measure':<48}{'median':>10}{'min':>10}{'max':>10}{'target':>10}")
    for name, values, target, fmt in rows:
        cells = [fmt.format(v) for v in (statistics.median(values), min(values), max(values))]
        cells.append("" if target is None else fmt.format(target))
        print(f"{name:<48}" + "".join(f"{cell:>10}" for cell in cells))
    on, off, warm = (statistics.median(found[k]) for k in ("first on", "first off", "drops"))
    print(f"first drop: no warm-up / warm-up = {off / on:.1f}x; warm-up / later drops = {on / warm:.2f}x")
    met = statistics.median(found["starts"]) <= FIRST_RENDER_TARGET_S and warm <= DROP_TO_LABEL_TARGET_MS
    print("targets met" if met else "targets NOT met")


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--starts", type=int, default=3, help="cold starts to time, each with and without warm-up")
    parser.add_argument("--drops", type=int, default=10, help="photo drops to time on a warm server")
    parser.add_argument("--pause", type=float, default=3.0, help="seconds between the first page and the first drop")
    parser.add_argument("--data", type=Path, help="data folder the app opens (default: a temp one with train.zip)")
    parser.add_argument("--model-runs", type=Path, help="runs folder (default: the project's models/runs)")
    args = parser.parse_args()

    from playwright.sync_api import sync_playwright

    with tempfile.TemporaryDirectory(prefix="cvd-bench-app-") as tmp:
        tmp = Path(tmp)
        data = args.data
        if data is None:
            data = tmp / "data"
            data.mkdir()
            (data / "train.zip").symlink_to(config.KAGGLE_TRAIN_ZIP)
        runs = runs_with_a_model(args.model_runs or config.RUNS_DIR, tmp / "runs")
        env = {"CVD_DATA_DIR": str(data), "CVD_RUNS_DIR": str(runs), "CVD_MODELS_DIR": str(config.MODELS_DIR)}
        (tmp / "photos").mkdir()
        dropped = photos(tmp / "photos", args.drops + 1)
        with sync_playwright() as playwright:
            browser = launch_chromium(playwright)
            found = measure(browser, env, tmp, dropped, args.starts, args.pause)
            browser.close()
        model = registry.default_model()
    print(f"data: {data}  model: {model.name if model else '?'}  cpus: {os.cpu_count()}")
    report(found, args.pause)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
