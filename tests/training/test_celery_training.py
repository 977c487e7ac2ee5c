"""Training through Celery: webhook trigger → Redis → a real ``train`` worker → a promoted version."""

from __future__ import annotations

import os
import subprocess
import sys
import threading
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
import redis
from celery.result import AsyncResult
from repo_paths import REPO_ROOT
from shapes_project import LS, PROJECT, shapes_server

from xsam_backend.settings import Settings
from xsam_backend.training.triggers import CeleryTrainingQueue, make_training_trigger
from xsam_backend.training.versions import ProjectVersions
from xsam_backend.worker.app import make_celery
from xsam_backend.worker.tasks import TRAIN_PROJECT

pytestmark = pytest.mark.celery
REDIS_DB_URL = "redis://127.0.0.1:6379/14"


@pytest.fixture
def redis_db() -> Iterator[str]:
    client = redis.Redis.from_url(REDIS_DB_URL, socket_connect_timeout=0.5)
    try:
        client.ping()
    except (redis.RedisError, OSError):
        pytest.skip(f"no Redis at {REDIS_DB_URL}")
    client.flushdb()
    yield REDIS_DB_URL
    client.flushdb()


@pytest.fixture
def server() -> Iterator[Any]:
    srv = shapes_server(4)
    srv.start()
    yield srv
    srv.stop()


def test_train_task_is_routed_to_the_train_queue_and_acknowledged_early() -> None:
    app = make_celery(Settings(redis_url=REDIS_DB_URL))
    task = app.tasks[TRAIN_PROJECT]
    assert task.acks_late is False
    assert app.amqp.router.route({}, TRAIN_PROJECT)["queue"].name == "train"


@pytest.mark.timeout(600)
def test_start_training_through_celery_runs_one_job_and_promotes(
    redis_db: str, server: Any, tiny_model_dir: Path, tmp_path: Path
) -> None:
    settings = Settings(
        redis_url=redis_db,
        label_studio_url=server.base_url,
        label_studio_api_key=LS.LEGACY_TOKEN,
        media_cache_dir=tmp_path / "cache",
        model_dir=tiny_model_dir,
        weights_root=tmp_path / "weights",
        device="cpu",
        train_steps=20,
        train_learning_rate=3e-3,
    )
    trigger = make_training_trigger(settings)
    assert isinstance(trigger.jobs, CeleryTrainingQueue)
    answers: list[Any] = []
    barrier = threading.Barrier(4)

    def press() -> None:
        barrier.wait()
        answers.append(trigger.handle({"action": "START_TRAINING", "project": {"id": PROJECT}}))

    threads = [threading.Thread(target=press) for _ in range(4)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    queued = [a for a in answers if a.queued]
    assert len(queued) == 1 and redis.Redis.from_url(redis_db).llen("train") == 1

    log = tmp_path / "worker.log"
    env = {
        **{k: v for k, v in os.environ.items() if k != "XSAM_ENGINE"},
        "REDIS_URL": redis_db,
        "XSAM_ENGINE": "fallback",
        "LABEL_STUDIO_URL": server.base_url,
        "LABEL_STUDIO_API_KEY": LS.LEGACY_TOKEN,
        "MEDIA_CACHE_DIR": str(tmp_path / "worker-cache"),
        "XSAM_MODEL_DIR": str(tiny_model_dir),
        "MODEL_WEIGHTS_ROOT": str(settings.weights_root),
        "XSAM_DEVICE": "cpu",
        "TRAIN_STEPS": "20",
        "TRAIN_LEARNING_RATE": "3e-3",
        "LOG_LEVEL": "INFO",
    }
    with log.open("wb") as sink:
        worker = subprocess.Popen(
            [sys.executable, "-m", "xsam_backend", "worker", "--queues", "train", "--pool", "solo"],
            cwd=REPO_ROOT,
            env=env,
            stdout=sink,
            stderr=subprocess.STDOUT,
        )
    try:
        app = make_celery(settings)
        result = AsyncResult(queued[0].job_id, app=app).get(timeout=500)
        assert result["status"] in ("promoted", "rejected"), (result, log.read_text()[-3000:])
        versions = ProjectVersions(settings.projects_dir, PROJECT)
        assert [v.name for v in versions.list()] == ["v0001"]
        assert (versions.serving_name() == "v0001") == (result["status"] == "promoted")
        assert trigger.status(str(PROJECT))["state"] == result["status"]
        assert "training" in log.read_text() and "%" in log.read_text()
        # once the job has started, the queued flag is gone: the next press queues again
        assert trigger.handle({"action": "START_TRAINING", "project": {"id": PROJECT}}).queued
    finally:
        worker.terminate()
        try:
            worker.wait(10)
        except subprocess.TimeoutExpired:
            worker.kill()
            worker.wait(5)
