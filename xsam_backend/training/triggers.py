"""Webhook events → training jobs: parse, debounce, enqueue; never train in the request.

Label Studio waits 1 s for a webhook (100 s for "Start training"), so ``/webhook`` only counts and
enqueues. Events:

* ``ANNOTATION_CREATED`` / ``ANNOTATION_UPDATED`` (one ``annotation``) and the bulk
  ``ANNOTATIONS_CREATED`` (a list): each *accepted* annotation (see
  :func:`~xsam_backend.training.dataset.is_accepted`, ``TRAIN_ACCEPT``) is one change;
* ``ANNOTATION_DELETED`` / ``ANNOTATIONS_DELETED``: each deleted annotation is one change (the
  training data shrank);
* ``START_TRAINING``: a job now, whatever the count.

Changes accumulate per project; when they reach ``TRAIN_EVERY_N_ANNOTATIONS`` (0: on demand
only) the counter restarts and a job is enqueued. At most one job per project is queued at a time
(:meth:`Coordinator.mark_queued`), and the job itself takes the project's lock, so at most one
runs. Jobs go to the Celery ``train`` queue (``REDIS_URL`` set) or to one background thread of
the web process (embedded mode).
"""

from __future__ import annotations

import logging
import queue
import threading
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from typing import Any, Protocol

from xsam_backend.errors import BrokerUnavailable
from xsam_backend.settings import AcceptChoice, Settings
from xsam_backend.training.coordination import Coordinator, make_coordinator
from xsam_backend.training.dataset import is_accepted
from xsam_backend.training.versions import check_project

log = logging.getLogger(__name__)

START_TRAINING = "START_TRAINING"
_CHANGE_EVENTS = frozenset(
    {
        "ANNOTATION_CREATED",
        "ANNOTATION_UPDATED",
        "ANNOTATIONS_CREATED",
        "ANNOTATION_DELETED",
        "ANNOTATIONS_DELETED",
    }
)


@dataclass(frozen=True)
class WebhookEvent:
    """What a webhook body means for training: its project and how many accepted changes it carries."""

    action: str
    project: str | None
    changes: int

    @property
    def on_demand(self) -> bool:
        return self.action == START_TRAINING


def _project_of(body: Mapping[str, Any]) -> str | None:
    candidates: list[Any] = [body.get("project")]
    for key in ("annotation", "annotations", "task", "tasks"):
        value = body.get(key)
        items = value if isinstance(value, list) else [value]
        candidates.extend(item.get("project") for item in items if isinstance(item, Mapping))
    for candidate in candidates:
        if isinstance(candidate, Mapping):
            candidate = candidate.get("id")
        if candidate is not None and not isinstance(candidate, bool):
            return check_project(candidate)
    return None


def parse_event(body: Mapping[str, Any], accept: AcceptChoice) -> WebhookEvent:
    """The :class:`WebhookEvent` of a webhook body (``{"action", "project", "annotation", ...}``)."""
    action = str(body.get("action", ""))
    project = _project_of(body)
    if action in ("ANNOTATION_CREATED", "ANNOTATION_UPDATED", "ANNOTATIONS_CREATED"):
        value = body.get("annotation", body.get("annotations"))
        items = value if isinstance(value, list) else [value]
        changes = sum(1 for a in items if isinstance(a, Mapping) and is_accepted(a, accept))
    elif action in ("ANNOTATION_DELETED", "ANNOTATIONS_DELETED"):
        value = body.get("annotations", body.get("annotation"))
        changes = len(value) if isinstance(value, list) else int(value is not None)
    else:
        changes = 0
    return WebhookEvent(action=action, project=project, changes=changes)


@dataclass(frozen=True)
class TriggerDecision:
    """The webhook's answer: whether a job was queued, why, and the changes still pending."""

    action: str
    project: str | None
    queued: bool
    reason: str
    pending: int = 0
    job_id: str | None = None

    def to_json(self) -> dict[str, Any]:
        return {
            "action": self.action,
            "project": self.project,
            "queued": self.queued,
            "reason": self.reason,
            "pending_changes": self.pending,
            "job_id": self.job_id,
        }


class TrainingQueue(Protocol):
    """Where training jobs go."""

    name: str

    def enqueue(self, project: str, reason: str) -> str:
        """Queue a job for ``project``; returns a job id. Raises ``BrokerUnavailable`` when it cannot."""
        ...


class CeleryTrainingQueue:
    """Sends ``xsam.train_project`` to the Celery ``train`` queue."""

    name = "celery"

    def __init__(self, settings: Settings) -> None:
        from xsam_backend.worker.app import make_celery

        self._app = make_celery(settings)

    def enqueue(self, project: str, reason: str) -> str:
        from kombu.exceptions import OperationalError
        from redis import RedisError

        from xsam_backend.worker.tasks import TRAIN_PROJECT

        try:
            result = self._app.send_task(TRAIN_PROJECT, args=[project, reason], queue="train")
        except (OperationalError, RedisError, OSError) as exc:
            raise BrokerUnavailable(f"cannot queue the training job: {type(exc).__name__}: {exc}") from exc
        return str(result.id)


