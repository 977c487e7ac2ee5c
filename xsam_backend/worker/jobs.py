"""What a worker runs: one prediction job = fetch the image, run the engine, return the segments.

This module is the same in both dispatch modes: the inline dispatcher runs it in the web process,
the Celery tasks run it in worker processes. It knows nothing about Celery or HTTP.

* :class:`PredictJob` is the message: an image *reference* (the Label Studio URL and task id),
  never the pixels, plus the :class:`~xsam_backend.prompt.Prompt`. It crosses Redis as JSON.
* :class:`JobOutcome` is the answer for one job: an :class:`~xsam_backend.segment.EngineResult`
  or a :class:`~xsam_backend.errors.BackendError` (a per-task failure such as a missing image or a
  prompt the engine cannot answer). It crosses Redis as ``EngineResult.to_json()`` or
  ``{"error": {"code", "message"}}``.
* :class:`JobRunner` owns the per-process engine and media fetcher, builds them lazily once (never
  at import), and lets one engine call run at a time, clicks before batch jobs.
"""

from __future__ import annotations

import logging
import threading
from collections.abc import Callable, Iterator, Mapping
from contextlib import AbstractContextManager, contextmanager, nullcontext
from dataclasses import dataclass
from typing import Any, Protocol

import numpy as np

from xsam_backend.engines.base import Engine
from xsam_backend.engines.factory import build_engine, describe_engine
from xsam_backend.engines.frame import fit_prompt, fit_result
from xsam_backend.errors import BackendError, BadRequest, error_from_json
from xsam_backend.prompt import Prompt
from xsam_backend.segment import EngineResult
from xsam_backend.settings import Settings

log = logging.getLogger(__name__)


class ImageFetcher(Protocol):
    """Turns a Label Studio task data value into pixels (``MediaFetcher`` is the implementation)."""

    def fetch(self, url: str, task_id: int | None) -> np.ndarray:
        """``(H, W, 3)`` ``uint8`` RGB, the original image after EXIF orientation.

        Raises :class:`~xsam_backend.errors.MediaError` subclasses when the image cannot be used.
        """
        ...


@dataclass(frozen=True)
class PredictJob:
    """One image to segment for one prompt; only JSON crosses Redis (:meth:`to_json`).

    ``image_url``: the task data value as Label Studio sent it (``/data/upload/3/x.jpg``,
    ``/data/local-files/?d=...``, ``s3://...``, ``https://...``); the worker downloads it.
    ``task_id``: the Label Studio task id (needed to presign cloud storage URLs).
    ``project``: the Label Studio project id. ``model_version``: the version the web process
    expects (``None``: whatever the worker serves); the result always names the version that
    actually answered.
    """

    image_url: str
    task_id: int | None
    prompt: Prompt
    project: str | None = None
    model_version: str | None = None

    def to_json(self) -> dict[str, Any]:
        """JSON-safe dict: ``{"image_url", "task_id", "prompt", "project", "model_version"}``."""
        return {
            "image_url": self.image_url,
            "task_id": self.task_id,
            "prompt": self.prompt.to_json(),
            "project": self.project,
            "model_version": self.model_version,
        }

    @classmethod
    def from_json(cls, data: Mapping[str, Any]) -> PredictJob:
        """Inverse of :meth:`to_json`; raises :class:`BadRequest` (or ``PromptError``) naming the field."""
        if not isinstance(data, Mapping):
            raise BadRequest(f"a predict job must be a JSON object; got {type(data).__name__}")
        image_url = data.get("image_url")
        if not isinstance(image_url, str) or not image_url:
            raise BadRequest(f"a predict job needs 'image_url', a non-empty string; got {image_url!r:.200}")
        task_id = data.get("task_id")
        if task_id is not None and (isinstance(task_id, bool) or not isinstance(task_id, int)):
            raise BadRequest(f"'task_id' must be an integer or null; got {task_id!r:.100}")
        project = data.get("project")
        if project is not None and not isinstance(project, str | int):
            raise BadRequest(f"'project' must be a string or null; got {project!r:.100}")
        model_version = data.get("model_version")
        if model_version is not None and not isinstance(model_version, str):
            raise BadRequest(f"'model_version' must be a string or null; got {model_version!r:.100}")
        try:
            prompt = Prompt.from_json(data.get("prompt"))  # type: ignore[arg-type]
        except (TypeError, ValueError, IndexError, KeyError) as exc:
            raise BadRequest(f"the job's 'prompt' is malformed: {type(exc).__name__}: {exc}") from None
        return cls(
            image_url=image_url,
            task_id=task_id,
            prompt=prompt,
            project=None if project is None else str(project),
            model_version=model_version,
        )


