"""Load on the Celery path: concurrent clicks over HTTP on loopback for a fixed time, ``/health`` polled throughout.

Starts (unless given) a private ``redis-server`` on a free port, ``--workers`` worker processes
(``python -m xsam_backend worker --queues interactive``, fallback engine) and the web app in a
threaded WSGI server on 127.0.0.1; then ``--concurrency`` client threads post interactive
``/predict`` requests (one smart keypoint on a ``--size`` image) for ``--duration`` seconds while
another thread polls ``GET /health`` every 100 ms. Prints throughput, latency percentiles and
errors for both.

    .venv/bin/python bench/bench_load.py --duration 20 --concurrency 8 --workers 2
"""

from __future__ import annotations

import argparse
import logging
import os
import shutil
import socket
import subprocess
import sys
import tempfile
import threading
import time
from collections import Counter
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import redis
import requests
from PIL import Image
from werkzeug.serving import make_server

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))

from xsam_backend.dispatch import CeleryDispatcher  # noqa: E402
from xsam_backend.server.app import create_app  # noqa: E402
from xsam_backend.settings import Settings  # noqa: E402

CONFIG = (REPO / "label_config" / "interactive_brush.xml").read_text()


def free_port() -> int:
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        return int(probe.getsockname()[1])


def write_image(root: Path, width: int, height: int) -> None:
    """A yellow disk on grey, ``width x height`` pixels, at ``root/disk.png``."""
    yy, xx = np.mgrid[:height, :width]
    image = np.full((height, width, 3), 40, np.uint8)
    image[(xx - width / 2) ** 2 + (yy - height / 2) ** 2 < (min(width, height) / 4) ** 2] = (220, 200, 40)
    Image.fromarray(image).save(root / "disk.png")


def start_redis(workdir: Path) -> tuple[str, subprocess.Popen[bytes]]:
    binary = shutil.which("redis-server")
    if binary is None:
        raise SystemExit("redis-server not found; pass --redis-url")
    port = free_port()
    process = subprocess.Popen(
        [
            binary,
            "--port",
            str(port),
            "--bind",
            "127.0.0.1",
            "--save",
            "",
            "--appendonly",
            "no",
            "--dir",
            str(workdir),
        ],
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
    )
    client = redis.Redis(port=port, socket_connect_timeout=0.2)
    for _ in range(200):
        try:
            client.ping()
            return f"redis://127.0.0.1:{port}/0", process
        except redis.RedisError:
            time.sleep(0.05)
    raise SystemExit("redis-server did not start")


def start_workers(count: int, redis_url: str, root: Path, logs: Path) -> list[subprocess.Popen[bytes]]:
    env = {
        **os.environ,
        "REDIS_URL": redis_url,
        "XSAM_ENGINE": "fallback",
        "LOCAL_FILES_DOCUMENT_ROOT": str(root),
        "MEDIA_CACHE_DIR": str(root / "cache"),
        "LOG_LEVEL": "WARNING",
    }
    workers = []
    for index in range(count):
        log = (logs / f"worker-{index}.log").open("wb")
        workers.append(
            subprocess.Popen(
                [sys.executable, "-m", "xsam_backend", "worker", "--queues", "interactive", "--pool", "solo"],
                cwd=REPO,
                env=env,
                stdout=log,
                stderr=subprocess.STDOUT,
            )
        )
    return workers


@dataclass
class Samples:
    latencies_s: list[float] = field(default_factory=list)
    outcomes: Counter[str] = field(default_factory=Counter)
    lock: threading.Lock = field(default_factory=threading.Lock)

    def add(self, latency_s: float, outcome: str) -> None:
        with self.lock:
            self.latencies_s.append(latency_s)
            self.outcomes[outcome] += 1


def click_body(width: int, height: int, jitter: float) -> dict[str, object]:
    region = {
        "type": "keypointlabels",
        "from_name": "kp",
        "to_name": "image",
        "original_width": width,
        "original_height": height,
        "is_positive": True,
        "value": {"x": 50 + jitter, "y": 50 - jitter, "keypointlabels": ["Object"]},
    }
    task = {"id": 1, "data": {"image": "/data/local-files/?d=disk.png"}}
    return {"tasks": [task], "label_config": CONFIG, "params": {"context": {"result": [region]}}}


