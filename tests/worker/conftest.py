"""Fixtures for the Celery tests: a private Redis database, real images, a slow media server, workers.

Workers are real ``python -m xsam_backend worker`` processes on the weight-free fallback engine.
Images come from ``LOCAL_FILES_DOCUMENT_ROOT`` (``/data/local-files/?d=...``) or, when a test needs
a job that is still running, from a local HTTP server standing in for Label Studio's
``/data/upload/...`` that holds its answer for a while.
"""

from __future__ import annotations

import contextlib
import io
import os
import random
import signal
import subprocess
import sys
import threading
import time
from collections.abc import Iterator
from dataclasses import dataclass, field
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path

import numpy as np
import pytest
import redis
from PIL import Image

REPO = Path(__file__).resolve().parents[2]
REDIS_HOST, REDIS_PORT = "127.0.0.1", 6379
IMAGE_SHAPE = (120, 160)  # (H, W)
DISK_CENTER, DISK_RADIUS = (80, 60), 30  # (x, y), pixels


def disk_image() -> np.ndarray:
    """``(120, 160, 3)`` uint8 RGB: a yellow disk of radius 30 centred at (x=80, y=60) on dark grey."""
    yy, xx = np.mgrid[: IMAGE_SHAPE[0], : IMAGE_SHAPE[1]]
    image = np.full((*IMAGE_SHAPE, 3), 30, np.uint8)
    inside = (xx - DISK_CENTER[0]) ** 2 + (yy - DISK_CENTER[1]) ** 2 < DISK_RADIUS**2
    image[inside] = (220, 200, 40)
    return image


def disk_mask() -> np.ndarray:
    """The disk of :func:`disk_image` as an ``(H, W)`` bool mask."""
    return disk_image()[..., 2] == 40


def png_bytes(image: np.ndarray) -> bytes:
    buffer = io.BytesIO()
    Image.fromarray(image).save(buffer, format="PNG")
    return buffer.getvalue()


@dataclass(frozen=True)
class Disk:
    """The scene of :func:`disk_image`: its ``(H, W)`` bool mask and the disk's centre (x, y) in pixels."""

    mask: np.ndarray
    center: tuple[float, float]
    size: tuple[int, int]


@pytest.fixture(scope="session")
def disk() -> Disk:
    return Disk(mask=disk_mask(), center=(float(DISK_CENTER[0]), float(DISK_CENTER[1])), size=IMAGE_SHAPE)


@pytest.fixture(scope="session")
def redis_client() -> redis.Redis:
    client = redis.Redis(REDIS_HOST, REDIS_PORT, socket_connect_timeout=1)
    try:
        client.ping()
    except redis.RedisError as exc:
        pytest.skip(f"Redis is not running at {REDIS_HOST}:{REDIS_PORT} ({exc})")
    return client


@pytest.fixture(scope="session")
def redis_dbs(redis_client: redis.Redis) -> Iterator[list[int]]:
    """Three empty Redis databases for this session (other sessions may use the others), flushed after."""
    numbers = list(range(4, 16))
    random.shuffle(numbers)
    chosen: list[int] = []
    for number in numbers:
        client = redis.Redis(REDIS_HOST, REDIS_PORT, db=number)
        # SETNX on a marker claims the database against a concurrent session.
        if client.dbsize() == 0 and client.set("xsam-test-session", os.getpid(), nx=True, ex=600):
            chosen.append(number)
        if len(chosen) == 3:
            break
    if len(chosen) < 3:
        pytest.skip("no three free Redis databases among 4..15")
    yield chosen
    for number in chosen:
        redis.Redis(REDIS_HOST, REDIS_PORT, db=number).flushdb()


def redis_url(db: int) -> str:
    return f"redis://{REDIS_HOST}:{REDIS_PORT}/{db}"


@pytest.fixture(scope="session")
def url_of_db() -> object:
    """``url_of_db(n)``: the URL of Redis database ``n``."""
    return redis_url


