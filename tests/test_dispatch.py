"""Dispatch without workers: the job contract, the inline dispatcher, and a Celery dispatcher whose broker is down.

The inline tests run the real fallback engine on a real PNG read through the real media fetcher
(``/data/local-files/?d=...`` under ``LOCAL_FILES_DOCUMENT_ROOT``).
"""

from __future__ import annotations

import json
import socket
import threading
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import numpy as np
import pytest
from PIL import Image

from xsam_backend.dispatch import (
    CeleryDispatcher,
    InlineDispatcher,
    JobOutcome,
    PredictJob,
    make_dispatcher,
)
from xsam_backend.engines.base import Engine
from xsam_backend.engines.factory import FALLBACK_VERSION, build_engine
from xsam_backend.errors import (
    BackendError,
    BadRequest,
    BrokerUnavailable,
    MediaNotFound,
    NeedsWeights,
    PromptError,
)
from xsam_backend.prompt import Prompt, Task, VisualRegion
from xsam_backend.segment import EngineResult, Segment
from xsam_backend.settings import Settings

SHAPE = (90, 120)  # (H, W)
CENTER = (40.0, 50.0)  # (x, y) of the square's centre, pixels


def square_mask() -> np.ndarray:
    """``(90, 120)`` bool: a 40 x 30 rectangle, columns 20..59, rows 35..64."""
    mask = np.zeros(SHAPE, bool)
    mask[35:65, 20:60] = True
    return mask


@pytest.fixture
def settings(tmp_path: Path) -> Settings:
    root = tmp_path / "root"
    root.mkdir()
    image = np.full((*SHAPE, 3), 20, np.uint8)
    image[square_mask()] = (30, 160, 230)
    Image.fromarray(image).save(root / "square.png")
    return Settings(engine="fallback", local_files_document_root=root, media_cache_dir=tmp_path / "cache")


def click(label: str = "Box") -> Prompt:
    return Prompt(Task.INTERACTIVE, regions=(VisualRegion("point", CENTER),), label=label)


def job(
    url: str = "/data/local-files/?d=square.png", task_id: int | None = 7, prompt: Prompt | None = None
) -> PredictJob:
    return PredictJob(
        image_url=url, task_id=task_id, prompt=prompt or click(), project="3", model_version=None
    )


def closed_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


# -- the job contract ---------------------------------------------------------------------------------


def test_predict_job_round_trips_through_json() -> None:
    original = PredictJob("/data/upload/3/x.jpg", 12, click(), "3", "xsam-v1")
    assert PredictJob.from_json(json.loads(json.dumps(original.to_json()))) == original


@pytest.mark.parametrize(
    ("change", "error", "field"),
    [
        ({"image_url": ""}, BadRequest, "image_url"),
        ({"task_id": True}, BadRequest, "task_id"),
        ({"task_id": "7"}, BadRequest, "task_id"),
        ({"model_version": 3}, BadRequest, "model_version"),
        ({"prompt": {"task": "paint"}}, PromptError, "task"),
        ({"prompt": {"task": "interactive", "regions": []}}, PromptError, "point"),
        ({"prompt": {"task": "generic", "classes": ["cat"], "image_size": [1]}}, BadRequest, "prompt"),
        ({"prompt": {"task": "generic", "classes": ["cat"], "image_size": ["a", 2]}}, BadRequest, "prompt"),
    ],
)
def test_predict_job_from_json_names_the_bad_field(change: dict[str, Any], error: type, field: str) -> None:
    data = {**job().to_json(), **change}
    with pytest.raises(error, match=field):
        PredictJob.from_json(data)


def test_predict_job_accepts_a_numeric_project_id() -> None:
    assert PredictJob.from_json({**job().to_json(), "project": 3}).project == "3"


def test_job_outcome_round_trips_results_and_errors() -> None:
    mask = square_mask()
    result = EngineResult(segments=(Segment(mask, "Box", 0.8),), model_version="v1", engine="fallback")
    back = JobOutcome.from_json(json.loads(json.dumps(JobOutcome.success(result).to_json())))
    assert back.error is None and back.result is not None
    assert np.array_equal(back.result.segments[0].mask, mask) and back.result.segments[0].label == "Box"

    failure = JobOutcome.failure(MediaNotFound("no such image")).to_json()
    assert failure == {"error": {"code": "media_not_found", "message": "no such image"}}
    error = JobOutcome.from_json(failure).error
    assert isinstance(error, MediaNotFound) and error.message == "no such image"


