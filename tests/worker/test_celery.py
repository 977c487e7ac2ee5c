"""The Celery path end to end: real Redis, real ``python -m xsam_backend worker`` processes.

The app configuration tests need nothing running; the others (marked ``celery``) start workers on
a private Redis database and talk to them through :class:`CeleryDispatcher`.
"""

from __future__ import annotations

import base64
import json
import os
import signal
import threading
import time
from typing import Any

import pytest
import redis

from xsam_backend.dispatch import CeleryDispatcher, JobOutcome, PredictJob
from xsam_backend.engines.factory import FALLBACK_VERSION
from xsam_backend.errors import JobTimeout, MediaNotFound, NeedsWeights
from xsam_backend.prompt import Prompt, Task, VisualRegion
from xsam_backend.settings import Settings
from xsam_backend.worker.app import make_celery, time_limits, visibility_timeout_s
from xsam_backend.worker.main import run_worker
from xsam_backend.worker.tasks import PREDICT_BATCH, PREDICT_INTERACTIVE

LOCAL_DISK = "/data/local-files/?d=disk.png"


@pytest.fixture
def job(disk: Any) -> Any:
    """``job(url=LOCAL_DISK, task_id=1, prompt=<a click on the disk>)`` -> :class:`PredictJob`."""

    def make(url: str = LOCAL_DISK, task_id: int = 1, prompt: Prompt | None = None) -> PredictJob:
        if prompt is None:
            prompt = Prompt(Task.INTERACTIVE, regions=(VisualRegion("point", disk.center),), label="Disk")
        return PredictJob(image_url=url, task_id=task_id, prompt=prompt, project="3", model_version=None)

    return make


@pytest.fixture
def assert_disk(disk: Any) -> Any:
    """``assert_disk(outcome)``: the outcome is the fallback engine's mask of the disk, labelled."""

    def check(outcome: JobOutcome) -> None:
        assert outcome.error is None, outcome.error
        assert outcome.result is not None
        assert outcome.result.model_version == FALLBACK_VERSION
        (segment,) = outcome.result.segments
        assert segment.label == "Disk"
        iou = (segment.mask & disk.mask).sum() / (segment.mask | disk.mask).sum()
        assert iou > 0.95

    return check


# -- the app's configuration (nothing running) ------------------------------------------------------


def test_app_speaks_json_only_and_acks_late() -> None:
    conf = make_celery(Settings(redis_url="redis://127.0.0.1:6379/0")).conf
    assert conf.task_serializer == conf.result_serializer == conf.event_serializer == "json"
    assert list(conf.accept_content) == ["json"] and list(conf.result_accept_content) == ["json"]
    assert conf.task_acks_late and conf.task_reject_on_worker_lost
    assert conf.worker_prefetch_multiplier == 1
    assert {q.name for q in conf.task_queues} == {"interactive", "prelabel", "train"}
    assert conf.broker_transport_options["socket_connect_timeout"] < 2
    assert conf.redis_socket_connect_timeout < 2


def test_time_limits_and_visibility_follow_settings() -> None:
    settings = Settings(redis_url="redis://127.0.0.1:6379/0", interactive_timeout_s=8, prelabel_timeout_s=40)
    app = make_celery(settings)
    click, batch = app.tasks[PREDICT_INTERACTIVE], app.tasks[PREDICT_BATCH]
    assert (click.soft_time_limit, click.time_limit) == (8, time_limits(settings, "interactive").hard_s)
    assert (batch.soft_time_limit, batch.time_limit) == (40, time_limits(settings, "prelabel").hard_s)
    assert click.time_limit > 8 and batch.time_limit > 40
    assert app.conf.broker_transport_options["visibility_timeout"] == visibility_timeout_s(settings) == 4
    router = app.amqp.router
    assert router.route({}, PREDICT_INTERACTIVE)["queue"].name == "interactive"
    assert router.route({}, PREDICT_BATCH)["queue"].name == "prelabel"
    assert router.route({}, "xsam.train_project")["queue"].name == "train"


