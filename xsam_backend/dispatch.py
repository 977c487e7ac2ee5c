"""Dispatch: how the web process gets prediction jobs run, in-process or by Celery workers.

* :class:`InlineDispatcher` (no ``REDIS_URL``): the engine lives in the web process, built on the
  first job; one engine call at a time, clicks before pre-label jobs.
* :class:`CeleryDispatcher` (``REDIS_URL`` set): the web process only enqueues JSON on Redis and
  waits; workers (``python -m xsam_backend worker``) own the engine. Clicks go to the
  ``interactive`` queue, pre-labelling to ``prelabel``, so a click never waits behind a batch.

Both answer one :class:`JobOutcome` per :class:`PredictJob`, in order: a per-task failure (missing
image, a text prompt without weights...) is that outcome's ``error``; only failures of the whole
call raise: :class:`~xsam_backend.errors.BrokerUnavailable` and
:class:`~xsam_backend.errors.JobTimeout`.

Usage::

    dispatcher = make_dispatcher(settings)
    outcomes = dispatcher.predict([PredictJob(url, task_id, prompt, project, None)], "interactive")
"""

from __future__ import annotations

import time
from collections.abc import Callable, Sequence
from typing import Any, Literal, Protocol, cast

import redis
from celery.exceptions import TimeLimitExceeded
from celery.exceptions import TimeoutError as CeleryTimeoutError
from celery.result import AsyncResult
from kombu.exceptions import OperationalError
from kombu.utils.url import maybe_sanitize_url

from xsam_backend.engines.base import Engine
from xsam_backend.engines.factory import build_engine
from xsam_backend.errors import BackendError, BrokerUnavailable, JobTimeout
from xsam_backend.settings import Settings
from xsam_backend.worker.app import make_celery
from xsam_backend.worker.jobs import ImageFetcher, JobOutcome, JobRunner, PredictJob, make_media_fetcher
from xsam_backend.worker.tasks import PREDICT_BATCH, PREDICT_INTERACTIVE

__all__ = [
    "CeleryDispatcher",
    "Dispatcher",
    "InlineDispatcher",
    "JobOutcome",
    "PredictJob",
    "Queue",
    "make_dispatcher",
]

Queue = Literal["interactive", "prelabel"]

# A cached successful broker check spares each click a round trip; a failed one is not cached.
_BROKER_OK_TTL_S = 1.0
# Pre-label jobs per message: enough to amortise a message, few enough that a large request
# spreads over several workers and a message stays short (see visibility_timeout_s).
JOBS_PER_PRELABEL_MESSAGE = 8


class Dispatcher(Protocol):
    """Runs prediction jobs somewhere and returns their outcomes."""

    name: str
    """``"inline"`` or ``"celery"``."""

    def predict(self, jobs: Sequence[PredictJob], queue: Queue) -> list[JobOutcome]:
        """One outcome per job, in order; per-job failures are in ``JobOutcome.error``.

        ``queue``: ``"interactive"`` for prompts an annotator waits on, ``"prelabel"`` for
        automatic pre-labelling. Raises ``BrokerUnavailable`` (within ~2 s) when the broker is down
        and ``JobTimeout`` when the answers do not come within the queue's time limit.
        """
        ...

    def health(self) -> dict[str, Any]:
        """``{"dispatcher", "broker": "ok" | "down: <reason>", ...}`` (no ``broker`` inline); never raises, fast."""
        ...

    def close(self) -> None:
        """Release connections (and the in-process engine)."""
        ...


class InlineDispatcher:
    """Runs jobs in the calling thread of the web process, on an engine built once, lazily.

    ``engine_factory(settings)`` and ``fetcher_factory(settings)`` (default: the settings' engine
    and ``MediaFetcher``) are called once, on the first job; constructing the dispatcher is free.
    Time limits are not enforced inline: a running engine call cannot be interrupted.
    """

    name = "inline"

    def __init__(
        self,
        settings: Settings,
        engine_factory: Callable[[Settings], Engine] = build_engine,
        fetcher_factory: Callable[[Settings], ImageFetcher] = make_media_fetcher,
    ) -> None:
        self._runner = JobRunner(settings, engine_factory, fetcher_factory)

    def predict(self, jobs: Sequence[PredictJob], queue: Queue) -> list[JobOutcome]:
        """Run ``jobs`` one after the other; see :meth:`Dispatcher.predict`."""
        urgent = _check_queue(queue) == "interactive"
        return [self._runner.outcome(job, urgent=urgent) for job in jobs]

    def health(self) -> dict[str, Any]:
        """``{"dispatcher": "inline", "engine", "model_version", "engine_loaded", "waiting"}``; no broker.

        Never builds the engine. ``waiting``: jobs waiting for the engine per queue.
        """
        return {"dispatcher": self.name, **self._runner.describe()}

    def close(self) -> None:
        """Nothing to release: the engine goes with the process."""