def test_job_outcome_turns_an_unreadable_reply_into_an_error() -> None:
    outcome = JobOutcome.from_json({"masks": []})
    assert type(outcome.error) is BackendError and "cannot read" in outcome.error.message


def test_job_outcome_holds_exactly_one_of_result_and_error() -> None:
    with pytest.raises(ValueError):
        JobOutcome(result=None, error=None)


# -- inline ---------------------------------------------------------------------------------------------


def test_inline_click_gives_the_mask(settings: Settings) -> None:
    (outcome,) = InlineDispatcher(settings).predict([job()], "interactive")
    assert outcome.error is None and outcome.result is not None
    (segment,) = outcome.result.segments
    assert segment.mask.shape == SHAPE and segment.label == "Box"
    expected = square_mask()
    assert (segment.mask & expected).sum() / (segment.mask | expected).sum() > 0.95
    assert outcome.result.model_version == FALLBACK_VERSION


def test_inline_keeps_order_and_fails_jobs_one_by_one(settings: Settings) -> None:
    jobs = [
        job(task_id=1),
        job("/data/local-files/?d=absent.png", task_id=2),
        job(task_id=3, prompt=Prompt(Task.REFERRING, text="the blue box")),
        job(task_id=4, prompt=Prompt(Task.INTERACTIVE, regions=(VisualRegion("point", (500.0, 5.0)),))),
        job(task_id=5, prompt=click("Other")),
    ]
    outcomes = InlineDispatcher(settings).predict(jobs, "prelabel")
    assert [type(o.error) for o in outcomes] == [
        type(None),
        MediaNotFound,
        NeedsWeights,
        PromptError,
        type(None),
    ]
    assert outcomes[0].result is not None and outcomes[0].result.segments[0].label == "Box"
    assert outcomes[4].result is not None and outcomes[4].result.segments[0].label == "Other"
    assert "absent.png" in str(outcomes[1].error)


class Observed:
    """The real fallback engine, with ``before(prompt, project)`` called ahead of every prediction."""

    def __init__(self, settings: Settings, before: Callable[[Prompt, str | None], None]) -> None:
        self.inner = build_engine(settings)
        self.name, self.model_version = self.inner.name, self.inner.model_version
        self.before = before

    def supports(self, task: Task) -> bool:
        return self.inner.supports(task)

    def predict(self, image: np.ndarray, prompt: Prompt, project: str | None = None) -> EngineResult:
        self.before(prompt, project)
        return self.inner.predict(image, prompt, project=project)


def test_inline_turns_an_engine_crash_into_that_jobs_error(settings: Settings) -> None:
    def explode(prompt: Prompt, project: str | None) -> None:
        if prompt.label == "boom":
            raise RuntimeError("CUDA error: an illegal memory access was encountered")

    dispatcher = InlineDispatcher(settings, engine_factory=lambda s: Observed(s, explode))
    broken, fine = dispatcher.predict([job(prompt=click("boom")), job()], "interactive")
    assert type(broken.error) is BackendError and "RuntimeError: CUDA error" in broken.error.message
    assert fine.error is None


