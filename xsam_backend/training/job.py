"""One training job for one project: data → features → fine-tune → evaluate → version → promote.

:func:`run_training_job` is what the ``xsam.train_project`` Celery task, the embedded training
thread and ``python -m xsam_backend train`` call. Steps, with the percentages reported in the
task state, the project's status and the log:

1. take the project's lock (one job per project; a second job answers ``skipped``), clear the
   queued flag, remove temporary directories a killed job left;                        0 %
2. read the label config and the accepted annotations through the Label Studio API, convert
   them to instance masks, split a deterministic hold-out set;                          5 %
3. load the base model, apply the serving version's parameters (training continues from it,
   its LLM adapter too when ``TRAIN_LORA_*`` asks for one of the same shape), download every
   image and run the frozen parts once per image;                                      5–25 %
4. evaluate the serving weights on the hold-out set; fine-tune; evaluate the candidate; 25–90 %
5. write the version atomically; promote it (``serving.json``) only if the gate passes. 90–100 %

A job killed at any point leaves no partial version and does not change ``serving.json``;
its lock is released by the kernel (embedded mode) or expires (Redis).
"""

from __future__ import annotations

import hashlib
import logging
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass, replace
from datetime import UTC, datetime
from pathlib import Path
from typing import Any, Literal

import numpy as np
import torch

from xsam_backend.engines.factory import xsam_model_version
from xsam_backend.errors import BackendError, BadRequest, MediaError, NeedsWeights
from xsam_backend.export.regions import categories_of
from xsam_backend.labelstudio.api import LabelStudioApi
from xsam_backend.labelstudio.config import parse_label_config
from xsam_backend.settings import Settings
from xsam_backend.training.coordination import Coordinator, make_coordinator
from xsam_backend.training.dataset import TrainingExample, collect_examples, split_holdout
from xsam_backend.training.evaluation import ImageTruth, Scores, evaluate, promotion_gate
from xsam_backend.training.features import FrozenFeatures, extract_features
from xsam_backend.training.lora import LoraSpec, use_lora
from xsam_backend.training.loss import LossWeights
from xsam_backend.training.scores import ScoreCalibration, fit_calibration, match_hits
from xsam_backend.training.trainer import (
    TrainConfig,
    apply_delta,
    make_sample,
    predict_instances,
    train,
    trainable_state,
)
from xsam_backend.training.versions import ProjectVersions, check_project, load_delta, project_model_version
from xsam_backend.worker.jobs import ImageFetcher, make_media_fetcher
from xsam_backend.xsam.pipeline import XSamPipeline

log = logging.getLogger(__name__)

JobStatus = Literal["promoted", "rejected", "skipped", "no_data"]
ProgressCallback = Callable[[dict[str, Any]], None]
_REPORT_EVERY_S = 5.0


@dataclass(frozen=True)
class JobResult:
    """How a job ended: ``promoted`` / ``rejected`` (a version was written) / ``skipped`` (another
    job holds the project) / ``no_data`` (nothing to train on), with a sentence and the version."""

    project: str
    status: JobStatus
    message: str
    version: str | None = None
    model_version: str | None = None

    def to_json(self) -> dict[str, Any]:
        return {
            "project": self.project,
            "status": self.status,
            "message": self.message,
            "version": self.version,
            "model_version": self.model_version,
        }


def load_pipeline(settings: Settings) -> XSamPipeline:
    """The base model for training, on ``settings.device`` (bf16 frozen parts on CUDA, fp32 on CPU)."""
    model_dir = Path(settings.model_dir)
    if not (model_dir / "config.json").is_file():
        raise NeedsWeights(
            f"training needs converted X-SAM weights in {model_dir} (see model_weights/README.md)"
        )
    use_cuda = settings.device == "cuda" or (settings.device == "auto" and torch.cuda.is_available())
    device, dtype = ("cuda", torch.bfloat16) if use_cuda else ("cpu", torch.float32)
    return XSamPipeline.from_dir(model_dir, device=device, dtype=dtype)


