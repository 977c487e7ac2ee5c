"""Webhook events → debounced, de-duplicated training jobs; one job per project, across processes."""

from __future__ import annotations

import copy
import multiprocessing
import threading
import time
import uuid
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
import redis

from xsam_backend.dispatch import InlineDispatcher
from xsam_backend.server.app import create_app
from xsam_backend.settings import Settings
from xsam_backend.training.coordination import Coordinator, DiskCoordinator, RedisCoordinator
from xsam_backend.training.triggers import ThreadTrainingQueue, TrainingTrigger, parse_event

REDIS_URL = "redis://127.0.0.1:6379/13"


class RecordingQueue:
    """A training queue that records what it was asked to run (and is slow to answer, to widen races)."""

    name = "recording"

    def __init__(self, delay_s: float = 0.0) -> None:
        self.jobs: list[tuple[str, str]] = []
        self.delay = threading.Event()
        self.delay_s = delay_s
        self._lock = threading.Lock()

    def enqueue(self, project: str, reason: str) -> str:
        self.delay.wait(self.delay_s)
        with self._lock:
            self.jobs.append((project, reason))
            return f"job-{len(self.jobs)}"


def _redis_or_skip() -> redis.Redis:
    client = redis.Redis.from_url(REDIS_URL, socket_connect_timeout=0.5, socket_timeout=0.5)
    try:
        client.ping()
    except (redis.RedisError, OSError):
        pytest.skip(f"no Redis at {REDIS_URL}")
    return client


@pytest.fixture(params=["disk", "redis"])
def coordinator(request: pytest.FixtureRequest, tmp_path: Path) -> Iterator[Coordinator]:
    if request.param == "disk":
        yield DiskCoordinator(tmp_path / "projects")
        return
    client = _redis_or_skip()
    yield RedisCoordinator(client, lock_ttl_s=3.0)
    for key in client.scan_iter("xsam:train:*"):
        client.delete(key)


def project_id() -> str:
    return str(uuid.uuid4().int % 10**9)


def annotation_event(captured: dict[str, Any], project: str, **changes: Any) -> dict[str, Any]:
    body = copy.deepcopy(captured["webhook_ANNOTATION_CREATED_data"])
    body["action"] = "ANNOTATION_CREATED"
    body["project"]["id"] = int(project)
    body["annotation"].update(changes)
    return body


def start_training(project: str) -> dict[str, Any]:
    return {"action": "START_TRAINING", "project": {"id": int(project), "title": "p"}}


# ---- parsing -------------------------------------------------------------------------------------


def test_parse_real_annotation_created_payload(captured_payloads: dict[str, Any]) -> None:
    body = dict(captured_payloads["webhook_ANNOTATION_CREATED_data"], action="ANNOTATION_CREATED")
    event = parse_event(body, "submitted")
    assert (event.action, event.project, event.changes) == ("ANNOTATION_CREATED", "4", 1)
    assert parse_event(body, "ground_truth").changes == 0  # not marked as ground truth
    cancelled = copy.deepcopy(body)
    cancelled["annotation"]["was_cancelled"] = True
    assert parse_event(cancelled, "submitted").changes == 0


def test_parse_start_training_and_plural_events(captured_payloads: dict[str, Any]) -> None:
    start = dict(captured_payloads["webhook_START_TRAINING_data"], action="START_TRAINING")
    event = parse_event(start, "submitted")
    assert event.on_demand and event.project == "4"
    bulk = {
        "action": "ANNOTATIONS_CREATED",
        "annotation": [
            {"id": 1, "result": []},
            {"id": 2, "result": [], "was_cancelled": True},
            {"id": 3, "result": []},
        ],
        "task": [{"id": 1, "project": 9}],
        "project": {"id": 9},
    }
    assert parse_event(bulk, "submitted").changes == 2
    deleted = {"action": "ANNOTATIONS_DELETED", "annotations": [{"id": 1}, {"id": 2}], "project": {"id": 9}}
    assert (parse_event(deleted, "submitted").changes, parse_event(deleted, "submitted").project) == (2, "9")
    assert (
        parse_event(
            {"action": "ANNOTATION_DELETED", "annotation": {"id": 5, "project": 9}}, "submitted"
        ).changes
        == 1
    )
    assert parse_event({"action": "PROJECT_UPDATED", "project": {"id": 9}}, "submitted").changes == 0