def test_inline_builds_the_engine_once_lazily_under_concurrency(settings: Settings) -> None:
    calls: list[int] = []
    gate = threading.Barrier(8)

    def counting_factory(s: Settings) -> Engine:
        calls.append(1)
        time.sleep(0.05)  # widen the window in which a second builder could slip in
        return build_engine(s)

    dispatcher = InlineDispatcher(settings, engine_factory=counting_factory)
    assert calls == [] and dispatcher.health()["engine_loaded"] is False
    outcomes: list[JobOutcome] = []

    def click_once() -> None:
        gate.wait()
        outcomes.extend(dispatcher.predict([job()], "interactive"))

    threads = [threading.Thread(target=click_once) for _ in range(8)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join(30)
    assert calls == [1]
    assert len(outcomes) == 8 and all(o.error is None for o in outcomes)
    assert dispatcher.health()["engine_loaded"] is True


def test_inline_lets_a_click_go_before_waiting_batch_jobs(settings: Settings) -> None:
    """While the engine is busy, a click that arrives after a batch job still runs before it."""
    order: list[str] = []
    busy, release = threading.Event(), threading.Event()

    def hold_the_first(prompt: Prompt, project: str | None) -> None:
        order.append(str(prompt.label))
        if prompt.label == "first":
            busy.set()
            release.wait(10)

    dispatcher = InlineDispatcher(settings, engine_factory=lambda s: Observed(s, hold_the_first))
    dispatcher.predict([job()], "interactive")  # build the engine and warm the media cache
    order.clear()

    def run(label: str, queue: Any) -> threading.Thread:
        thread = threading.Thread(target=dispatcher.predict, args=([job(prompt=click(label))], queue))
        thread.start()
        return thread

    first = run("first", "prelabel")
    assert busy.wait(10)
    waiting_batch = run("batch", "prelabel")
    wait_until(lambda: dispatcher.health()["waiting"] == {"interactive": 0, "prelabel": 1})
    waiting_click = run("click", "interactive")
    wait_until(lambda: dispatcher.health()["waiting"] == {"interactive": 1, "prelabel": 1})
    release.set()
    for thread in (first, waiting_batch, waiting_click):
        thread.join(10)
    assert order == ["first", "click", "batch"]


def wait_until(condition: Callable[[], object], timeout_s: float = 10.0) -> None:
    deadline = time.monotonic() + timeout_s
    while not condition():
        assert time.monotonic() < deadline, "condition not reached"
        time.sleep(0.005)


def test_inline_health_does_not_build_the_engine(settings: Settings) -> None:
    health = InlineDispatcher(settings).health()
    assert health == {
        "dispatcher": "inline",
        "engine": "fallback",
        "model_version": FALLBACK_VERSION,
        "engine_loaded": False,
        "waiting": {"interactive": 0, "prelabel": 0},
    }


def test_unknown_queue_is_refused(settings: Settings) -> None:
    with pytest.raises(ValueError, match="queue"):
        InlineDispatcher(settings).predict([job()], "train")  # type: ignore[arg-type]


# -- choosing, and a broker that is down -------------------------------------------------------------------


def test_make_dispatcher_follows_redis_url(settings: Settings) -> None:
    assert make_dispatcher(settings).name == "inline"
    celery = make_dispatcher(settings.with_changes(redis_url=f"redis://127.0.0.1:{closed_port()}/0"))
    try:
        assert celery.name == "celery"
    finally:
        celery.close()


def test_broker_down_is_reported_fast_and_without_the_password(settings: Settings) -> None:
    port = closed_port()
    dispatcher = CeleryDispatcher(settings.with_changes(redis_url=f"redis://:s3cret@127.0.0.1:{port}/5"))
    try:
        started = time.monotonic()
        with pytest.raises(BrokerUnavailable) as caught:
            dispatcher.predict([job()], "interactive")
        assert time.monotonic() - started < 2.0
        assert f"127.0.0.1:{port}" in caught.value.message and "s3cret" not in caught.value.message
        assert caught.value.status == 503

        started = time.monotonic()
        health = dispatcher.health()
        assert time.monotonic() - started < 1.5
    finally:
        dispatcher.close()
    assert health["dispatcher"] == "celery" and health["broker"].startswith("down: ")
    assert "s3cret" not in json.dumps(health)


def test_empty_request_needs_no_broker(settings: Settings) -> None:
    dispatcher = CeleryDispatcher(settings.with_changes(redis_url=f"redis://127.0.0.1:{closed_port()}/0"))
    try:
        assert dispatcher.predict([], "prelabel") == []
    finally:
        dispatcher.close()


def test_the_job_names_its_project_to_the_engine(settings: Settings) -> None:
    seen: list[str | None] = []
    dispatcher = InlineDispatcher(settings, engine_factory=lambda s: Observed(s, lambda _p, project: seen.append(project)))
    (outcome,) = dispatcher.predict([PredictJob(**{**job().__dict__, "project": "7"})], "interactive")
    assert outcome.error is None
    assert seen == ["7"]
