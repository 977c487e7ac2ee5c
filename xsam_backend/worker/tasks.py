"""Thin Celery tasks: JSON in, :class:`~xsam_backend.worker.jobs.JobRunner` runs, JSON out.

A task only decodes its message, hands the jobs to the runner and encodes the answers; the work
is in :mod:`xsam_backend.worker.jobs`. Every answer is ``EngineResult.to_json()`` or
``{"error": {"code", "message"}}`` (:meth:`JobOutcome.to_json`), so a task never fails because of
one job: per-job failures travel as data, and the task itself fails only when the process does.
"""

from __future__ import annotations

import logging
from collections.abc import Sequence
from typing import Any

from celery import Celery, Task
from celery.exceptions import SoftTimeLimitExceeded

from xsam_backend.errors import BackendError, JobTimeout
from xsam_backend.worker.jobs import JobOutcome, JobRunner, PredictJob

log = logging.getLogger(__name__)

PREDICT_INTERACTIVE = "xsam.predict_interactive"
PREDICT_BATCH = "xsam.predict_batch"
TRAIN_PREFIX = "xsam.train"
TRAIN_PROJECT = f"{TRAIN_PREFIX}_project"


def _answer(runner: JobRunner, data: Any, urgent: bool) -> dict[str, Any]:
    try:
        job = PredictJob.from_json(data)
    except BackendError as exc:  # a malformed message fails its own job, with the reason
        return JobOutcome.failure(exc).to_json()
    return runner.outcome(job, urgent=urgent, interrupts=(SoftTimeLimitExceeded,)).to_json()


def _timed_out(done: int, total: int) -> dict[str, Any]:
    error = JobTimeout(f"the worker ran out of time after {done} of {total} jobs of this message")
    return JobOutcome.failure(error).to_json()


def register_tasks(app: Celery, runner: JobRunner) -> None:
    """Define ``xsam.predict_interactive``, ``xsam.predict_batch`` and ``xsam.train_project`` on
    ``app``; the predict tasks run on ``runner``."""

    @app.task(name=PREDICT_INTERACTIVE)
    def predict_interactive(job: dict[str, Any]) -> dict[str, Any]:
        """One click: a ``PredictJob`` JSON in, one ``JobOutcome`` JSON out."""
        try:
            return _answer(runner, job, urgent=True)
        except SoftTimeLimitExceeded:
            return _timed_out(0, 1)

    @app.task(name=PREDICT_BATCH)
    def predict_batch(jobs: Sequence[dict[str, Any]]) -> list[dict[str, Any]]:
        """Several pre-label jobs, run in order: a list of ``PredictJob`` JSON in, outcomes out in order.

        Past the soft time limit the jobs not yet finished are answered with ``job_timeout``.
        """
        answers: list[dict[str, Any]] = []
        try:
            for data in jobs:
                answers.append(_answer(runner, data, urgent=False))
        except SoftTimeLimitExceeded:
            log.warning(
                "prelabel message stopped by its time limit after %d of %d jobs", len(answers), len(jobs)
            )
            answers.extend(_timed_out(len(answers), len(jobs)) for _ in range(len(jobs) - len(answers)))
        return answers

    # Acknowledged on receipt: a training run outlives the broker's visibility timeout, and a
    # redelivered copy would only find the project locked. A lost job is re-triggered by the next
    # webhook once the queued flag expires.
    @app.task(name=TRAIN_PROJECT, bind=True, acks_late=False)
    def train_project(self: Task, project: str, reason: str = "on demand") -> dict[str, Any]:
        """Fine-tune, evaluate and version one project; progress goes to the task state (``PROGRESS``
        with ``{"state", "percent", "message"}``). Returns the job result JSON (``status`` is
        ``promoted``, ``rejected``, ``skipped``, ``no_data`` or ``failed``)."""
        from xsam_backend.training.job import run_training_job

        def progress(status: dict[str, Any]) -> None:
            if self.request.id is not None:
                self.update_state(state="PROGRESS", meta=status)

        try:
            return run_training_job(runner.settings, project, reason, progress=progress).to_json()
        except BackendError as exc:
            log.error("training of project %s failed: %s: %s", project, exc.code, exc.message)
            return {"project": str(project), "status": "failed", "message": f"{exc.code}: {exc.message}"}