def run_clients(base: str, args: argparse.Namespace, clicks: Samples, health: Samples) -> float:
    stop = threading.Event()

    def client(seed: int) -> None:
        session = requests.Session()
        rng = np.random.default_rng(seed)
        while not stop.is_set():
            body = click_body(args.size[0], args.size[1], float(rng.uniform(-5, 5)))
            started = time.perf_counter()
            try:
                response = session.post(f"{base}/predict", json=body, timeout=60)
                ok = response.status_code == 200 and bool(response.json()["results"][0]["result"])
                outcome = (
                    "ok" if ok else f"HTTP {response.status_code}" if response.status_code != 200 else "empty"
                )
            except requests.RequestException as exc:
                outcome = type(exc).__name__
            clicks.add(time.perf_counter() - started, outcome)

    def poll_health() -> None:
        session = requests.Session()
        while not stop.is_set():
            started = time.perf_counter()
            try:
                response = session.get(f"{base}/health", timeout=5)
                outcome = (
                    "ok" if response.status_code == 200 and response.json()["status"] == "UP" else "not UP"
                )
            except requests.RequestException as exc:
                outcome = type(exc).__name__
            health.add(time.perf_counter() - started, outcome)
            stop.wait(0.1)

    threads = [threading.Thread(target=client, args=(i,)) for i in range(args.concurrency)]
    threads.append(threading.Thread(target=poll_health))
    started = time.perf_counter()
    for thread in threads:
        thread.start()
    time.sleep(args.duration)
    stop.set()
    for thread in threads:
        thread.join()
    return time.perf_counter() - started


def row(name: str, samples: Samples, elapsed_s: float) -> str:
    ms = np.array(samples.latencies_s) * 1e3
    count = len(ms)
    errors = sum(n for outcome, n in samples.outcomes.items() if outcome != "ok")
    p50, p99, worst = np.percentile(ms, [50, 99, 100]) if count else (float("nan"),) * 3
    detail = ", ".join(f"{k}: {v}" for k, v in sorted(samples.outcomes.items()) if k != "ok") or "-"
    return (
        f"| {name} | {count} | {count / elapsed_s:.1f} | {p50:.1f} | {p99:.1f} | {worst:.1f} | "
        f"{errors} ({detail}) |"
    )


def main() -> None:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--duration", type=float, default=20.0, help="seconds of load")
    parser.add_argument("--concurrency", type=int, default=8, help="client threads posting clicks")
    parser.add_argument("--workers", type=int, default=2, help="worker processes (solo pool each)")
    parser.add_argument(
        "--size", type=int, nargs=2, default=(640, 480), metavar=("W", "H"), help="image size"
    )
    parser.add_argument("--redis-url", default=None, help="use this Redis instead of a private one")
    args = parser.parse_args()
    logging.getLogger("werkzeug").setLevel(logging.WARNING)  # no access log line per request

    workdir = Path(tempfile.mkdtemp(prefix="bench-load-"))
    root = workdir / "images"
    root.mkdir()
    write_image(root, *args.size)
    redis_process = None
    redis_url = args.redis_url
    if redis_url is None:
        redis_url, redis_process = start_redis(workdir)
    workers = start_workers(args.workers, redis_url, root, workdir)
    settings = Settings(redis_url=redis_url, engine="fallback", log_level="WARNING")
    dispatcher = CeleryDispatcher(settings)
    app = create_app(settings, dispatcher=dispatcher)
    server = make_server("127.0.0.1", free_port(), app, threaded=True)
    base = f"http://127.0.0.1:{server.server_port}"
    serving = threading.Thread(target=server.serve_forever, daemon=True)
    serving.start()
    try:
        # Warm-up: every worker has built its engine and the image is in its cache.
        deadline = time.monotonic() + 60
        warm = 0
        while warm < 2 * args.workers and time.monotonic() < deadline:
            response = requests.post(f"{base}/predict", json=click_body(*args.size, 0.0), timeout=60)
            warm += response.status_code == 200
        if warm == 0:
            raise SystemExit(f"no click answered during warm-up; worker logs in {workdir}")
        clicks, health = Samples(), Samples()
        elapsed = run_clients(base, args, clicks, health)
    finally:
        server.shutdown()
        dispatcher.close()
        for worker in workers:
            worker.terminate()
        for worker in workers:
            worker.wait(10)
        if redis_process is not None:
            redis_process.terminate()
            redis_process.wait(10)
    print(
        f"\nInteractive clicks through Celery (fallback engine), {args.concurrency} clients, "
        f"{args.workers} workers, {args.size[0]}x{args.size[1]} image, {elapsed:.1f} s on loopback\n"
    )
    print("| requests | count | per second | p50 ms | p99 ms | max ms | errors |")
    print("|---|---|---|---|---|---|---|")
    print(row("POST /predict (click)", clicks, elapsed))
    print(row("GET /health (every 100 ms)", health, elapsed))
    shutil.rmtree(workdir, ignore_errors=True)
    sys.stdout.flush()
    # The Celery result backend keeps retrying its pub/sub connection to the stopped private Redis
    # in a thread that close() does not stop, which would keep the interpreter from exiting.
    os._exit(0)


if __name__ == "__main__":
    main()
