"""``/predict`` overhead with a no-op engine, and the web process's resident memory.

Measures what the backend adds around the model for a 1-megapixel interactive request: request
parsing, label config, prompt, media (memory-cached after the first call), dispatch, brush RLE of
the returned mask, validation, JSON. The engine does no work: it returns a fixed disk mask.

    .venv/bin/python bench/bench_predict_overhead.py [--requests 300]

Prints p50/p99 of the server time (Flask in-process), then starts ``python _wsgi.py`` as a
separate process on the embedded default, sends it requests, and prints its resident memory.
"""

from __future__ import annotations

import argparse
import os
import socket
import statistics
import subprocess
import sys
import tempfile
import time
import urllib.request
from pathlib import Path

import cv2
import numpy as np

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from xsam_backend.dispatch import InlineDispatcher  # noqa: E402
from xsam_backend.prompt import Prompt, Task  # noqa: E402
from xsam_backend.segment import EngineResult, Segment  # noqa: E402
from xsam_backend.server.app import create_app  # noqa: E402
from xsam_backend.settings import Settings  # noqa: E402

W, H = 1280, 800  # 1.02 megapixels


class NoOpEngine:
    """Returns the same disk for every prompt: the benchmark measures everything but the model."""

    name = "noop"
    model_version = "noop-1"

    def __init__(self) -> None:
        self._mask = np.zeros((H, W), np.uint8)
        cv2.circle(self._mask, (W // 2, H // 2), 200, 1, -1)
        self._mask = self._mask.astype(bool)

    def supports(self, task: Task) -> bool:
        return True

    def predict(self, image: np.ndarray, prompt: Prompt, project: str | None = None) -> EngineResult:
        return EngineResult((Segment(self._mask, prompt.label, 0.9),), self.model_version, self.name)


def request_body(config: str) -> dict:
    keypoint = {
        "type": "keypointlabels", "from_name": "kp", "to_name": "image", "original_width": W,
        "original_height": H, "is_positive": True, "value": {"x": 50, "y": 50, "width": 0.5, "keypointlabels": ["Object"]},
    }
    return {"tasks": [{"id": 1, "data": {"image": "/data/local-files/?d=bench.png"}}], "label_config": config,
            "project": "1.1", "params": {"context": {"result": [keypoint]}}}


def percentile(values: list[float], q: float) -> float:
    ordered = sorted(values)
    return ordered[min(len(ordered) - 1, int(round(q / 100 * (len(ordered) - 1))))]


def server_time(root: Path, config: str, n: int) -> list[float]:
    settings = Settings(local_files_document_root=root, media_cache_dir=root / "cache")
    engine = NoOpEngine()
    app = create_app(settings, dispatcher=InlineDispatcher(settings, engine_factory=lambda _s: engine))
    client = app.test_client()
    body = request_body(config)
    assert client.post("/predict", json=body).status_code == 200  # warm: media cache, config cache
    times = []
    for _ in range(n):
        start = time.perf_counter()
        response = client.post("/predict", json=body)
        times.append(time.perf_counter() - start)
        assert response.status_code == 200
    return times


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def web_rss_mb(root: Path, config: str) -> float:
    port = free_port()
    env = {**os.environ, "LOCAL_FILES_DOCUMENT_ROOT": str(root), "XSAM_ENGINE": "fallback", "MEDIA_CACHE_DIR": str(root / "cache"), "LOG_LEVEL": "WARNING"}
    process = subprocess.Popen([sys.executable, "_wsgi.py", "--host", "127.0.0.1", "--port", str(port)], cwd=ROOT, env=env)
    try:
        import json

        for _ in range(100):
            try:
                urllib.request.urlopen(f"http://127.0.0.1:{port}/health", timeout=1)
                break
            except OSError:
                time.sleep(0.2)
        data = json.dumps(request_body(config)).encode()
        for _ in range(20):
            req = urllib.request.Request(f"http://127.0.0.1:{port}/predict", data=data, headers={"Content-Type": "application/json"})
            urllib.request.urlopen(req, timeout=30).read()
        status = Path(f"/proc/{process.pid}/status").read_text()
        kb = next(int(line.split()[1]) for line in status.splitlines() if line.startswith("VmRSS"))
        return kb / 1024
    finally:
        process.terminate()
        process.wait(10)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--requests", type=int, default=300)
    args = parser.parse_args()
    config = (ROOT / "label_config" / "interactive_brush.xml").read_text()
    with tempfile.TemporaryDirectory() as tmp:
        root = Path(tmp)
        rng = np.random.default_rng(0)
        cv2.imwrite(str(root / "bench.png"), rng.integers(0, 255, (H, W, 3), dtype=np.uint8))
        times = server_time(root, config, args.requests)
        rss = web_rss_mb(root, config)
    print(f"/predict overhead, no-op engine, {W}x{H} interactive keypoint request, {args.requests} requests")
    print("| metric | value | target |")
    print("|---|---|---|")
    print(f"| p50 server time | {percentile(times, 50) * 1e3:.2f} ms | < 10 ms |")
    print(f"| p99 server time | {percentile(times, 99) * 1e3:.2f} ms | |")
    print(f"| mean server time | {statistics.fmean(times) * 1e3:.2f} ms | |")
    print(f"| web process RSS (python _wsgi.py, fallback engine, after 20 requests) | {rss:.0f} MB | < 200 MB |")


if __name__ == "__main__":
    main()