@pytest.fixture(scope="session")
def image_root(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A ``LOCAL_FILES_DOCUMENT_ROOT`` holding ``disk.png`` (:func:`disk_image`)."""
    root = tmp_path_factory.mktemp("document-root")
    (root / "disk.png").write_bytes(png_bytes(disk_image()))
    return root


@dataclass
class MediaServer:
    """Serves :func:`disk_image` at any ``/data/upload/...`` path; ``hold-<ms>`` in the path delays it.

    ``first-hold-<ms>`` delays only the first request for that path. ``started[path]`` is set when a
    request for ``path`` arrives, so a test knows a worker is inside that job.
    """

    url: str
    body: bytes
    requests: list[str] = field(default_factory=list)
    started: dict[str, threading.Event] = field(default_factory=dict)
    release: threading.Event = field(default_factory=threading.Event)
    lock: threading.Lock = field(default_factory=threading.Lock)

    def event(self, path: str) -> threading.Event:
        with self.lock:
            return self.started.setdefault(path, threading.Event())

    def hold_s(self, path: str) -> float:
        name = path.rsplit("/", 1)[-1]
        with self.lock:
            seen = self.requests.count(path)
        for prefix, only_first in (("first-hold-", True), ("hold-", False)):
            if name.startswith(prefix) and (seen == 1 or not only_first):
                return int(name[len(prefix) :].split(".")[0].split("-")[0]) / 1000
        return 0.0


@pytest.fixture(scope="session")
def media_server() -> Iterator[MediaServer]:
    server_state = MediaServer(url="", body=png_bytes(disk_image()))

    class Handler(BaseHTTPRequestHandler):
        def do_GET(self) -> None:
            path = self.path.split("?", 1)[0]
            if not path.startswith("/data/upload/"):
                self.send_error(404)
                return
            with server_state.lock:
                server_state.requests.append(path)
            server_state.event(path).set()
            server_state.release.wait(server_state.hold_s(path))
            self.send_response(200)
            self.send_header("Content-Type", "image/png")
            self.send_header("Content-Length", str(len(server_state.body)))
            self.end_headers()
            with contextlib.suppress(BrokenPipeError, ConnectionResetError):  # the asking worker was killed
                self.wfile.write(server_state.body)

        def log_message(self, format: str, *args: object) -> None:
            pass

    httpd = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
    httpd.daemon_threads = True
    server_state.url = f"http://127.0.0.1:{httpd.server_address[1]}"
    thread = threading.Thread(target=httpd.serve_forever, daemon=True)
    thread.start()
    yield server_state
    server_state.release.set()
    httpd.shutdown()
    httpd.server_close()


@dataclass
class WorkerProcess:
    process: subprocess.Popen[bytes]
    log: Path

    def output(self) -> str:
        return self.log.read_text(errors="replace")

    def wait_ready(self, timeout_s: float = 30.0) -> None:
        deadline = time.monotonic() + timeout_s
        while time.monotonic() < deadline:
            if " ready." in self.output():
                return
            if self.process.poll() is not None:
                break
            time.sleep(0.05)
        raise AssertionError(f"worker did not become ready; its log:\n{self.output()[-3000:]}")

    def children(self) -> list[int]:
        """Pids of the pool processes (prefork)."""
        pids = []
        for stat in Path("/proc").glob("[0-9]*/stat"):
            try:
                fields = stat.read_text().rsplit(")", 1)[1].split()
            except OSError:
                continue
            if int(fields[1]) == self.process.pid:
                pids.append(int(stat.parent.name))
        return pids

    def stop(self) -> None:
        """Ask for a warm shutdown; :meth:`reap` waits for it."""
        if self.process.poll() is None:
            self.process.send_signal(signal.SIGTERM)

    def reap(self) -> None:
        try:
            self.process.wait(5)
        except subprocess.TimeoutExpired:
            self.process.kill()
            self.process.wait(5)


@pytest.fixture
def start_worker(tmp_path: Path, image_root: Path, media_server: MediaServer) -> Iterator[object]:
    """``start_worker(db, queues, pool="solo", concurrency=1, wait=True, **env)`` -> a :class:`WorkerProcess`.

    With ``wait=False`` the caller calls ``wait_ready()`` itself (to start several at once).
    """
    started: list[WorkerProcess] = []

    def start(
        db: int, queues: str, pool: str = "solo", concurrency: int = 1, wait: bool = True, **env: str
    ) -> WorkerProcess:
        name = f"worker-{len(started)}"
        log = tmp_path / f"{name}.log"
        environ = {
            **{k: v for k, v in os.environ.items() if k not in ("REDIS_URL", "XSAM_ENGINE")},
            "REDIS_URL": redis_url(db),
            "XSAM_ENGINE": "fallback",
            "LOCAL_FILES_DOCUMENT_ROOT": str(image_root),
            "LABEL_STUDIO_URL": media_server.url,
            "MEDIA_CACHE_DIR": str(tmp_path / f"{name}-cache"),
            "LOG_LEVEL": "INFO",
            **env,
        }
        with log.open("wb") as sink:
            process = subprocess.Popen(
                [sys.executable, "-m", "xsam_backend", "worker", "--queues", queues, "--pool", pool,
                 "--concurrency", str(concurrency)],
                cwd=REPO,
                env=environ,
                stdout=sink,
                stderr=subprocess.STDOUT,
            )  # fmt: skip
        worker = WorkerProcess(process, log)
        started.append(worker)
        if wait:
            worker.wait_ready()
        return worker

    yield start
    for worker in started:
        worker.stop()
    for worker in started:
        worker.reap()