class _Reporter:
    """Progress to the log, the coordinator's status and the caller's callback: every 2 %, and at
    least every few seconds while anything moves."""

    def __init__(self, project: str, coordinator: Coordinator, callback: ProgressCallback | None) -> None:
        self.project = project
        self.coordinator = coordinator
        self.callback = callback
        self._last = -100.0
        self._last_time = 0.0

    def __call__(self, state: str, percent: float, message: str, force: bool = False, **extra: Any) -> None:
        now = time.monotonic()
        if not force and percent - self._last < 2.0 and now - self._last_time < _REPORT_EVERY_S:
            return
        self._last, self._last_time = percent, now
        status = {
            "state": state,
            "percent": round(percent, 1),
            "message": message,
            "time": datetime.now(UTC).isoformat(timespec="seconds"),
            **extra,
        }
        log.info("project %s: training %s %.0f%%: %s", self.project, state, percent, message)
        self.coordinator.set_status(self.project, status)
        if self.callback is not None:
            self.callback(status)


def run_training_job(
    settings: Settings,
    project: object,
    reason: str = "on demand",
    *,
    api: LabelStudioApi | None = None,
    fetcher: ImageFetcher | None = None,
    coordinator: Coordinator | None = None,
    pipeline_factory: Callable[[Settings], XSamPipeline] = load_pipeline,
    progress: ProgressCallback | None = None,
) -> JobResult:
    """Run one training job for ``project`` (see the module docstring). Collaborators default to
    the settings' Label Studio API, media fetcher, coordinator and base model.

    Raises :class:`BackendError` subclasses (``LabelStudioApiError``, ``NeedsWeights``, media
    errors) when the job cannot run; the status then says ``failed``.
    """
    project_id = check_project(project)
    coordinator = coordinator or make_coordinator(
        settings.redis_url, settings.projects_dir, settings.broker_check_timeout_s
    )
    coordinator.clear_queued(project_id)
    with coordinator.job_lock(project_id) as acquired:
        if not acquired:
            message = f"a training job for project {project_id} is already running; this one is skipped"
            log.info("project %s: %s", project_id, message)
            return JobResult(project_id, "skipped", message)
        report = _Reporter(project_id, coordinator, progress)
        report("started", 0.0, f"training started ({reason})", force=True)
        try:
            result = _run(settings, project_id, api, fetcher, pipeline_factory, report)
        except BackendError as exc:
            report("failed", 100.0, f"{exc.code}: {exc.message}", force=True)
            raise
        except Exception as exc:
            report("failed", 100.0, f"{type(exc).__name__}: {exc}", force=True)
            raise
        report(result.status, 100.0, result.message, force=True, version=result.version)
        return result


def _classes(label_config: str) -> tuple[tuple[str, ...], dict[str, int]]:
    """The model class names of the config, in order, and each output label's class index."""
    spec = parse_label_config(label_config)
    classes: list[str] = []
    index: dict[str, int] = {}
    for model_name, label in spec.class_names:
        if model_name not in classes:
            classes.append(model_name)
        index.setdefault(label, classes.index(model_name))
        index.setdefault(model_name, classes.index(model_name))
    return tuple(classes), index


