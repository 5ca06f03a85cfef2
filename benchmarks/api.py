"""API benchmark: a real `python -m core serve` on localhost under photo load, stalled connections and hostile uploads.

Usage: python benchmarks/api.py [--model PATH] [--duration 10] [--levels 1 8] [--photos 32]
                                [--stalled 500] [--hostile-clients 8] [--hostile-rounds 3] [--rss-cap-gb 6]

It starts the server in a subprocess (waitress, the production setup), then:
- photo load: for each concurrency level, that many client threads post one of test1.zip's original-size photos
  (read in place, in memory) to POST /predict in a loop for --duration seconds; requests per second, p50/p95;
- stalled connections: /health latency on fresh connections, first alone, then with --stalled sockets open that
  each sent half a request and stalled (headers that never end, or a body that never comes), side by side;
- hostile uploads: --hostile-clients threads post hostile files made here (a PNG whose IDAT chunk claims ~3.7 GB,
  16-bit RGBA PNGs just under the 40 MP cap and at 14 MP, 19 MB of random bytes, a GIF whose logical screen is at
  the cap, a JPEG whose frame claims the cap but holds no data, a valid 25 MP photo) all at once, --hostile-rounds
  times each; the server's peak RSS (VmHWM in /proc/<pid>/status) after the photo load and after the hostile
  uploads, side by side.
A watchdog kills the server if its RSS passes --rss-cap-gb (the machine is shared), and says so.
It prints tables, ratios, and the same figures as one JSON line.
The clients share the machine with the server, so on a small machine they take some of its CPU.
"""

from __future__ import annotations

import argparse
import io
import json
import os
import re
import signal
import socket
import struct
import subprocess
import sys
import tempfile
import threading
import time
import urllib.parse
import zipfile
import zlib
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import cv2
import numpy as np
import requests
from PIL import Image

from core import config
from core.config import ROOT

JPEG = {"Content-Type": "image/jpeg"}


def resolve_model(arg: str | None) -> Path:
    """--model, else the default model, as the CLI picks it (core.registry.default_model)."""
    from core.registry import default_model

    path = Path(arg) if arg else getattr(default_model(), "path", None)
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
        env = {**os.environ, "TF_CPP_MIN_LOG_LEVEL": "2"}
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

    def memory_kb(self) -> dict:
        """The server's resident memory now (VmRSS) and at its peak so far (VmHWM), in kB."""
        fields = dict(line.split(":", 1) for line in Path(f"/proc/{self.proc.pid}/status").read_text().splitlines())
        return {key: int(fields[key].split()[0]) for key in ("VmRSS", "VmHWM")}

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


class RssWatchdog:
    """Kills the server if its RSS passes a cap, so a regression cannot take a shared machine down with it."""

    def __init__(self, server: Server, cap_kb: int):
        self.server, self.cap_kb, self.tripped_kb = server, cap_kb, None
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._watch, daemon=True)
        self._thread.start()

    def _watch(self) -> None:
        while not self._stop.wait(0.02):
            try:
                rss = self.server.memory_kb()["VmRSS"]
            except (OSError, KeyError):
                return
            if rss > self.cap_kb:
                self.tripped_kb = rss
                self.server.proc.send_signal(signal.SIGKILL)
                return

    def stop(self) -> None:
        self._stop.set()
        self._thread.join()


def health_latency(url: str, n: int = 20) -> dict:
    """n sequential GET /health on fresh connections (as a load balancer probes): p50 and max ms, failures."""
    ms, failures = [], 0
    for _ in range(n):
        began = time.perf_counter()
        try:
            ok = requests.get(url + "/health", timeout=10).status_code == 200
        except requests.RequestException:
            ok = False
        if ok:
            ms.append((time.perf_counter() - began) * 1000)
        else:
            failures += 1
    return {"p50_ms": float(np.median(ms)) if ms else None, "max_ms": max(ms) if ms else None, "failures": failures}


HALF_REQUESTS = (
    b"GET /health HTTP/1.1\r\nHost: bench\r\nX-Slow: ",  # headers that never end
    b"POST /predict HTTP/1.1\r\nHost: bench\r\nContent-Length: 100000\r\n\r\n" + b"\xff" * 1000,  # a stalled body
)


def stalled_level(server: Server, n: int) -> dict:
    """/health latency alone, then with n sockets that each sent half a request and stalled."""
    address = urllib.parse.urlsplit(server.url)
    alone = health_latency(server.url)
    sockets, refused = [], 0
    try:
        for i in range(n):
            try:
                sock = socket.create_connection((address.hostname, address.port), timeout=10)
                sock.sendall(HALF_REQUESTS[i % 2])
                sockets.append(sock)
            except OSError:
                refused += 1
        time.sleep(1)  # let the server's loop take them all in: we measure it holding them, not accepting them
        stalled = health_latency(server.url)
        still_open = sum(_still_open(sock) for sock in sockets)
        memory = server.memory_kb()
    finally:
        for sock in sockets:
            sock.close()
    return {"stalled": n, "refused": refused, "still_open": still_open, "alone": alone, "with_stalled": stalled,
            "rss_kb": memory["VmRSS"]}  # fmt: skip