@dataclass(frozen=True)
class JobOutcome:
    """The answer for one job: exactly one of ``result`` and ``error`` is set."""

    result: EngineResult | None
    error: BackendError | None

    def __post_init__(self) -> None:
        if (self.result is None) == (self.error is None):
            raise ValueError("a job outcome holds either a result or an error, not both or neither")

    @classmethod
    def success(cls, result: EngineResult) -> JobOutcome:
        return cls(result=result, error=None)

    @classmethod
    def failure(cls, error: BackendError) -> JobOutcome:
        return cls(result=None, error=error)

    def to_json(self) -> dict[str, Any]:
        """``EngineResult.to_json()`` on success, ``{"error": {"code", "message"}}`` on failure."""
        if self.error is not None:
            return {"error": {"code": self.error.code, "message": self.error.message}}
        assert self.result is not None  # guaranteed by __post_init__
        return self.result.to_json()

    @classmethod
    def from_json(cls, data: Any) -> JobOutcome:
        """Inverse of :meth:`to_json`; a reply of the wrong shape becomes a failure, never a crash."""
        if isinstance(data, Mapping) and isinstance(data.get("error"), Mapping):
            return cls.failure(error_from_json(dict(data["error"])))
        try:
            return cls.success(EngineResult.from_json(data))
        except (BadRequest, KeyError, TypeError, ValueError) as exc:
            return cls.failure(BackendError(f"the worker sent a reply the web process cannot read: {exc}"))


def as_backend_error(exc: Exception) -> BackendError:
    """``exc`` itself if it is a :class:`BackendError`, else a 500 ``BackendError`` naming it.

    Jobs are isolated from each other: one broken image or engine bug fails its own task, not the
    whole request or batch.
    """
    if isinstance(exc, BackendError):
        return exc
    return BackendError(f"prediction failed: {type(exc).__name__}: {exc}")


def run_predict_job(
    job: PredictJob,
    engine: Engine,
    fetcher: ImageFetcher,
    engine_turn: Callable[[], AbstractContextManager[object]] = nullcontext,
) -> EngineResult:
    """Fetch ``job.image_url`` and segment it for ``job.prompt``.

    The image is ``(H, W, 3)`` ``uint8`` RGB in the original pixel frame; the result's masks are
    ``(H, W)`` bool in the prompt's frame (``prompt.image_size``, Label Studio's), which is the
    image's own unless the two disagree (see :mod:`xsam_backend.engines.frame`). ``engine_turn`` is entered around the
    engine call only, so downloads of other jobs overlap with inference. Raises ``MediaError``,
    ``NeedsWeights`` or ``PromptError`` for this job.
    """
    image = fetcher.fetch(job.image_url, job.task_id)
    image_size = (int(image.shape[0]), int(image.shape[1]))
    prompt = fit_prompt(job.prompt, image_size)
    with engine_turn():
        result = engine.predict(image, prompt, project=job.project)
    result = fit_result(result, job.prompt.image_size)
    if job.model_version is not None and job.model_version != result.model_version:
        log.info(
            "task %s: expected model version %s, answered by %s",
            job.task_id,
            job.model_version,
            result.model_version,
        )
    return result


class _EngineGate:
    """One engine call at a time; urgent callers (clicks) go before waiting batch callers.

    A plain lock is not fair, so a batch running job after job in one thread could make a click in
    another thread wait for the whole batch; here a batch caller yields while a click is waiting.
    """

    def __init__(self) -> None:
        self._cond = threading.Condition()
        self._busy = False
        self._waiting = {True: 0, False: 0}  # urgent -> callers waiting for their turn

    @property
    def waiting(self) -> dict[str, int]:
        """Callers waiting for the engine: ``{"interactive": n, "prelabel": m}``."""
        with self._cond:
            return {"interactive": self._waiting[True], "prelabel": self._waiting[False]}

    @contextmanager
    def turn(self, urgent: bool) -> Iterator[None]:
        with self._cond:
            self._waiting[urgent] += 1
            try:
                while self._busy or (not urgent and self._waiting[True]):
                    self._cond.wait()
            finally:
                self._waiting[urgent] -= 1
            self._busy = True
        try:
            yield
        finally:
            with self._cond:
                self._busy = False
                self._cond.notify_all()


