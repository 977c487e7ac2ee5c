"""``python -m xsam_backend worker``: run a Celery worker that owns the engine.

Each pool process builds its own engine once, before it takes its first job (the model is never
loaded at import, and never in a parent process that forks: CUDA does not survive ``fork``).
"""

from __future__ import annotations

import logging
import os
import socket
from typing import Any

from celery import signals
from kombu.utils.url import maybe_sanitize_url

from xsam_backend.engines.factory import describe_engine
from xsam_backend.settings import Settings
from xsam_backend.worker.app import QUEUES, make_celery, visibility_timeout_s
from xsam_backend.worker.jobs import JobRunner

log = logging.getLogger(__name__)

POOLS = ("prefork", "solo", "threads")


def run_worker(settings: Settings, queues: tuple[str, ...], concurrency: int, pool: str) -> None:
    """Consume ``queues`` (taken in the given order) with ``concurrency`` processes/threads of ``pool``.

    Blocks until the worker stops. Raises ``ValueError`` for an unknown queue or pool, a missing
    ``REDIS_URL`` or a concurrency below 1, and ``FileNotFoundError`` when ``XSAM_ENGINE=xsam``
    but the weights are missing, before connecting to anything.
    """
    unknown = [q for q in queues if q not in QUEUES]
    if unknown or not queues:
        raise ValueError(f"queues must be some of {', '.join(QUEUES)}; got {','.join(queues) or 'none'}")
    if pool not in POOLS:
        raise ValueError(f"pool must be one of {', '.join(POOLS)}; got {pool!r}")
    if concurrency < 1:
        raise ValueError(f"concurrency must be at least 1; got {concurrency}")
    description = describe_engine(settings)
    runner = JobRunner(settings)
    app = make_celery(settings, runner)
    log.info(
        "worker: engine %s, model version %s (%s); queues %s; pool %s x%d; broker %s; redelivery after %d s",
        description.name,
        description.model_version,
        description.reason,
        ",".join(queues),
        pool,
        concurrency,
        maybe_sanitize_url(settings.redis_url),
        visibility_timeout_s(settings),
    )

    def warm_up(**_: Any) -> None:
        runner.warm_up()

    # prefork: every pool process loads its own engine after the fork; solo/threads: the worker
    # process itself runs the jobs, so it loads the engine once before it starts consuming.
    start_signal = signals.worker_init if pool == "threads" else signals.worker_process_init
    start_signal.connect(warm_up, weak=False)
    app.worker_main(
        argv=[
            "worker",
            f"--queues={','.join(queues)}",
            f"--concurrency={concurrency}",
            f"--pool={pool}",
            f"--hostname=xsam-{os.getpid()}@{socket.gethostname()}",
            f"--loglevel={settings.log_level.upper()}",
            # No start-up handshake with the other workers: it adds seconds and syncs only
            # revoked-task lists, which the message expiry already covers.
            "--without-mingle",
            "--without-gossip",
        ]
    )