def test_app_needs_a_broker_url() -> None:
    with pytest.raises(ValueError, match="REDIS_URL"):
        make_celery(Settings())


@pytest.mark.parametrize(
    ("queues", "pool", "concurrency", "message"),
    [(("clicks",), "solo", 1, "queues must be"), (("interactive",), "gevent", 1, "pool must be"),
     (("interactive",), "solo", 0, "concurrency")],
)  # fmt: skip
def test_run_worker_refuses_bad_arguments_before_connecting(
    queues: tuple[str, ...], pool: str, concurrency: int, message: str
) -> None:
    settings = Settings(redis_url="redis://127.0.0.1:1/0", engine="fallback")
    with pytest.raises(ValueError, match=message):
        run_worker(settings, queues=queues, concurrency=concurrency, pool=pool)


# -- real workers -------------------------------------------------------------------------------------


@pytest.mark.celery
def test_click_and_prelabel_round_trip(
    redis_dbs: list[int], start_worker: Any, url_of_db: Any, job: Any, assert_disk: Any
) -> None:
    db = redis_dbs[0]
    workers = [start_worker(db, "interactive", wait=False), start_worker(db, "prelabel", wait=False)]
    for worker in workers:
        worker.wait_ready()
    dispatcher = CeleryDispatcher(Settings(redis_url=url_of_db(db)), jobs_per_message=2)
    try:
        (click,) = dispatcher.predict([job()], "interactive")
        assert_disk(click)

        text = Prompt(task=Task.REFERRING, text="the yellow disk")
        jobs = [job(task_id=1), job("/data/local-files/?d=missing.png", 2), job(task_id=3,
                prompt=text), job(task_id=4), job(task_id=5)]  # fmt: skip
        outcomes = dispatcher.predict(jobs, "prelabel")  # three messages of at most two jobs
        assert len(outcomes) == 5
        for index in (0, 3, 4):
            assert_disk(outcomes[index])
        assert isinstance(outcomes[1].error, MediaNotFound) and "missing.png" in outcomes[1].error.message
        assert isinstance(outcomes[2].error, NeedsWeights)
        assert dispatcher.health()["broker"] == "ok"
    finally:
        dispatcher.close()


@pytest.mark.celery
def test_click_is_answered_while_a_prelabel_batch_runs(
    redis_dbs: list[int], start_worker: Any, media_server: Any, url_of_db: Any, job: Any, assert_disk: Any
) -> None:
    db = redis_dbs[0]
    workers = [start_worker(db, "interactive", wait=False), start_worker(db, "prelabel", wait=False)]
    for worker in workers:
        worker.wait_ready()
    dispatcher = CeleryDispatcher(Settings(redis_url=url_of_db(db)))
    slow = [f"/data/upload/1/hold-1000-{name}.png" for name in "abc"]
    batch_outcomes: list[JobOutcome] = []
    batch_done = threading.Event()

    def run_batch() -> None:
        batch_outcomes.extend(dispatcher.predict([job(url, i) for i, url in enumerate(slow)], "prelabel"))
        batch_done.set()

    batch = threading.Thread(target=run_batch)
    batch.start()
    try:
        assert media_server.event(slow[0]).wait(10), "the prelabel worker never started the batch"
        (click,) = dispatcher.predict([job()], "interactive")
        assert_disk(click)
        assert not batch_done.is_set(), "the batch finished before the click was answered"
        assert slow[2] not in media_server.requests
    finally:
        batch.join(30)
        dispatcher.close()
    assert batch_done.is_set() and len(batch_outcomes) == 3
    for outcome in batch_outcomes:
        assert_disk(outcome)


