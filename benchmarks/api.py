"""API benchmark: requests per second and p50/p95 latency of a real `python -m core serve` on localhost.

Usage: python benchmarks/api.py [--model PATH] [--duration 10] [--levels 1 8] [--photos 32]

It starts the server in a subprocess (waitress, the production setup), then for each concurrency level runs that
many client threads, each posting one of test1.zip's original-size photos (read in place, in memory) to
POST /predict in a loop for --duration seconds. Every request counts, decode and inference included. It prints a
table, the throughput ratio of the highest level to 1 client, and the same figures as one JSON line.
The clients share the machine with the server, so on a small machine they take some of its CPU.
"""

from __future__ import annotations

import argparse
import json
import os
import re
import subprocess
import sys
import tempfile
import threading
import time
import zipfile
from pathlib import Path

import numpy as np
import requests

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from core import config  # noqa: E402

ROOT = Path(__file__).resolve().parent.parent
JPEG = {"Content-Type": "image/jpeg"}


def resolve_model(arg: str | None) -> Path:
    """--model, else the default model (shipped, or the newest run)."""
    from core.runs import default_model_path

    path = Path(arg) if arg else default_model_path()
    if path is None:
        sys.exit("no model: pass --model or train one with `python -m core train SOURCE`")
    return path


def read_photos(test_zip: Path, n: int) -> list[bytes]:
    """The first n photos of test1.zip, in memory: real, original-size uploads."""
    with zipfile.ZipFile(test_zip) as zf:
        names = sorted(name for name in zf.namelist() if name.lower().endswith(".jpg"))[:n]
        return [zf.read(name) for name in names]


class Server:
    """`python -m core serve --port 0` in a subprocess; the port is read from its ready line."""

    def __init__(self, model: Path, timeout: float = 180):
        fd, name = tempfile.mkstemp(prefix="api-bench-", suffix=".log")
        os.close(fd)
        self.log = Path(name)
        env = {**os.environ, "PYTHONPATH": str(ROOT), "TF_CPP_MIN_LOG_LEVEL": "2"}
        command = [sys.executable, "-m", "core", "serve", "--port", "0", "--model", str(model)]
        with open(self.log, "w") as err:  # the child keeps its own copy of the handle
            self.proc = subprocess.Popen(command, cwd=ROOT, env=env, stdout=subprocess.DEVNULL, stderr=err)
        deadline = time.time() + timeout
        while not (found := re.search(r"serving model \S+ on (http://\S+)", self.log.read_text())):
            if self.proc.poll() is not None or time.time() > deadline:
                log = self.log.read_text()[-3000:]
                self.close()
                raise RuntimeError(f"the server did not start:\n{log}")
            time.sleep(0.2)
        self.url = found.group(1)

    def close(self) -> None:
        self.proc.terminate()
        try:
            self.proc.wait(timeout=15)
        except subprocess.TimeoutExpired:
            self.proc.kill()
            self.proc.wait()
        self.log.unlink(missing_ok=True)


def load_level(url: str, photos: list[bytes], clients: int, duration: float) -> dict:
    """Run `clients` threads posting photos for `duration` seconds; latency and throughput of what completed."""
    latencies: list[float] = []
    errors = 0
    lock = threading.Lock()
    start_gate = threading.Barrier(clients + 1)
    stop_at = [0.0]

    def client(worker: int) -> None:
        nonlocal errors
        mine, bad, i = [], 0, worker
        with requests.Session() as session:
            start_gate.wait()
            while time.perf_counter() < stop_at[0]:
                data = photos[i % len(photos)]
                i += clients
                began = time.perf_counter()
                try:
                    response = session.post(url + "/predict", data=data, headers=JPEG, timeout=30)
                    ok = response.status_code == 200
                except requests.RequestException:
                    ok = False
                if ok:
                    mine.append(time.perf_counter() - began)
                else:
                    bad += 1
        with lock:
            latencies.extend(mine)
            errors += bad

    threads = [threading.Thread(target=client, args=(w,)) for w in range(clients)]
    for t in threads:
        t.start()
    began = time.perf_counter()
    stop_at[0] = began + duration
    start_gate.wait()
    for t in threads:
        t.join()
    elapsed = time.perf_counter() - began  # includes the requests still in flight at the deadline
    ms = np.array(latencies) * 1000 if latencies else np.array([np.nan])
    return {
        "clients": clients,
        "requests": len(latencies),
        "errors": errors,
        "seconds": elapsed,
        "rps": len(latencies) / elapsed,
        "p50_ms": float(np.percentile(ms, 50)),
        "p95_ms": float(np.percentile(ms, 95)),
    }


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--model", help="model to serve (default: shipped model, else newest run, else train one)")
    parser.add_argument("--duration", type=float, default=10.0, help="seconds per concurrency level (default 10)")
    parser.add_argument("--levels", type=int, nargs="+", default=[1, 8], help="client counts (default: 1 8)")
    parser.add_argument("--photos", type=int, default=32, help="distinct test1.zip photos to cycle through")
    parser.add_argument("--train-zip", type=Path, default=config.KAGGLE_TRAIN_ZIP)
    parser.add_argument("--test-zip", type=Path, default=config.KAGGLE_TEST_ZIP)
    args = parser.parse_args()

    photos = read_photos(args.test_zip, args.photos)
    model = resolve_model(args.model)
    server = Server(model)
    try:
        health = requests.get(server.url + "/health", timeout=10).json()["model"]
        for photo in photos[:10]:  # warm-up: first-request costs are not what we measure
            requests.post(server.url + "/predict", data=photo, headers=JPEG, timeout=30)
        rows = [load_level(server.url, photos, clients, args.duration) for clients in args.levels]
    finally:
        server.close()

    print(
        f"model {health['name']} ({health['preset']}, {health['input']['size']}px {health['input']['color_mode']}), "
        f"{len(photos)} test1.zip photos, {args.duration:g} s per level, {os.cpu_count()} CPUs, waitress"
    )
    print(f"{'clients':>7} {'requests':>9} {'errors':>7} {'req/s':>8} {'p50 ms':>8} {'p95 ms':>8}")
    for r in rows:
        print(
            f"{r['clients']:>7} {r['requests']:>9} {r['errors']:>7} {r['rps']:>8.1f} "
            f"{r['p50_ms']:>8.1f} {r['p95_ms']:>8.1f}"
        )
    ratio = None
    if len(rows) > 1 and rows[0]["clients"] == 1 and rows[0]["rps"] > 0:
        ratio = rows[-1]["rps"] / rows[0]["rps"]
        print(f"{rows[-1]['clients']} vs 1 clients: {ratio:.2f}x the requests per second")
    print(json.dumps({"model": health, "levels": rows, "ratio": ratio}))
    return 0 if all(r["errors"] == 0 for r in rows) else 1


if __name__ == "__main__":
    sys.exit(main())