class CeleryDispatcher:
    """Enqueues jobs on Redis for Celery workers and waits for their JSON answers.

    Before sending, the broker is pinged with ``settings.broker_check_timeout_s`` (a success is
    remembered for a second), so a down broker is reported as ``BrokerUnavailable`` in under 2 s
    instead of hanging a click. A message expires when its caller stops waiting for it, so a
    worker coming back after an outage does not work through stale clicks.
    """

    name = "celery"

    def __init__(self, settings: Settings, jobs_per_message: int = JOBS_PER_PRELABEL_MESSAGE) -> None:
        if not settings.redis_url:
            raise ValueError("CeleryDispatcher needs settings.redis_url")
        if jobs_per_message < 1:
            raise ValueError(f"jobs_per_message must be at least 1; got {jobs_per_message}")
        self.settings = settings
        self.broker_url = maybe_sanitize_url(settings.redis_url)
        self._jobs_per_message = jobs_per_message
        self._task_names = {"interactive": PREDICT_INTERACTIVE, "prelabel": PREDICT_BATCH}
        self._app = make_celery(settings)
        timeout = settings.broker_check_timeout_s
        self._redis = redis.Redis.from_url(
            settings.redis_url, socket_connect_timeout=timeout, socket_timeout=timeout
        )
        self._broker_ok_until = 0.0

    # -- broker ---------------------------------------------------------------------------------

    def _ping(self) -> str | None:
        """``None`` when the broker answers, else the reason it does not."""
        try:
            self._redis.ping()
        except (redis.RedisError, OSError) as exc:
            return f"{type(exc).__name__}: {exc}"
        return None

    def check_broker(self) -> None:
        """Raise ``BrokerUnavailable`` unless the broker answered a ping within the last second."""
        if time.monotonic() < self._broker_ok_until:
            return
        reason = self._ping()
        if reason is not None:
            raise BrokerUnavailable(self._down_message(reason))
        self._broker_ok_until = time.monotonic() + _BROKER_OK_TTL_S

    def _down_message(self, reason: str) -> str:
        return (
            f"the task broker at {self.broker_url} is not answering ({reason}); start Redis, "
            "or unset REDIS_URL to run the model inside the web process"
        )

    # -- predict --------------------------------------------------------------------------------

    def _timeout_s(self, queue: Queue) -> float:
        if queue == "interactive":
            return self.settings.interactive_timeout_s
        return self.settings.prelabel_timeout_s

    def _send(self, queue: Queue, payload: Any, expires_s: float) -> AsyncResult:
        try:
            return self._app.send_task(
                self._task_names[queue], args=[payload], queue=queue, expires=expires_s
            )
        except (OperationalError, redis.RedisError, OSError) as exc:
            self._broker_ok_until = 0.0
            raise BrokerUnavailable(self._down_message(f"{type(exc).__name__}: {exc}")) from exc

    def predict(self, jobs: Sequence[PredictJob], queue: Queue) -> list[JobOutcome]:
        """Send ``jobs`` (one message per click, a few jobs per pre-label message) and wait.

        See :meth:`Dispatcher.predict`. The whole call shares one deadline, the queue's timeout
        (``INTERACTIVE_TIMEOUT_S`` or ``PRELABEL_TIMEOUT_S``).
        """
        _check_queue(queue)
        if not jobs:
            return []
        self.check_broker()
        timeout = self._timeout_s(queue)
        deadline = time.monotonic() + timeout
        size = 1 if queue == "interactive" else self._jobs_per_message
        chunks = [list(range(start, min(start + size, len(jobs)))) for start in range(0, len(jobs), size)]
        sent: list[tuple[AsyncResult, list[int]]] = []
        for indices in chunks:
            payload: Any = [jobs[i].to_json() for i in indices]
            if queue == "interactive":
                payload = payload[0]
            sent.append((self._send(queue, payload, timeout), indices))

        outcomes: list[JobOutcome | None] = [None] * len(jobs)
        for result, indices in sent:
            for index, outcome in zip(
                indices, self._wait(result, queue, len(indices), deadline), strict=True
            ):
                outcomes[index] = outcome
        return [outcome for outcome in outcomes if outcome is not None]

    def _wait(self, result: AsyncResult, queue: Queue, count: int, deadline: float) -> list[JobOutcome]:
        """The ``count`` outcomes of one message; raises ``JobTimeout`` past ``deadline``."""
        remaining = deadline - time.monotonic()
        try:
            if remaining <= 0:
                raise CeleryTimeoutError()
            value = result.get(timeout=remaining, propagate=False)
        except CeleryTimeoutError:
            raise JobTimeout(
                f"no answer from a worker on the '{queue}' queue within {self._timeout_s(queue):g} s; "
                f"are workers running for it (python -m xsam_backend worker --queues {queue}) and keeping up?"
            ) from None
        except (OperationalError, redis.RedisError, OSError) as exc:
            raise BrokerUnavailable(self._down_message(f"{type(exc).__name__}: {exc}")) from exc
        failed = result.failed()
        result.forget()
        if failed:
            return [JobOutcome.failure(_task_failure(value))] * count
        if queue == "interactive":
            return [JobOutcome.from_json(value)]
        if not isinstance(value, list) or len(value) != count:
            error = BackendError(
                f"the worker answered {count} jobs with {type(value).__name__} {value!r:.100}"
            )
            return [JobOutcome.failure(error)] * count
        return [JobOutcome.from_json(item) for item in value]

    # -- health ---------------------------------------------------------------------------------

    def health(self) -> dict[str, Any]:
        """``{"dispatcher": "celery", "broker": "ok" | "down: <reason>", "broker_url", "queued"}``.

        ``queued``: messages waiting per queue (``None`` when the broker is down). Never raises;
        answers within ``broker_check_timeout_s`` plus one round trip.
        """
        out: dict[str, Any] = {"dispatcher": self.name, "broker_url": self.broker_url, "queued": None}
        reason = self._ping()
        if reason is not None:
            return {**out, "broker": f"down: {reason}"}
        try:
            queued = {
                queue: cast(int, self._redis.llen(queue)) for queue in ("interactive", "prelabel", "train")
            }
        except (redis.RedisError, OSError) as exc:
            return {**out, "broker": f"down: {type(exc).__name__}: {exc}"}
        return {**out, "broker": "ok", "queued": queued}

    def close(self) -> None:
        """Close this dispatcher's connections: the health-check client, the result backend's and
        its pub/sub subscription. The broker connections stay in kombu's process-wide pools,
        shared with every other Celery app of the process that uses the same broker URL."""
        self._redis.close()
        backend = self._app.backend
        consumer = getattr(backend, "result_consumer", None)
        if consumer is not None:
            consumer.stop()  # closes the pub/sub connection
            # and forgets it, so that a result object collected later does not reconnect (with
            # retries, to a broker that may be gone) only to unsubscribe
            consumer.subscribed_to.clear()
            consumer._pubsub = None
        client = getattr(backend, "client", None)
        if client is not None:
            client.connection_pool.disconnect()
        self._app.close()


def _task_failure(exc: Any) -> BackendError:
    """The error a task that failed as a whole (not one of its jobs) gives each of its jobs."""
    if isinstance(exc, TimeLimitExceeded):
        return JobTimeout(f"the worker was stopped by the hard time limit ({exc})")
    return BackendError(f"the worker failed to run the message: {type(exc).__name__}: {exc}")


def _check_queue(queue: str) -> Queue:
    if queue not in ("interactive", "prelabel"):
        raise ValueError(f"queue must be 'interactive' or 'prelabel'; got {queue!r}")
    return cast(Queue, queue)


def make_dispatcher(settings: Settings) -> Dispatcher:
    """``CeleryDispatcher`` when ``settings.redis_url`` is set, else ``InlineDispatcher``."""
    if settings.redis_url:
        return CeleryDispatcher(settings)
    return InlineDispatcher(settings)