class ThreadTrainingQueue:
    """Runs jobs one after the other in a daemon thread of this process (embedded mode).

    ``run(project, reason)`` is the job (default: :func:`~xsam_backend.training.job.run_training_job`
    with ``settings``); its failures are logged, never raised into the web request.
    """

    name = "thread"

    def __init__(self, settings: Settings, run: Callable[[str, str], object] | None = None) -> None:
        self._settings = settings
        self._run = run or self._default_run
        self._jobs: queue.Queue[tuple[str, str, str]] = queue.Queue()
        self._thread: threading.Thread | None = None
        self._lock = threading.Lock()
        self._count = 0

    def _default_run(self, project: str, reason: str) -> object:
        from xsam_backend.training.job import run_training_job

        return run_training_job(self._settings, project, reason)

    def enqueue(self, project: str, reason: str) -> str:
        with self._lock:
            self._count += 1
            job_id = f"thread-{self._count}"
            if self._thread is None or not self._thread.is_alive():
                self._thread = threading.Thread(target=self._loop, name="xsam-training", daemon=True)
                self._thread.start()
        self._jobs.put((job_id, project, reason))
        return job_id

    def join(self, timeout_s: float | None = None) -> bool:
        """Wait until every queued job has finished (tests, shutdown); ``False`` on time-out."""
        done = threading.Event()

        def wait() -> None:
            self._jobs.join()
            done.set()

        threading.Thread(target=wait, daemon=True).start()
        return done.wait(timeout_s)

    def _loop(self) -> None:
        while True:
            job_id, project, reason = self._jobs.get()
            try:
                result = self._run(project, reason)
                log.info("training job %s for project %s finished: %s", job_id, project, result)
            except Exception:  # a failed job must not stop the thread that runs the next one
                log.exception("training job %s for project %s failed", job_id, project)
            finally:
                self._jobs.task_done()


class TrainingTrigger:
    """Turns webhook bodies into at most one queued job per project (module docstring)."""

    def __init__(self, settings: Settings, coordinator: Coordinator, jobs: TrainingQueue) -> None:
        self.every_n = settings.train_every_n_annotations
        self.accept = settings.train_accept
        self.coordinator = coordinator
        self.jobs = jobs

    def handle(self, body: Mapping[str, Any]) -> TriggerDecision:
        """Count, and enqueue when due. Fast: a few Redis or file operations and one publish."""
        event = parse_event(body, self.accept)
        if event.project is None:
            return TriggerDecision(event.action, None, False, "no project id in the event")
        if event.on_demand:
            self.coordinator.reset_changes(event.project)
            return self._enqueue(event, "START_TRAINING", 0)
        if event.action not in _CHANGE_EVENTS:
            return TriggerDecision(event.action, event.project, False, "event does not affect training")
        if event.changes == 0:
            return TriggerDecision(event.action, event.project, False, "no accepted annotation in the event")
        due, pending = self.coordinator.add_changes(event.project, event.changes, self.every_n)
        if not due:
            reason = (
                "automatic training is off (TRAIN_EVERY_N_ANNOTATIONS=0)"
                if self.every_n <= 0
                else f"{pending} of {self.every_n} changes before the next training"
            )
            return TriggerDecision(event.action, event.project, False, reason, pending)
        return self._enqueue(event, f"{self.every_n} accepted annotation changes", 0)

    def _enqueue(self, event: WebhookEvent, reason: str, pending: int) -> TriggerDecision:
        assert event.project is not None
        if not self.coordinator.mark_queued(event.project):
            return TriggerDecision(
                event.action,
                event.project,
                False,
                "a training job for this project is already queued",
                pending,
            )
        try:
            job_id = self.jobs.enqueue(event.project, reason)
        except BaseException:
            self.coordinator.clear_queued(event.project)
            raise
        log.info("project %s: training job %s queued (%s)", event.project, job_id, reason)
        return TriggerDecision(event.action, event.project, True, reason, pending, job_id)

    def status(self, project: str) -> dict[str, Any] | None:
        """The project's last recorded training status (see :mod:`xsam_backend.training.job`)."""
        return self.coordinator.status(project)


def make_training_trigger(settings: Settings) -> TrainingTrigger:
    """Celery queue and Redis coordination with ``REDIS_URL``, else a thread and files."""
    coordinator = make_coordinator(settings.redis_url, settings.projects_dir, settings.broker_check_timeout_s)
    jobs: TrainingQueue = (
        CeleryTrainingQueue(settings) if settings.redis_url else ThreadTrainingQueue(settings)
    )
    return TrainingTrigger(settings, coordinator, jobs)