def _run(
    settings: Settings,
    project: str,
    api: LabelStudioApi | None,
    fetcher: ImageFetcher | None,
    pipeline_factory: Callable[[Settings], XSamPipeline],
    report: _Reporter,
) -> JobResult:
    versions = ProjectVersions(settings.projects_dir, project)
    removed = versions.remove_partial()
    if removed:
        log.warning("project %s: removed %d partial version(s) left by an interrupted job", project, removed)
    if not project.isdigit():
        raise BadRequest(f"Label Studio project ids are integers; got {project!r}")
    api = api or LabelStudioApi.from_settings(settings)
    config = api.label_config(int(project))
    classes, class_of = _classes(config)
    spec = parse_label_config(config)
    examples = collect_examples(
        api.iter_tasks(int(project)), spec.image_key, categories_of(spec), settings.train_accept
    )
    examples = _as_classes(examples, classes, class_of, project)
    split = split_holdout(examples, settings.train_holdout_fraction, settings.train_seed)
    if not split.train:
        return JobResult(
            project, "no_data", f"no accepted annotation with a mask ({settings.train_accept} mode)"
        )
    report(
        "loading",
        5.0,
        f"{len(split.train)} training and {len(split.holdout)} hold-out images, classes {list(classes)}",
        force=True,
    )

    pipeline = pipeline_factory(settings)
    base_version = xsam_model_version(Path(settings.model_dir))
    serving = versions.serving()
    adapter = LoraSpec.from_settings(
        settings.train_lora_rank, settings.train_lora_alpha, settings.train_lora_dropout
    )
    serving_adapter: LoraSpec | None = None
    if serving is not None and serving.base_model_version == base_version:
        serving_adapter = LoraSpec.from_json(serving.meta.get("lora"))
        use_lora(pipeline.model, serving_adapter)
        apply_delta(pipeline.model, load_delta(serving))
        # The cached LLM states are the base LLM's (what a candidate without adapter serves
        # with); a model with an adapter reruns the LLM on the cached input embeddings instead.
        use_lora(pipeline.model, None)
    elif serving is not None:
        log.warning(
            "project %s: serving %s was trained on %s, not %s; starting from the base",
            project,
            serving.name,
            serving.base_model_version,
            base_version,
        )
        serving = None
    fetcher = fetcher or make_media_fetcher(settings)
    side = int(pipeline.config.sam_image_size)
    everything = [*split.train, *split.holdout]
    usable: dict[int, FrozenFeatures] = {}
    for i, example in enumerate(everything):
        found = _features(pipeline, fetcher, example, classes, adapter or serving_adapter)
        if found is not None:
            usable[example.task_id] = found
        report(
            "features",
            5.0 + 20.0 * (i + 1) / len(everything),
            f"features of {i + 1}/{len(everything)} images",
        )
    train_examples = [e for e in split.train if e.task_id in usable]
    holdout_examples = [e for e in split.holdout if e.task_id in usable]
    if not train_examples:
        return JobResult(project, "no_data", "no training image could be used (see the log)")
    samples = [
        make_sample(
            usable[e.task_id],
            np.stack([i.mask for i in e.instances]),
            [class_of[i.label] for i in e.instances],
            side,
        )
        for e in train_examples
    ]
    gate_examples = holdout_examples or train_examples
    gate_features = [usable[e.task_id] for e in gate_examples]
    gate_set = "holdout" if holdout_examples else "train"

    use_lora(pipeline.model, serving_adapter)  # the serving version, exactly as it serves
    serving_scores, _ = _score(pipeline, gate_features, gate_examples, classes)
    report(
        "training",
        25.0,
        f"serving weights on the {gate_set} set: mIoU {serving_scores.miou:.4f}, AP {serving_scores.ap:.4f}",
        force=True,
    )
    if serving_adapter is not None and (adapter is None or not adapter.same_shape(serving_adapter)):
        log.warning(
            "project %s: the LLM adapter of %s (%s) is not continued; the candidate %s",
            project,
            serving.name if serving is not None else "the serving version",
            serving_adapter.to_json(),
            "has none" if adapter is None else f"starts a fresh one ({adapter.to_json()})",
        )
    use_lora(pipeline.model, adapter)
    train_config = TrainConfig(
        steps=settings.train_steps,
        learning_rate=settings.train_learning_rate,
        seed=settings.train_seed,
        loss=LossWeights.from_config(pipeline.config.mask2former),
    )

    def on_step(step: int, steps: int, loss: float) -> None:
        report(
            "training",
            25.0 + 65.0 * step / steps,
            f"step {step}/{steps}, loss {loss:.4f}",
            force=step == 1,
            step=step,
            steps=steps,
            loss=round(loss, 5),
        )

    started = time.perf_counter()
    training = train(pipeline.model, samples, train_config, on_step)
    candidate_scores, calibration = _score(pipeline, gate_features, gate_examples, classes)
    decision = promotion_gate(candidate_scores, serving_scores, settings.train_promote_margin)
    log.info(
        "project %s: %s set, serving mIoU %.4f AP %.4f, candidate mIoU %.4f AP %.4f: %s",
        project,
        gate_set,
        serving_scores.miou,
        serving_scores.ap,
        candidate_scores.miou,
        candidate_scores.ap,
        decision.reason,
    )
    report("saving", 92.0, decision.reason, force=True)

    name = versions.next_name()
    model_version = project_model_version(base_version, project, name)
    meta = {
        "model_version": model_version,
        "project": project,
        "version": name,
        "created_at": datetime.now(UTC).isoformat(timespec="seconds"),
        "base_model_version": base_version,
        "base_checksum": _checksum(Path(settings.model_dir)),
        "started_from": serving.name if serving is not None else None,
        "classes": list(classes),
        "annotation_ids": [e.annotation_id for e in train_examples],
        "task_ids": [e.task_id for e in train_examples],
        "holdout_task_ids": [e.task_id for e in holdout_examples],
        "num_annotations": len(train_examples),
        "metrics": {
            "set": gate_set,
            "candidate": candidate_scores.to_json(),
            "serving": serving_scores.to_json(),
        },
        "gate": {
            "promote": decision.promote,
            "reason": decision.reason,
            "margin": settings.train_promote_margin,
        },
        "promoted": decision.promote,
        "score_calibration": calibration.to_json(),
        "lora": adapter.to_json() if adapter is not None else None,
        "train": {
            "steps": train_config.steps,
            "learning_rate": train_config.learning_rate,
            "seed": train_config.seed,
            "loss_first": training.mean(first=True),
            "loss_last": training.mean(first=False),
            "deep_supervision": train_config.loss.auxiliary,
            "seconds": round(time.perf_counter() - started, 2),
        },
    }
    version = versions.write(name, trainable_state(pipeline.model), meta)
    if decision.promote:
        versions.set_serving(name)
        return JobResult(
            project, "promoted", f"{name} serves: {decision.reason}", name, version.model_version
        )
    return JobResult(
        project, "rejected", f"{name} kept but not promoted: {decision.reason}", name, version.model_version
    )