def make_media_fetcher(settings: Settings) -> ImageFetcher:
    """The production fetcher, ``MediaFetcher(settings)``."""
    # Imported here so that importing the job contract does not pull in the download stack.
    from xsam_backend.labelstudio.media import MediaFetcher

    fetcher: ImageFetcher = MediaFetcher(settings)
    return fetcher


class JobRunner:
    """The engine and media fetcher of one process, built lazily once, shared by its threads.

    ``engine_factory`` and ``fetcher_factory`` are called at most once each, on first use (or in
    :meth:`warm_up`), never at construction: constructing a runner is free, so a web process or a
    Celery parent process can hold one without loading a model.
    """

    def __init__(
        self,
        settings: Settings,
        engine_factory: Callable[[Settings], Engine] = build_engine,
        fetcher_factory: Callable[[Settings], ImageFetcher] = make_media_fetcher,
    ) -> None:
        self.settings = settings
        self._engine_factory = engine_factory
        self._fetcher_factory = fetcher_factory
        self._engine: Engine | None = None
        self._fetcher: ImageFetcher | None = None
        self._build_lock = threading.Lock()
        self._gate = _EngineGate()

    @property
    def engine(self) -> Engine:
        """The engine, built on first access (thread-safe: concurrent first callers build it once)."""
        if self._engine is None:
            with self._build_lock:
                if self._engine is None:
                    engine = self._engine_factory(self.settings)
                    log.info("engine ready: %s (model version %s)", engine.name, engine.model_version)
                    self._engine = engine
        return self._engine

    @property
    def fetcher(self) -> ImageFetcher:
        """The media fetcher, built on first access."""
        if self._fetcher is None:
            with self._build_lock:
                if self._fetcher is None:
                    self._fetcher = self._fetcher_factory(self.settings)
        return self._fetcher

    @property
    def engine_loaded(self) -> bool:
        return self._engine is not None

    def warm_up(self) -> None:
        """Build the engine and fetcher now (a worker does this before it takes its first job)."""
        _ = self.engine, self.fetcher

    def run(self, job: PredictJob, urgent: bool = False) -> EngineResult:
        """:func:`run_predict_job` with this process's engine; ``urgent`` jobs get the engine first."""
        return run_predict_job(job, self.engine, self.fetcher, lambda: self._gate.turn(urgent))

    def outcome(
        self, job: PredictJob, urgent: bool = False, interrupts: tuple[type[BaseException], ...] = ()
    ) -> JobOutcome:
        """:meth:`run`, with any failure of this job turned into ``JobOutcome.error``.

        ``interrupts`` are exceptions that stop the caller rather than fail this job (a Celery
        task's soft time limit); they propagate.
        """
        try:
            return JobOutcome.success(self.run(job, urgent))
        except BackendError as exc:
            log.info("task %s: %s: %s", job.task_id, exc.code, exc.message)
            return JobOutcome.failure(exc)
        except Exception as exc:  # an engine bug must fail this task only, with its traceback logged
            if isinstance(exc, interrupts):
                raise
            log.exception("task %s: prediction failed", job.task_id)
            return JobOutcome.failure(as_backend_error(exc))

    def describe(self) -> dict[str, Any]:
        """``{"engine", "model_version", "engine_loaded", "waiting"}`` without building anything.

        ``waiting``: jobs waiting for the engine, per queue (``{"interactive": n, "prelabel": m}``).
        """
        out: dict[str, Any] = {"engine_loaded": self._engine is not None, "waiting": self._gate.waiting}
        if self._engine is not None:
            return {"engine": self._engine.name, "model_version": self._engine.model_version, **out}
        try:
            description = describe_engine(self.settings)
        except (OSError, ValueError) as exc:
            return {"engine": f"unavailable: {exc}", "model_version": None, **out}
        return {"engine": description.name, "model_version": description.model_version, **out}
