"""The dashboard as a user meets it: a real `streamlit run` server and Debian's Chromium, for tests and benchmarks."""

from __future__ import annotations

import os
import shutil
import socket
import subprocess
import sys
import time
import urllib.request
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from types import SimpleNamespace

ROOT = Path(__file__).resolve().parent.parent
CHROMIUM = "/usr/bin/chromium"  # Playwright's own browser download does not work here
# Without the networking flags Chromium's background connections fail on a closed network.
CHROMIUM_ARGS = [
    "--no-sandbox",
    "--disable-gpu",
    "--disable-background-networking",
    "--disable-component-update",
    "--disable-sync",
    "--no-first-run",
]
# The app has finished a script run when this is present.
IDLE = "[data-testid='stApp'][data-test-script-state='notRunning']"


def free_port() -> int:
    """A localhost port nobody listens on right now."""
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


def start_server(
    env: dict[str, str], log: Path, port: int | None = None, address: str | None = "127.0.0.1"
) -> tuple[subprocess.Popen, str]:
    """Start `streamlit run streamlit_app.py --server.headless true` with extra env (CVD_DATA_DIR, ...).

    address=None leaves the listening address to the project's .streamlit/config.toml.
    """
    port = port or free_port()
    command = [sys.executable, "-m", "streamlit", "run", "streamlit_app.py", "--server.headless", "true"]
    command += ["--server.port", str(port)] + (["--server.address", address] if address else [])
    proc = subprocess.Popen(
        command, cwd=ROOT, env={**os.environ, **env}, stdout=log.open("w"), stderr=subprocess.STDOUT
    )
    return proc, f"http://127.0.0.1:{port}"


def wait_healthy(proc: subprocess.Popen, url: str, log: Path, timeout: float = 120) -> None:
    """Block until the server answers its health check; raise with its log if it dies or hangs."""
    deadline = time.time() + timeout
    while time.time() < deadline:
        try:
            urllib.request.urlopen(f"{url}/_stcore/health", timeout=2)
            return
        except OSError:
            if proc.poll() is not None:
                raise RuntimeError(f"streamlit exited: {log.read_text()[-2000:]}") from None
            time.sleep(0.05)
    proc.kill()
    raise RuntimeError(f"streamlit did not answer within {timeout:.0f} s")


@contextmanager
def running_server(env: dict[str, str], log: Path, address: str | None = "127.0.0.1") -> Iterator[str]:
    """A healthy server for the duration of a with-block; yields its URL."""
    proc, url = start_server(env, log, address=address)
    try:
        wait_healthy(proc, url, log)
        yield url
    finally:
        proc.terminate()
        try:
            proc.wait(30)
        except subprocess.TimeoutExpired:
            proc.kill()


def launch_chromium(playwright):
    """Debian's Chromium under Playwright, with the flags this closed network needs."""
    return playwright.chromium.launch(executable_path=CHROMIUM, args=CHROMIUM_ARGS)


def screenshot(page, path: Path) -> None:
    """The whole page: Streamlit scrolls inside its main panel, so grow the viewport to fit it first."""
    size = page.viewport_size
    height = page.evaluate("document.querySelector(\"[data-testid='stMain']\").scrollHeight")
    page.set_viewport_size({"width": size["width"], "height": max(size["height"], int(height))})
    page.wait_for_timeout(500)  # charts resize to the new viewport
    path.parent.mkdir(parents=True, exist_ok=True)
    page.screenshot(path=str(path))
    page.set_viewport_size(size)


def server_dirs(base: Path, dataset: Path, run: Path) -> SimpleNamespace:
    """Empty data, runs and models folders under base for a test server: dataset linked in as its train.zip
    (the default dataset) and a copy of one run folder."""
    dirs = SimpleNamespace(data=base / "data", runs=base / "runs", models=base / "models")
    for folder in vars(dirs).values():
        folder.mkdir()
    (dirs.data / "train.zip").symlink_to(dataset)
    shutil.copytree(run, dirs.runs / run.name)
    return dirs