@pytest.mark.celery
def test_job_of_a_killed_worker_is_redelivered_to_another(
    redis_dbs: list[int], start_worker: Any, media_server: Any, url_of_db: Any, job: Any, assert_disk: Any
) -> None:
    db = redis_dbs[1]
    # The worker's interactive timeout sets the visibility timeout (1 s here); the web side waits longer.
    worker_env = {"INTERACTIVE_TIMEOUT_S": "2"}
    doomed = start_worker(db, "interactive", **worker_env)
    dispatcher = CeleryDispatcher(Settings(redis_url=url_of_db(db), interactive_timeout_s=20))
    path = "/data/upload/1/first-hold-30000-killed.png"
    outcomes: list[JobOutcome] = []
    caller = threading.Thread(target=lambda: outcomes.extend(dispatcher.predict([job(path)], "interactive")))
    caller.start()
    try:
        assert media_server.event(path).wait(10), "the first worker never started the job"
        doomed.process.send_signal(signal.SIGKILL)
        assert doomed.process.wait(5) == -signal.SIGKILL
        time.sleep(1.5)  # past the visibility timeout: the message may now be handed out again
        rescuer = start_worker(db, "interactive", **worker_env)
        caller.join(20)
    finally:
        dispatcher.close()
    assert len(outcomes) == 1
    assert_disk(outcomes[0])
    assert media_server.requests.count(path) == 2
    assert "succeeded" in rescuer.output()


@pytest.mark.celery
def test_job_of_a_killed_pool_process_is_requeued_at_once(
    redis_dbs: list[int], start_worker: Any, media_server: Any, url_of_db: Any, job: Any, assert_disk: Any
) -> None:
    db = redis_dbs[1]
    worker = start_worker(db, "interactive", pool="prefork")
    dispatcher = CeleryDispatcher(Settings(redis_url=url_of_db(db), interactive_timeout_s=20))
    path = "/data/upload/1/first-hold-30000-pool.png"
    outcomes: list[JobOutcome] = []
    caller = threading.Thread(target=lambda: outcomes.extend(dispatcher.predict([job(path)], "interactive")))
    caller.start()
    try:
        assert media_server.event(path).wait(10), "the worker never started the job"
        (child,) = worker.children()
        os.kill(child, signal.SIGKILL)
        caller.join(20)
    finally:
        dispatcher.close()
    assert len(outcomes) == 1
    assert_disk(outcomes[0])
    assert media_server.requests.count(path) == 2
    assert "WorkerLostError" in worker.output() or "signal 9" in worker.output()


@pytest.mark.celery
def test_only_json_crosses_redis_and_unanswered_jobs_time_out(
    redis_dbs: list[int], redis_client: redis.Redis, url_of_db: Any, job: Any
) -> None:
    db = redis_dbs[2]  # no worker consumes this database
    settings = Settings(redis_url=url_of_db(db), interactive_timeout_s=0.5)
    dispatcher = CeleryDispatcher(settings)

    def subscribed() -> list[dict[str, Any]]:
        return [
            c
            for c in redis_client.client_list()
            if int(c["db"]) == db and c["cmd"] in ("subscribe", "psubscribe", "unsubscribe")
        ]

    try:
        with pytest.raises(JobTimeout, match="interactive"):
            dispatcher.predict([job(task_id=42)], "interactive")
        health = dispatcher.health()
        assert subscribed()  # the dispatcher listens for results on a pub/sub connection
    finally:
        dispatcher.close()
    assert health["broker"] == "ok" and health["queued"]["interactive"] == 1
    # close released the subscription (the server may take a moment to notice a closed socket)
    deadline = time.monotonic() + 5
    while subscribed() and time.monotonic() < deadline:
        time.sleep(0.05)
    assert subscribed() == []

    raw = redis.Redis(**{**redis_client.connection_pool.connection_kwargs, "db": db}).lrange(
        "interactive", 0, -1
    )
    assert len(raw) == 1
    envelope = json.loads(raw[0])  # the whole message is JSON ...
    assert envelope["content-type"] == "application/json"
    assert envelope["headers"]["task"] == PREDICT_INTERACTIVE
    assert envelope["headers"]["expires"] is not None  # a stale click is dropped, not run
    args, kwargs, _ = json.loads(base64.b64decode(envelope["body"]))  # ... and so is its body
    assert args == [job(task_id=42).to_json()]
    assert PredictJob.from_json(args[0]) == job(task_id=42)