# ---- debounce and de-duplication ------------------------------------------------------------------


def test_every_n_accepted_changes_queue_one_job(
    coordinator: Coordinator, captured_payloads: dict[str, Any]
) -> None:
    jobs = RecordingQueue()
    trigger = TrainingTrigger(Settings(train_every_n_annotations=3), coordinator, jobs)
    project = project_id()
    answers = [trigger.handle(annotation_event(captured_payloads, project)) for _ in range(3)]
    assert [a.queued for a in answers] == [False, False, True]
    assert [a.pending for a in answers] == [1, 2, 0]
    assert jobs.jobs == [(project, "3 accepted annotation changes")]
    # the job has not started yet: three more changes must not queue a second one
    later = [trigger.handle(annotation_event(captured_payloads, project)) for _ in range(3)]
    assert not any(a.queued for a in later) and "already queued" in later[-1].reason
    coordinator.clear_queued(project)  # what the job does when it starts
    assert trigger.handle(start_training(project)).queued
    assert len(jobs.jobs) == 2


def test_cancelled_annotations_do_not_count(
    coordinator: Coordinator, captured_payloads: dict[str, Any]
) -> None:
    jobs = RecordingQueue()
    trigger = TrainingTrigger(Settings(train_every_n_annotations=1), coordinator, jobs)
    answer = trigger.handle(annotation_event(captured_payloads, project_id(), was_cancelled=True))
    assert not answer.queued and answer.reason == "no accepted annotation in the event"
    assert jobs.jobs == []


def test_automatic_training_off(coordinator: Coordinator, captured_payloads: dict[str, Any]) -> None:
    jobs = RecordingQueue()
    trigger = TrainingTrigger(Settings(train_every_n_annotations=0), coordinator, jobs)
    project = project_id()
    answers = [trigger.handle(annotation_event(captured_payloads, project)) for _ in range(5)]
    assert not any(a.queued for a in answers) and "off" in answers[-1].reason
    assert trigger.handle(start_training(project)).queued


def test_failed_enqueue_clears_the_queued_flag(coordinator: Coordinator) -> None:
    class Down:
        name = "down"

        def enqueue(self, project: str, reason: str) -> str:
            raise ConnectionError("broker down")

    project = project_id()
    with pytest.raises(ConnectionError):
        TrainingTrigger(Settings(), coordinator, Down()).handle(start_training(project))
    assert coordinator.mark_queued(project)  # the flag was not left behind


