"""The worker side of dispatch: the Celery app, its thin tasks and what they run.

* :mod:`xsam_backend.worker.jobs`: the job contract (:class:`~xsam_backend.worker.jobs.PredictJob`,
  :class:`~xsam_backend.worker.jobs.JobOutcome`) and :class:`~xsam_backend.worker.jobs.JobRunner`,
  the per-process engine and media fetcher; no Celery here.
* :mod:`xsam_backend.worker.app`: ``make_celery(settings)``, JSON-only, ``acks_late``, prefetch 1,
  queues ``interactive`` / ``prelabel`` / ``train``.
* :mod:`xsam_backend.worker.tasks`: the tasks, each a view over the job runner.
* :mod:`xsam_backend.worker.main`: ``run_worker``, behind ``python -m xsam_backend worker``.

Importing this package has no side effects: no engine, no connection, no torch.
"""