def _still_open(sock: socket.socket) -> bool:
    # Open if nothing has arrived and no close either: a read would block.
    sock.setblocking(False)
    try:
        return sock.recv(1, socket.MSG_PEEK) != b""
    except BlockingIOError:
        return True
    except OSError:
        return False


def _chunk(kind: bytes, data: bytes, length: int | None = None) -> bytes:
    body = kind + data
    return struct.pack(">I", len(data) if length is None else length) + body + struct.pack(">I", zlib.crc32(body))


def _png(width: int, height: int, idat: bytes, depth: int = 8, color: int = 2, idat_length: int | None = None) -> bytes:
    header = _chunk(b"IHDR", struct.pack(">IIBBBBB", width, height, depth, color, 0, 0, 0))
    return b"\x89PNG\r\n\x1a\n" + header + _chunk(b"IDAT", idat, idat_length) + _chunk(b"IEND", b"")


def _zeros_png16_rgba(side: int) -> bytes:
    # A valid 16-bit RGBA PNG, compressed row by row so that it never needs the image in memory here.
    packer, row = zlib.compressobj(9), b"\0" * (1 + side * 8)
    idat = b"".join(packer.compress(row) for _ in range(side)) + packer.flush()
    return _png(side, side, idat, depth=16, color=6)


def hostile_files(max_pixels: int) -> dict[str, bytes]:
    """Heavy hostile uploads, made here: each tries to make the server spend memory or time."""
    side = int(max_pixels**0.5) - 8  # just under the pixel cap
    gif = io.BytesIO()
    Image.new("P", (1, 1)).save(gif, "GIF")
    gif = bytearray(gif.getvalue())
    gif[6:10] = struct.pack("<HH", side, side)  # a 1x1 frame on a logical screen at the cap
    jpeg = bytearray(cv2.imencode(".jpg", np.zeros((8, 8, 3), np.uint8))[1].tobytes())
    sof = jpeg.index(b"\xff\xc0")
    jpeg[sof + 5 : sof + 9] = struct.pack(">HH", side, side)
    rng = np.random.default_rng(0)
    photo = cv2.resize(rng.integers(0, 256, (500, 500, 3), np.uint8), (5000, 5000), interpolation=cv2.INTER_CUBIC)
    return {
        "idat-claims-3.7GB.png": _png(64, 48, zlib.compress(b"\0" * 100), idat_length=0xDDDDDDDD),
        f"rgba16-{side}px.png": _zeros_png16_rgba(side),
        "rgba16-3800px.png": _zeros_png16_rgba(3800),  # 14 MP: heavy, but within the per-image decode budget
        "random-19MB.jpg": rng.bytes(19 * 2**20),  # a body near the limit, on 8 threads at once
        f"gif-screen-{side}px.gif": bytes(gif),
        f"jpeg-frame-{side}px-no-data.jpg": bytes(jpeg[: sof + 200]) + b"\xff\xd9",
        "photo-25MP.jpg": cv2.imencode(".jpg", photo, [cv2.IMWRITE_JPEG_QUALITY, 90])[1].tobytes(),
    }


