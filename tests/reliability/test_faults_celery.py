"""Faults on the Celery path, through the HTTP app: real Redis, real ``python -m xsam_backend worker`` processes.

* a worker killed with SIGKILL during a click: a replacement answers it, or, with none, the request
  fails cleanly with 504 within its time limit;
* Redis stopped and restarted (a private ``redis-server`` on a free port; the shared one is never
  touched): 503 with a clear message within 2 s, ``/health`` DEGRADED, recovery without restarting
  the web process;
* Label Studio unreachable for media: a clear per-task error, the other tasks answered.
"""

from __future__ import annotations

import shutil
import signal
import subprocess
import threading
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
import redis
from reliability_support import assert_clear_error, closed_port
from repo_paths import label_config

from xsam_backend.dispatch import CeleryDispatcher
from xsam_backend.server.app import create_app
from xsam_backend.settings import Settings

pytestmark = pytest.mark.celery

BRUSH = label_config("interactive_brush")
LOCAL_DISK = "/data/local-files/?d=disk.png"


def _click_body(disk: Any, *images: str) -> dict[str, Any]:
    x, y = disk.center
    height, width = disk.size
    region = {
        "type": "keypointlabels", "from_name": "kp", "to_name": "image", "original_width": width,
        "original_height": height, "is_positive": True,
        "value": {"x": 100 * x / width, "y": 100 * y / height, "keypointlabels": ["Object"]},
    }  # fmt: skip
    tasks = [{"id": i + 1, "data": {"image": image}} for i, image in enumerate(images)]
    return {"tasks": tasks, "label_config": BRUSH, "params": {"context": {"result": [region]}}}


def _web(redis_url: str, **changes: Any) -> Any:
    settings = Settings(redis_url=redis_url, engine="fallback", broker_check_timeout_s=1.0).with_changes(
        **changes
    )
    dispatcher = CeleryDispatcher(settings)
    return create_app(settings, dispatcher=dispatcher).test_client(), dispatcher


@pytest.fixture
def private_redis(tmp_path: Path) -> Iterator[Any]:
    """``(port, start, stop)`` of a private ``redis-server`` (no persistence) on a free port."""
    binary = shutil.which("redis-server")
    if binary is None:
        pytest.skip("redis-server is not installed")
    port = closed_port()
    process: list[subprocess.Popen[bytes]] = []

    def start() -> None:
        process.append(
            subprocess.Popen(
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
                    str(tmp_path),
                ],
                stdout=subprocess.DEVNULL,
                stderr=subprocess.DEVNULL,
            )  # fmt: skip
        )
        client = redis.Redis(port=port, socket_connect_timeout=0.2)
        deadline = time.monotonic() + 10
        while time.monotonic() < deadline:
            try:
                client.ping()
                return
            except redis.RedisError:
                time.sleep(0.05)
        raise AssertionError("private redis-server did not start")

    def stop() -> None:
        running = process.pop()
        running.terminate()
        running.wait(10)

    start()
    yield port, start, stop
    while process:
        stop()


def test_worker_killed_during_a_click_is_answered_by_another(
    redis_dbs: list[int], start_worker: Any, media_server: Any, url_of_db: Any, disk: Any
) -> None:
    db = redis_dbs[1]
    worker_env = {"INTERACTIVE_TIMEOUT_S": "2"}  # visibility timeout 1 s: a lost click is handed out again
    doomed = start_worker(db, "interactive", **worker_env)
    client, dispatcher = _web(url_of_db(db), interactive_timeout_s=20)
    path = "/data/upload/1/first-hold-30000-http-killed.png"
    answers: list[Any] = []
    caller = threading.Thread(
        target=lambda: answers.append(client.post("/predict", json=_click_body(disk, path)))
    )
    started = time.monotonic()
    caller.start()
    try:
        assert media_server.event(path).wait(10), "the worker never started the job"
        doomed.process.send_signal(signal.SIGKILL)
        assert doomed.process.wait(5) == -signal.SIGKILL
        time.sleep(1.5)
        start_worker(db, "interactive", **worker_env)
        caller.join(25)
    finally:
        dispatcher.close()
    (response,) = answers
    assert response.status_code == 200, response.get_json()
    assert response.get_json()["results"][0]["result"], "the rescued click came back without a mask"
    assert time.monotonic() - started < 20