def test_concurrent_start_training_queue_one_job(coordinator: Coordinator) -> None:
    jobs = RecordingQueue(delay_s=0.05)
    trigger = TrainingTrigger(Settings(), coordinator, jobs)
    project = project_id()
    barrier = threading.Barrier(8)
    answers: list[bool] = []

    def press() -> None:
        barrier.wait()
        answers.append(trigger.handle(start_training(project)).queued)

    threads = [threading.Thread(target=press) for _ in range(8)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert sorted(answers) == [False] * 7 + [True]
    assert jobs.jobs == [(project, "START_TRAINING")]


# ---- one job per project ------------------------------------------------------------------------


def test_job_lock_is_exclusive_and_released(coordinator: Coordinator) -> None:
    project = project_id()
    with coordinator.job_lock(project) as first:
        assert first
        with coordinator.job_lock(project) as second:
            assert not second
        with coordinator.job_lock(project_id()) as other_project:
            assert other_project
    with coordinator.job_lock(project) as again:
        assert again


def _hold_lock(projects_dir: str, project: str, ready: Any) -> None:
    coordinator = DiskCoordinator(Path(projects_dir))
    with coordinator.job_lock(project) as acquired:
        assert acquired
        ready.set()
        time.sleep(60)  # until killed


def test_disk_lock_excludes_other_processes_and_frees_on_death(tmp_path: Path) -> None:
    ctx = multiprocessing.get_context("spawn")
    ready = ctx.Event()
    child = ctx.Process(target=_hold_lock, args=(str(tmp_path), "5", ready))
    child.start()
    try:
        assert ready.wait(60)
        coordinator = DiskCoordinator(tmp_path)
        with coordinator.job_lock("5") as acquired:
            assert not acquired
        child.kill()  # no clean exit: the kernel drops the flock
        child.join(10)
        with coordinator.job_lock("5") as acquired:
            assert acquired
    finally:
        if child.is_alive():
            child.kill()
        child.join(10)


def test_redis_lock_expires_when_its_holder_dies() -> None:
    client = _redis_or_skip()
    project = project_id()
    key = f"xsam:train:{project}:lock"
    client.set(key, "a-dead-worker", px=300)  # a holder that stopped renewing
    coordinator = RedisCoordinator(client, lock_ttl_s=3.0)
    with coordinator.job_lock(project) as acquired:
        assert not acquired
    threading.Event().wait(0.4)
    with coordinator.job_lock(project) as acquired:
        assert acquired
        assert client.pttl(key) > 0  # held with a time-to-live, renewed by the heartbeat
    assert client.get(key) is None


# ---- through the web app --------------------------------------------------------------------------


def _app(tmp_path: Path, **changes: Any) -> Any:
    settings = Settings(
        engine="fallback", weights_root=tmp_path / "weights", media_cache_dir=tmp_path / "cache"
    )
    settings = settings.with_changes(**changes)
    return create_app(settings, dispatcher=InlineDispatcher(settings))


def test_webhook_concurrent_start_training_runs_one_job(tmp_path: Path) -> None:
    app = _app(tmp_path)
    trigger = app.extensions["xsam_training"]
    started, finish = threading.Event(), threading.Event()
    runs: list[str] = []

    def job(project: str, reason: str) -> str:
        runs.append(project)
        started.set()
        finish.wait(10)
        return "done"

    trigger.jobs = ThreadTrainingQueue(Settings(), run=job)
    barrier = threading.Barrier(6)
    answers: list[dict[str, Any]] = []

    def press() -> None:
        client = app.test_client()
        barrier.wait()
        response = client.post("/webhook", json=start_training("12"))
        assert response.status_code == 200
        answers.append(response.get_json())

    threads = [threading.Thread(target=press) for _ in range(6)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    # every request was answered while the job was still running: enqueue only
    assert started.wait(5) and not finish.is_set()
    assert sum(a["queued"] for a in answers) == 1
    assert {a["reason"] for a in answers if not a["queued"]} == {
        "a training job for this project is already queued"
    }
    finish.set()
    assert trigger.jobs.join(10)
    assert runs == ["12"]


def test_webhook_counts_annotations_and_ignores_other_events(
    tmp_path: Path, captured_payloads: dict[str, Any]
) -> None:
    app = _app(tmp_path, train_every_n_annotations=2)
    recorder = RecordingQueue()
    app.extensions["xsam_training"].jobs = recorder
    client = app.test_client()
    first = client.post("/webhook", json=annotation_event(captured_payloads, "4")).get_json()
    assert (first["queued"], first["pending_changes"], first["project"]) == (False, 1, "4")
    second = client.post("/webhook", json=annotation_event(captured_payloads, "4")).get_json()
    assert second["queued"] and recorder.jobs == [("4", "2 accepted annotation changes")]
    other = client.post("/webhook", json={"action": "PROJECT_UPDATED", "project": {"id": 4}}).get_json()
    assert not other["queued"] and other["reason"] == "event does not affect training"
    bad = client.post("/webhook", json={"action": "START_TRAINING", "project": {"id": "../etc"}})
    assert bad.status_code == 400


def test_legacy_train_route_queues_like_start_training(tmp_path: Path) -> None:
    """Label Studio posts "Start training" to /train when its training-webhook flag is off."""
    app = _app(tmp_path)
    recorder = RecordingQueue()
    app.extensions["xsam_training"].jobs = recorder
    client = app.test_client()
    legacy = {"annotations": [{"id": 1, "data": {}}], "project": "4.1795316825", "label_config": "<View/>"}
    first = client.post("/train", json=legacy)
    assert first.status_code == 201, first.get_json()
    body = first.get_json()
    assert (body["queued"], body["project"], body["action"]) == (True, "4", "START_TRAINING")
    assert "job" not in body  # a "job" key would make Label Studio poll /job_status
    again = client.post("/train", json={"project": 4}).get_json()
    assert not again["queued"] and again["reason"] == "a training job for this project is already queued"
    assert recorder.jobs == [("4", "START_TRAINING")]
    for bad in ({}, {"project": "../etc"}, {"project": "abc.123"}, {"project": None}):
        response = client.post("/train", json=bad)
        assert response.status_code == 400 and "project" in response.get_json()["message"], bad
