"""The Celery application: JSON only, late acknowledgement, one job reserved per process, three queues.

``make_celery(settings)`` is the only way to get an app; nothing here runs at import. The web
process uses the app to enqueue and wait, a worker process to consume.

Queues (routing by task name):

* ``interactive``: clicks, boxes, scribbles, phrases; one job per message; lowest latency.
* ``prelabel``: automatic pre-labelling; a request is cut into a few messages of several jobs.
* ``train``: fine-tuning runs (tasks named ``xsam.train*``).

A click must never wait behind a batch: run a worker (or a pool) for ``interactive`` apart from
the ``prelabel`` one. A worker that consumes several queues takes from them in the order given to
``--queues`` (``queue_order_strategy="priority"``), so ``interactive,prelabel`` serves waiting
clicks first; it cannot interrupt a batch message it is already running.

Time limits come from the settings: the soft limit of a queue is the time the web process waits
for it (``INTERACTIVE_TIMEOUT_S``, ``PRELABEL_TIMEOUT_S``); past it the task stops and reports
``job_timeout`` for the jobs it did not finish. The hard limit, a grace period later, kills the
process running the task (the engine may be stuck in native code).
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Literal

from celery import Celery
from kombu import Exchange
from kombu import Queue as KombuQueue

from xsam_backend.settings import Settings
from xsam_backend.worker.jobs import JobRunner
from xsam_backend.worker.tasks import PREDICT_BATCH, PREDICT_INTERACTIVE, TRAIN_PREFIX, register_tasks

QueueName = Literal["interactive", "prelabel", "train"]
QUEUES: tuple[QueueName, ...] = ("interactive", "prelabel", "train")

# Socket timeout of established broker/result connections. Longer than the check timeout: a
# publish or a result read on a live but busy Redis may take a moment; a dead one is caught by
# the connect timeout and by the dispatcher's ping before anything is sent.
_SOCKET_TIMEOUT_S = 10.0
# Loading X-SAM in each pool process before it takes jobs takes far longer than Celery's default
# 4 s allowance for a new pool process to report in.
_PROCESS_START_TIMEOUT_S = 600.0
# Results are read once by the waiting web process (and then deleted); this only bounds the
# garbage left by callers that gave up.
_RESULT_EXPIRES_S = 600


_EXCHANGE = Exchange("xsam", type="direct")


@dataclass(frozen=True)
class TimeLimits:
    """Soft and hard time limits of one queue's tasks, in seconds."""

    soft_s: float
    hard_s: float


def time_limits(settings: Settings, queue: Literal["interactive", "prelabel"]) -> TimeLimits:
    """The task time limits of ``queue``: soft = the web process's wait, hard = soft + a grace period."""
    soft = settings.interactive_timeout_s if queue == "interactive" else settings.prelabel_timeout_s
    return TimeLimits(soft_s=soft, hard_s=soft + max(2.0, 0.25 * soft))


def visibility_timeout_s(settings: Settings) -> int:
    """Seconds after which Redis hands a taken but unacknowledged message to another worker.

    With the Redis transport a message a worker has taken sits in an "unacked" set until the task
    ends (``acks_late``). If the worker dies without acknowledging it (SIGKILL, lost machine), a
    worker puts it back on its queue once it is older than this timeout (at worker start, then
    every minute or two). The timeout is half the interactive wait, so a click lost with its worker
    can still be answered by a restarted or another worker before the web process gives up.

    The trade-off: any job still running after this time may be started a second time by another
    worker. Jobs are idempotent (same input, same masks; the first reply wins), so a duplicate only
    costs GPU time; prelabel batches are cut into small messages to keep that rare. Long tasks on
    the ``train`` queue must not rely on late acknowledgement for this reason.
    """
    return max(1, math.ceil(settings.interactive_timeout_s / 2))


def make_celery(settings: Settings, runner: JobRunner | None = None) -> Celery:
    """A Celery app on ``settings.redis_url`` (broker and result backend), with the tasks registered.

    ``runner`` is the per-process engine holder the tasks use (default: a lazy
    ``JobRunner(settings)``; nothing is loaded until a task runs or the worker warms it up).
    Raises ``ValueError`` when ``settings.redis_url`` is not set.
    """
    if not settings.redis_url:
        raise ValueError("Celery dispatch needs REDIS_URL (e.g. redis://localhost:6379/0)")
    interactive = time_limits(settings, "interactive")
    prelabel = time_limits(settings, "prelabel")
    connect_timeout = settings.broker_check_timeout_s

    app = Celery("xsam_backend", broker=settings.redis_url, backend=settings.redis_url, set_as_current=False)
    app.conf.update(
        # Only JSON crosses Redis: a pickle from the broker would be code execution in the worker.
        task_serializer="json",
        result_serializer="json",
        event_serializer="json",
        accept_content=["json"],
        result_accept_content=["json"],
        # Acknowledge after the task, so a job whose process dies is delivered again...
        task_acks_late=True,
        # ...also when a pool process is killed (OOM, CUDA fault): back on the queue at once.
        task_reject_on_worker_lost=True,
        # Reserve one message per process: a long batch must not hold back messages others could run.
        worker_prefetch_multiplier=1,
        task_queues=[KombuQueue(name, _EXCHANGE, routing_key=name) for name in QUEUES],
        task_default_exchange=_EXCHANGE.name,
        task_default_queue="prelabel",
        task_routes={
            PREDICT_INTERACTIVE: {"queue": "interactive"},
            PREDICT_BATCH: {"queue": "prelabel"},
            f"{TRAIN_PREFIX}*": {"queue": "train"},
        },
        task_annotations={
            PREDICT_INTERACTIVE: {"soft_time_limit": interactive.soft_s, "time_limit": interactive.hard_s},
            PREDICT_BATCH: {"soft_time_limit": prelabel.soft_s, "time_limit": prelabel.hard_s},
        },
        result_expires=_RESULT_EXPIRES_S,
        broker_transport_options={
            "visibility_timeout": visibility_timeout_s(settings),
            "socket_connect_timeout": connect_timeout,
            "socket_timeout": _SOCKET_TIMEOUT_S,
            "queue_order_strategy": "priority",
        },
        broker_connection_timeout=connect_timeout,
        broker_connection_retry_on_startup=True,
        # A publish that fails is retried briefly only: the caller is a person waiting for a mask.
        task_publish_retry_policy={
            "max_retries": 2,
            "interval_start": 0,
            "interval_step": 0.2,
            "interval_max": 0.5,
        },
        redis_socket_connect_timeout=connect_timeout,
        redis_socket_timeout=_SOCKET_TIMEOUT_S,
        worker_proc_alive_timeout=_PROCESS_START_TIMEOUT_S,
        worker_hijack_root_logger=False,
        worker_send_task_events=False,
    )
    register_tasks(app, runner if runner is not None else JobRunner(settings))
    return app