def test_worker_killed_with_no_replacement_fails_cleanly_within_the_timeout(
    redis_dbs: list[int], start_worker: Any, media_server: Any, url_of_db: Any, disk: Any
) -> None:
    db = redis_dbs[2]
    doomed = start_worker(db, "interactive")
    client, dispatcher = _web(url_of_db(db), interactive_timeout_s=3)
    path = "/data/upload/1/first-hold-30000-http-lost.png"
    answers: list[Any] = []
    caller = threading.Thread(
        target=lambda: answers.append(client.post("/predict", json=_click_body(disk, path)))
    )
    started = time.monotonic()
    caller.start()
    try:
        assert media_server.event(path).wait(10)
        doomed.process.send_signal(signal.SIGKILL)
        caller.join(10)
        elapsed = time.monotonic() - started
    finally:
        dispatcher.close()
    (response,) = answers
    payload = assert_clear_error(response.status_code, response.get_data())
    assert response.status_code == 504 and "interactive" in payload["message"]
    assert 2.5 < elapsed < 5.0, elapsed


def test_redis_outage_gives_503_then_recovers_without_restarting_the_web_process(
    private_redis: Any, start_worker: Any, disk: Any, tmp_path: Path
) -> None:
    port, start_redis, stop_redis = private_redis
    url = f"redis://127.0.0.1:{port}/0"
    worker = start_worker(0, "interactive", REDIS_URL=url)
    client, dispatcher = _web(url)
    try:
        assert client.get("/health").get_json()["status"] == "UP"
        first = client.post("/predict", json=_click_body(disk, LOCAL_DISK))
        assert first.status_code == 200 and first.get_json()["results"][0]["result"]

        stop_redis()
        time.sleep(1.1)  # past the cached successful broker check
        started = time.monotonic()
        down = client.post("/predict", json=_click_body(disk, LOCAL_DISK))
        elapsed = time.monotonic() - started
        payload = assert_clear_error(down.status_code, down.get_data())
        assert down.status_code == 503 and elapsed < 2.0, (down.status_code, elapsed)
        assert f"127.0.0.1:{port}" in payload["message"] and "Redis" in payload["message"]
        started = time.monotonic()
        health = client.get("/health")
        assert time.monotonic() - started < 2.0
        assert health.status_code == 200 and health.get_json()["status"] == "DEGRADED"
        assert health.get_json()["broker"].startswith("down:")

        start_redis()
        deadline = time.monotonic() + 40
        recovered = None
        while time.monotonic() < deadline:
            response = client.post("/predict", json=_click_body(disk, LOCAL_DISK))
            if response.status_code == 200:
                recovered = response
                break
            time.sleep(0.5)
        assert recovered is not None, worker.output()[-2000:]
        assert recovered.get_json()["results"][0]["result"]
        assert client.get("/health").get_json()["status"] == "UP"
        assert worker.process.poll() is None  # the worker reconnected by itself
    finally:
        dispatcher.close()


def test_label_studio_unreachable_fails_its_tasks_only(
    redis_dbs: list[int], start_worker: Any, url_of_db: Any, disk: Any
) -> None:
    db = redis_dbs[0]
    dead = f"http://127.0.0.1:{closed_port()}"
    start_worker(db, "interactive,prelabel", LABEL_STUDIO_URL=dead, MEDIA_TIMEOUT_S="2")
    client, dispatcher = _web(url_of_db(db))
    try:
        batch = client.post(
            "/predict", json=_click_body(disk, LOCAL_DISK, "/data/upload/1/a.png", LOCAL_DISK)
        )
        single = client.post("/predict", json=_click_body(disk, "/data/upload/1/b.png"))
    finally:
        dispatcher.close()
    assert batch.status_code == 200
    assert [bool(r["result"]) for r in batch.get_json()["results"]] == [True, False, True]
    payload = assert_clear_error(single.status_code, single.get_data())
    assert single.status_code == 502 and "cannot connect to 127.0.0.1" in payload["message"]
