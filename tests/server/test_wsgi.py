"""The two ways to run the web app: ``gunicorn _wsgi:app`` and ``python _wsgi.py``; and a down broker."""

from __future__ import annotations

import json
import os
import socket
import subprocess
import sys
import time
import urllib.error
import urllib.request
from pathlib import Path

import pytest
from repo_paths import REPO_ROOT, label_config

from xsam_backend.server.app import create_app
from xsam_backend.settings import Settings


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def wait_health(port: int, process: subprocess.Popen, timeout: float = 60) -> dict:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if process.poll() is not None:
            raise AssertionError(f"server exited with {process.returncode}")
        try:
            with urllib.request.urlopen(f"http://127.0.0.1:{port}/health", timeout=1) as response:
                return json.loads(response.read())
        except OSError:
            time.sleep(0.2)
    raise AssertionError("server did not answer /health")


@pytest.mark.parametrize(
    "command",
    [
        lambda port: [str(Path(sys.executable).parent / "gunicorn"), "--bind", f"127.0.0.1:{port}", "--workers", "1", "--threads", "2", "_wsgi:app"],
        lambda port: [sys.executable, "_wsgi.py", "--host", "127.0.0.1", "--port", str(port)],
    ],
    ids=["gunicorn", "python-_wsgi"],
)
def test_server_starts_and_answers(command, tmp_path):
    port = free_port()
    env = {**os.environ, "XSAM_ENGINE": "fallback", "MEDIA_CACHE_DIR": str(tmp_path), "LOG_LEVEL": "WARNING"}
    env.pop("REDIS_URL", None)
    process = subprocess.Popen(command(port), cwd=REPO_ROOT, env=env, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE)
    try:
        health = wait_health(port, process)
        assert health["status"] == "UP" and health["engine"] == "fallback"
        body = json.dumps({"schema": label_config("interactive_brush"), "project": "1.1"}).encode()
        request = urllib.request.Request(f"http://127.0.0.1:{port}/setup", data=body, headers={"Content-Type": "application/json"})
        with urllib.request.urlopen(request, timeout=10) as response:
            assert json.loads(response.read())["model_version"] == health["model_version"]
    finally:
        process.terminate()
        process.wait(10)


def test_broker_down_gives_503_quickly_and_health_says_so(tmp_path):
    port = free_port()  # nothing listens there
    settings = Settings(redis_url=f"redis://:hunter2@127.0.0.1:{port}/0", engine="fallback", media_cache_dir=tmp_path)
    client = create_app(settings).test_client()
    started = time.monotonic()
    health = client.get("/health").get_json()
    assert time.monotonic() - started < 2
    assert health["status"] == "DEGRADED" and health["broker"].startswith("down")
    keypoint = {"type": "keypointlabels", "from_name": "kp", "to_name": "image", "original_width": 10, "original_height": 10,
                "value": {"x": 50, "y": 50, "width": 1, "keypointlabels": ["Object"]}}
    body = {"tasks": [{"id": 1, "data": {"image": "/data/upload/1/a.png"}}], "label_config": label_config("interactive_brush"),
            "params": {"context": {"result": [keypoint]}}}
    started = time.monotonic()
    response = client.post("/predict", json=body)
    assert time.monotonic() - started < 2
    assert response.status_code == 503
    message = response.get_json()["message"]
    assert "hunter2" not in message and str(port) in message
    automatic = client.post("/predict", json={**body, "params": {"context": None}})
    assert automatic.status_code == 503  # a batch cannot be answered either: Label Studio retries later