def hostile_level(server: Server, files: dict[str, bytes], clients: int, rounds: int, cap_kb: int) -> dict:
    """clients threads post every hostile file rounds times, all at once; the server's peak RSS, statuses, times."""
    before = server.memory_kb()
    watchdog = RssWatchdog(server, cap_kb)
    items = list(files.items()) * rounds
    answers: list[tuple[str, int | str, float]] = []

    def client(worker: int) -> None:
        with requests.Session() as session:
            for name, data in items[worker % len(files) :] + items[: worker % len(files)]:  # staggered
                began = time.perf_counter()
                try:
                    status = session.post(
                        server.url + "/predict", files={"file": (name, data)}, timeout=120
                    ).status_code
                except requests.RequestException as err:
                    status = type(err).__name__
                answers.append((name, status, time.perf_counter() - began))

    began = time.perf_counter()
    with ThreadPoolExecutor(clients) as pool:
        list(pool.map(client, range(clients)))
    elapsed = time.perf_counter() - began
    watchdog.stop()
    after = server.memory_kb() if watchdog.tripped_kb is None else {"VmHWM": watchdog.tripped_kb, "VmRSS": None}
    per_file = {
        name: {
            "statuses": sorted({str(status) for n, status, _ in answers if n == name}),
            "max_s": max(t for n, _, t in answers if n == name),
        }
        for name in files
    }
    return {"clients": clients, "rounds": rounds, "requests": len(answers), "seconds": elapsed,
            "hwm_before_kb": before["VmHWM"], "hwm_after_kb": after["VmHWM"], "rss_after_kb": after["VmRSS"],
            "killed_over_cap_kb": watchdog.tripped_kb, "files": per_file,
            "bytes": {name: len(data) for name, data in files.items()}}  # fmt: skip


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--model", help="model to serve (default: shipped model, else newest run, else train one)")
    parser.add_argument("--duration", type=float, default=10.0, help="seconds per concurrency level (default 10)")
    parser.add_argument("--levels", type=int, nargs="+", default=[1, 8], help="client counts (default: 1 8)")
    parser.add_argument("--photos", type=int, default=32, help="distinct test1.zip photos to cycle through")
    parser.add_argument("--stalled", type=int, default=500, help="sockets that send half a request and stall")
    parser.add_argument("--hostile-clients", type=int, default=8, help="hostile uploads at once (default 8)")
    parser.add_argument("--hostile-rounds", type=int, default=3, help="times each client posts each hostile file")
    parser.add_argument("--rss-cap-gb", type=float, default=6.0, help="kill the server past this RSS (default 6)")
    parser.add_argument("--train-zip", type=Path, default=config.KAGGLE_TRAIN_ZIP)
    parser.add_argument("--test-zip", type=Path, default=config.KAGGLE_TEST_ZIP)
    args = parser.parse_args()

    photos = read_photos(args.test_zip, args.photos)
    hostile = hostile_files(config.MAX_PIXELS)
    model = resolve_model(args.model)
    server = Server(model)
    try:
        health = requests.get(server.url + "/health", timeout=10).json()["model"]
        for photo in photos[:10]:  # warm-up: first-request costs are not what we measure
            requests.post(server.url + "/predict", data=photo, headers=JPEG, timeout=30)
        warm = server.memory_kb()
        rows = [load_level(server.url, photos, clients, args.duration) for clients in args.levels]
        after_photos = server.memory_kb()
        stalled = stalled_level(server, args.stalled)
        cap_kb = int(args.rss_cap_gb * 2**20)
        attack = hostile_level(server, hostile, args.hostile_clients, args.hostile_rounds, cap_kb)
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
    report_stalled(stalled)
    report_hostile(attack, warm, after_photos, max(args.levels))
    print(json.dumps({"model": health, "levels": rows, "ratio": ratio, "warm_kb": warm, "after_photos_kb": after_photos,
                      "stalled": stalled, "hostile": attack}))  # fmt: skip
    ok = stalled["with_stalled"]["failures"] == 0 and attack["killed_over_cap_kb"] is None
    return 0 if ok and all(r["errors"] == 0 for r in rows) else 1


def report_stalled(level: dict) -> None:
    """Print /health latency alone and beside the stalled sockets."""
    alone, stalled = level["alone"], level["with_stalled"]
    print(
        f"\nstalled connections: {level['stalled']} sockets sent half a request and stalled ({level['refused']} "
        f"refused, {level['still_open']} still open at the end); server RSS {level['rss_kb'] / 1024:.0f} MB"
    )
    print(f"{'GET /health':<28} {'p50 ms':>8} {'max ms':>8} {'failed':>7}")
    for label, row in (("alone", alone), (f"beside {level['stalled']} stalled", stalled)):
        p50 = f"{row['p50_ms']:.1f}" if row["p50_ms"] is not None else "-"
        worst = f"{row['max_ms']:.1f}" if row["max_ms"] is not None else "-"
        print(f"{label:<28} {p50:>8} {worst:>8} {row['failures']:>7}")
    if alone["p50_ms"] and stalled["p50_ms"]:
        print(f"p50 beside the stalled sockets / alone: {stalled['p50_ms'] / alone['p50_ms']:.2f}x")


def report_hostile(level: dict, warm: dict, after_photos: dict, photo_clients: int) -> None:
    """Print the server's peak RSS after photos and after hostile uploads, and what each hostile file got."""
    mb = 1024
    print(
        f"\nhostile uploads: {level['clients']} clients at once, each file {level['rounds']} times per client "
        f"({level['requests']} requests in {level['seconds']:.1f} s)"
    )
    print(f"server RSS warm: {warm['VmRSS'] / mb:.0f} MB (peak so far {warm['VmHWM'] / mb:.0f} MB)")
    print(f"peak RSS after {photo_clients} clients of photos: {after_photos['VmHWM'] / mb:.0f} MB")
    if level["killed_over_cap_kb"]:
        print(f"peak RSS under hostile uploads: over {level['killed_over_cap_kb'] / mb:.0f} MB: server killed")
    else:
        hwm = level["hwm_after_kb"]
        print(f"peak RSS after {level['clients']} hostile clients: {hwm / mb:.0f} MB "
              f"({hwm / after_photos['VmHWM']:.2f}x the photo load's peak)")  # fmt: skip
    print(f"{'file':<32} {'bytes':>10} {'answers':>14} {'slowest s':>10}")
    for name, row in level["files"].items():
        print(f"{name:<32} {level['bytes'][name]:>10,} {','.join(row['statuses']):>14} {row['max_s']:>10.2f}")


if __name__ == "__main__":
    sys.exit(main())