def _as_classes(
    examples: Sequence[TrainingExample], classes: Sequence[str], class_of: dict[str, int], project: str
) -> list[TrainingExample]:
    """Instances relabelled with their model class name; labels not in the label config are
    dropped (logged once per label)."""
    unknown: set[str] = set()
    kept = []
    for example in examples:
        instances = tuple(
            replace(i, label=classes[class_of[i.label]]) for i in example.instances if i.label in class_of
        )
        unknown.update(i.label for i in example.instances if i.label not in class_of)
        if instances:
            kept.append(
                TrainingExample(
                    example.task_id, example.annotation_id, example.image_url, example.image_size, instances
                )
            )
    if unknown:
        log.warning("project %s: labels not in the label config are ignored: %s", project, sorted(unknown))
    return kept


def _features(
    pipeline: XSamPipeline,
    fetcher: ImageFetcher,
    example: TrainingExample,
    classes: Sequence[str],
    adapter: LoraSpec | None,
) -> FrozenFeatures | None:
    """The frozen features of one example's image; ``None`` (logged) when the image cannot be used:
    one broken image must not stop the project's training."""
    try:
        image = fetcher.fetch(example.image_url, example.task_id)
    except MediaError as exc:
        log.warning("task %s: image skipped: %s: %s", example.task_id, exc.code, exc.message)
        return None
    if tuple(image.shape[:2]) != example.image_size:
        log.warning(
            "task %s: image skipped: it is %s (H, W) but its annotation is for %s",
            example.task_id,
            tuple(image.shape[:2]),
            example.image_size,
        )
        return None
    return extract_features(pipeline, image, classes, llm_inputs=adapter is not None)


def _score(
    pipeline: XSamPipeline,
    features: Sequence[FrozenFeatures],
    examples: Sequence[TrainingExample],
    classes: Sequence[str],
) -> tuple[Scores, ScoreCalibration]:
    """The metrics of the current weights on ``examples``, and the score calibration they support."""
    predictions = [predict_instances(pipeline.model, f, classes) for f in features]
    truths = [ImageTruth(np.stack([i.mask for i in e.instances]), e.labels) for e in examples]
    return evaluate(predictions, truths), fit_calibration(*match_hits(predictions, truths))


def _checksum(model_dir: Path) -> str:
    source = model_dir / "checksums.json"
    if not source.is_file():
        source = model_dir / "config.json"
    return hashlib.sha256(source.read_bytes()).hexdigest()


__all__ = ["JobResult", "load_pipeline", "run_training_job"]
